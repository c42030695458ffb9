"""Issue 24, verify before execute: `packager selftest` and `packager validate` check a bundle with
packager's own code (files against the manifest, the signature, report.json's code hashes, the
recorded config) before any file of it runs; bundle code is loaded by path, so a file dropped
beside predict.py (numpy.py, argparse.py) is never imported; and every verdict says what it
rests on. "No bundle code ran" is shown with marker files: replaced or added code that would
write one if it ever executed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, Result, _run

TARGET = "cpu-onnxruntime"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(reference_bundle: Path) -> Path:
    return reference_bundle


@pytest.fixture
def bundle(built: Path, tmp_path: Path) -> Path:
    """A private copy of the bundle, free to damage."""
    return Path(shutil.copytree(built, tmp_path / TARGET))


def marker_code(marker: Path) -> str:
    """Python that leaves `marker` behind if it is ever executed."""
    return f"open({str(marker)!r}, 'w').write('this code ran')\n"


def rehash(bundle: Path, *names: str, code: bool = False) -> None:
    """What an attacker or a careless re-packager does: the manifest (and with `code`,
    report.json's code hashes too) agree with the edited files again."""
    if code:
        report = json.loads((bundle / "report.json").read_text())
        report["code"] |= {n: sha256(bundle / n) for n in names if n.endswith(".py")}
        (bundle / "report.json").write_text(json.dumps(report))
        names = (*names, "report.json")
    manifest = json.loads((bundle / "manifest.json").read_text())
    for n in names:
        manifest["files"][n] = {"sha256": sha256(bundle / n), "size": (bundle / n).stat().st_size}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def predict_py(bundle: Path, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(bundle / "predict.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def packager(*args: str | Path, cwd: Path) -> Result:
    return _run([str(a) for a in args], cwd)


def tarball(folder: Path) -> Path:
    tar = folder.with_name(folder.name + ".tar.gz")
    with tarfile.open(tar, "w:gz") as t:
        t.add(folder, arcname=folder.name)
    return tar


def record_of(r: Result, path: Path) -> dict:
    assert path.is_file(), r.stderr
    return json.loads(path.read_text())


@pytest.mark.parametrize("form", ["folder", "tarball"])
@pytest.mark.parametrize("name", ["predict.py", "selftest.py", "runtime.py", "integrity.py"])
def test_replaced_code_is_rejected_before_it_runs(
    name: str, form: str, bundle: Path, tmp_path: Path
) -> None:
    """Before: `packager selftest evil.tar.gz` with a replaced predict.py or selftest.py said
    "self-test passed" (exit 0), and the replaced code ran."""
    marker = tmp_path / "MARKER"
    (bundle / name).write_text(marker_code(marker) + "print('self-test passed')\n")
    target = tarball(bundle) if form == "tarball" else bundle
    rec = tmp_path / "record.json"
    r = packager("selftest", target, "--record", rec, cwd=tmp_path)
    assert r.code == 1, (r.code, r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert f"changed: {name}" in r.stderr
    record = record_of(r, rec)
    assert record["verdict"] == "rejected"
    assert record["checks"][0]["name"] == "integrity"
    assert f"changed: {name}" in record["checks"][0]["problems"]
    assert record["integrity"] == {
        "basis": "unverified",
        "statement": "unverified",
        "checked_by": "packager",
    }
    assert not marker.exists(), "the replaced code ran"


def test_replaced_code_with_a_rehashed_manifest_fails_the_code_hashes(
    bundle: Path, tmp_path: Path, data_path: Path
) -> None:
    """The manifest agrees again, but report.json's `code` hashes (what was validated) do not:
    before, nothing compared them with the files."""
    marker = tmp_path / "MARKER"
    (bundle / "predict.py").write_text(marker_code(marker))
    rehash(bundle, "predict.py")
    assert packager("verify", bundle, cwd=tmp_path).code == 0  # the manifest alone agrees
    rec = tmp_path / "record.json"
    r = packager("selftest", bundle, "--record", rec, cwd=tmp_path)
    assert r.code == 1, r.stderr
    problems = record_of(r, rec)["checks"][0]["problems"]
    assert any(p.startswith("report.json code: predict.py differs") for p in problems), problems
    out = tmp_path / "site"
    r = packager("validate", bundle, "--data", data_path, "--out", out, cwd=tmp_path)
    assert r.code == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "predict.py" in r.stderr and "none of its code was run" in r.stderr
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("name", ["integrity.py", "predict.py", "selftest.py", "ort_session.py"])
def test_run_from_inside_the_bundle_folder_nothing_of_it_runs(
    name: str, bundle: Path, tmp_path: Path, data_path: Path
) -> None:
    """`python -m packager` puts the working directory first on sys.path: run from inside a
    bundle folder, packager's own bare-name imports of its shipped modules (`from integrity
    import ...`) found the bundle's files and ran them before checking anything."""
    marker = tmp_path / "MARKER"
    (bundle / name).write_text((bundle / name).read_text() + marker_code(marker))
    rec = tmp_path / "record.json"
    for args in (
        ("verify", "."),
        ("selftest", ".", "--record", rec),
        ("validate", ".", "--data", data_path, "--out", tmp_path / "site"),
    ):
        r = packager(*args, cwd=bundle)
        assert r.code == 1 and f"changed: {name}" in r.stdout + r.stderr, (args, r)
        assert not marker.exists(), f"packager {args[0]} ran the bundle's {name}"
    # `packager selftest .`, as the bundle's README says: the record goes next to the folder
    # (before: a ValueError traceback, '.' has an empty name).
    (bundle / name).write_text((REPO / "packager" / "shipped" / name).read_text())
    r = packager("selftest", ".", cwd=bundle)
    assert r.code == 0, r.stderr
    assert json.loads((tmp_path / f"{TARGET}.acceptance.json").read_text())["verdict"] == "accepted"


def test_validate_and_bench_check_before_running(
    bundle: Path, tmp_path: Path, data_path: Path
) -> None:
    """Before: `packager validate` (and `bench`) ran the bundle's runtime.py without checking a
    single hash."""
    marker = tmp_path / "MARKER"
    runtime = bundle / "runtime.py"
    runtime.write_text(runtime.read_text() + marker_code(marker))  # still valid Python
    out = tmp_path / "site"
    for args in (
        ("validate", bundle, "--data", data_path, "--out", out),
        ("bench", bundle, "--batch-sizes", "1", "--seconds", "0.05"),
    ):
        r = packager(*args, cwd=tmp_path)
        assert r.code == 1, (args, r.code, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "changed: runtime.py" in lines[0], r.stderr
        assert "none of its code was run" in lines[0]
    assert not marker.exists() and not out.exists()


def test_a_gate_edited_in_the_manifest_is_caught(
    bundle: Path, tmp_path: Path, data_path: Path
) -> None:
    """Before: min_sensitivity set to 0 in manifest.json gave "passed" at sensitivity 0.0 (the
    manifest is not covered by its own hashes, so no rehash is even needed)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["config"]["gates"]["min_sensitivity"] = 0.0
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "site"
    r = packager("validate", bundle, "--data", data_path, "--out", out, cwd=tmp_path)
    assert r.code == 1, (r.code, r.stderr)
    assert "report.json: gates.min_sensitivity is 0.98 but manifest.json's config says 0.0" in (
        r.stderr
    )
    assert not out.exists()


def test_a_threshold_edited_in_runtime_json_is_caught(bundle: Path, tmp_path: Path) -> None:
    runtime = json.loads((bundle / "runtime.json").read_text())
    runtime["threshold"] = 0.9
    (bundle / "runtime.json").write_text(json.dumps(runtime))
    rehash(bundle, "runtime.json")
    rec = tmp_path / "record.json"
    r = packager("selftest", bundle, "--record", rec, cwd=tmp_path)
    assert r.code == 1, r.stderr
    problems = record_of(r, rec)["checks"][0]["problems"]
    assert "runtime.json: threshold is 0.9 but manifest.json's config says 0.2" in problems


def test_an_added_module_is_never_imported(bundle: Path, tmp_path: Path, data_path: Path) -> None:
    """numpy.py and argparse.py beside predict.py, even listed in the manifest and in report.json's
    code (so every check passes and everything runs to the end): neither is ever imported, by
    `python predict.py --self-test`, `python predict.py IMAGE`, `packager selftest` or
    `packager validate`. Before: predict.py imported both from its own folder."""
    marker = tmp_path / "MARKER"
    for name in ("numpy.py", "argparse.py"):
        (bundle / name).write_text(marker_code(marker) + "raise ImportError('shadowed')\n")
    rehash(bundle, "numpy.py", "argparse.py", code=True)
    with np.load(data_path) as d:
        Image.fromarray(d["test_images"][0]).save(tmp_path / "image.png")
    runs = {
        "predict.py --self-test": predict_py(bundle, "--self-test", cwd=tmp_path),
        "predict.py IMAGE": predict_py(bundle, tmp_path / "image.png", cwd=tmp_path),
    }
    for args in (
        ("selftest", bundle),
        ("validate", bundle, "--data", data_path, "--out", tmp_path / "site"),
    ):
        runs[f"packager {args[0]}"] = packager(*args, cwd=tmp_path)  # type: ignore[assignment]
    for what, r in runs.items():
        code = r.returncode if isinstance(r, subprocess.CompletedProcess) else r.code
        # site acceptance on the split the bundle was built on ends "insufficient evidence" (1)
        assert code in ((0, 1) if what == "packager validate" else (0,)), (what, r.stderr)
        assert "Traceback" not in r.stderr
        assert not marker.exists(), f"{what} imported the bundle's numpy.py or argparse.py"
    assert json.loads(runs["predict.py IMAGE"].stdout)["decision"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "target", sorted(p.name for p in (REPO / "targets").iterdir() if (p / "runtime.py").is_file())
)
def test_every_runtime_loads_without_its_folder_on_sys_path(target: str, tmp_path: Path) -> None:
    """Each target's runtime.py, loaded the way every runner and predict.py load it, from a
    folder that also holds a numpy.py: its siblings resolve (ort_session), numpy is the real one,
    sys.path is untouched and no bare sibling name is left registered."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    shutil.copyfile(REPO / "targets" / target / "runtime.py", folder / "runtime.py")
    for name in ("ort_session.py", "predict.py"):
        shutil.copyfile(REPO / "packager" / "shipped" / name, folder / name)
    marker = tmp_path / "MARKER"
    (folder / "numpy.py").write_text(marker_code(marker))
    script = f"""
import sys
before = list(sys.path)
import importlib.util
spec = importlib.util.spec_from_file_location("p", {str(folder / "predict.py")!r})
predict = importlib.util.module_from_spec(spec)
spec.loader.exec_module(predict)
runtime = predict.import_runtime(__import__("pathlib").Path({str(folder)!r}))
assert callable(runtime.open_runtime) and runtime.__name__.startswith("_packager_bundle_")
assert sys.path == before, (before, sys.path)
assert "ort_session" not in sys.modules and "runtime" not in sys.modules
print(sys.modules["numpy"].__file__)
"""
    # Run from outside the folder: `-c` puts the working directory first on sys.path, and the
    # loader must find the siblings without any path entry for the bundle.
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).parent.name == "numpy"  # the installed package, not numpy.py
    assert not marker.exists()


@pytest.mark.parametrize("how", ["predict.py", "packager"])
def test_added_and_missing_files_are_named(how: str, bundle: Path, tmp_path: Path) -> None:
    """Issue 28: the self-test names added and missing files, not only changed ones."""
    (bundle / "validation.npz").unlink()
    (bundle / "extra.txt").write_text("not shipped")
    rec = tmp_path / "record.json"
    if how == "predict.py":
        r = predict_py(bundle, "--self-test", "--record", rec, cwd=tmp_path)
        code, text = r.returncode, r.stdout
    else:
        res = packager("selftest", bundle, "--record", rec, cwd=tmp_path)
        code, text = res.code, res.stderr
    assert code == 1, text
    assert "missing: validation.npz" in text and "added: extra.txt" in text
    record = json.loads(rec.read_text())
    assert record["verdict"] == "rejected"
    assert {"missing: validation.npz", "added: extra.txt"} <= set(record["checks"][0]["problems"])


@pytest.mark.parametrize("how", ["predict.py", "packager"])
def test_a_missing_golden_set_is_a_rejected_record(how: str, bundle: Path, tmp_path: Path) -> None:
    """Before: `predict.Refused`, and no record written."""
    (bundle / "selftest.npz").unlink()
    rec = tmp_path / "record.json"
    if how == "predict.py":
        code = predict_py(bundle, "--self-test", "--record", rec, cwd=tmp_path).returncode
    else:
        code = packager("selftest", bundle, "--record", rec, cwd=tmp_path).code
    assert code == 1
    record = json.loads(rec.read_text())
    assert record["verdict"] == "rejected"
    assert "missing: selftest.npz" in record["checks"][0]["problems"]


def test_the_integrity_basis_is_stated(bundle: Path, tmp_path: Path) -> None:
    """The bundle's own self-test is its code checking itself: it says its verdict rests on the
    manifest sha256, to be compared with the release's; packager says what it checked."""
    manifest_sha = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    statement = f"manifest sha256 {manifest_sha}, compare with the release notes"
    rec = tmp_path / "record.json"
    r = predict_py(bundle, "--self-test", "--record", rec, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"integrity: {statement} (checked by the bundle's own code)" in r.stdout
    assert json.loads(rec.read_text())["integrity"] == {
        "basis": "manifest",
        "statement": statement,
        "checked_by": "bundle",
    }
    res = packager("selftest", bundle, "--record", rec, "--json", cwd=tmp_path)
    assert res.code == 0, res.stderr
    assert res.json["integrity"]["checked_by"] == "packager"
    assert res.json["integrity"]["statement"] == statement
    assert res.json["checks"][0] == {
        "name": "integrity",
        "status": "passed",
        "checked_by": "packager",
        "problems": [],
    }


def openssl_fingerprint(pub: Path) -> str:
    """The key's fingerprint as a hospital computes it, with openssl rather than packager."""
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(pub), "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    return "sha256:" + hashlib.sha256(der).hexdigest()


def test_signature_is_checked_with_the_key(bundle: Path, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: needed for an independent key fingerprint")
    for name in ("release.key", "other.key"):
        assert packager("keygen", "--out", tmp_path / name, cwd=tmp_path).code == 0
    pub, other = tmp_path / "release.key.pub", tmp_path / "other.key.pub"
    rec = tmp_path / "record.json"
    # Unsigned, with a key: the signature is missing, and that is a rejection.
    r = packager("selftest", bundle, "--pubkey", pub, "--record", rec, cwd=tmp_path)
    assert r.code == 1 and "signature: missing" in r.stderr, r.stderr
    assert packager("sign", bundle, "--key", tmp_path / "release.key", cwd=tmp_path).code == 0
    r = packager("selftest", bundle, "--pubkey", pub, "--record", rec, "--json", cwd=tmp_path)
    assert r.code == 0, r.stderr
    assert r.json["integrity"] == {
        "basis": "signature",
        "statement": f"signature verified (key fingerprint {openssl_fingerprint(pub)})",
        "checked_by": "packager",
    }
    marker = tmp_path / "MARKER"
    r = packager("selftest", bundle, "--pubkey", other, "--record", rec, cwd=tmp_path)
    assert r.code == 1 and "signature: invalid" in r.stderr, r.stderr
    r = packager("validate", bundle, "--data", "x.npz", "--pubkey", other, cwd=tmp_path)
    assert r.code == 1 and "signature: invalid" in r.stderr, r.stderr
    assert not marker.exists()


def test_a_signed_bundle_rehashed_after_signing_fails_without_a_key(
    bundle: Path, tmp_path: Path
) -> None:
    """No key at hand: model.sig cannot show who signed, but it still lists every file as it was
    signed, so preprocess.py edited with the manifest and report.json re-hashed is caught (the
    manifest and the code hashes alone agree)."""
    assert packager("keygen", "--out", tmp_path / "k", cwd=tmp_path).code == 0
    assert packager("sign", bundle, "--key", tmp_path / "k", cwd=tmp_path).code == 0
    pre = bundle / "preprocess.py"
    pre.write_text(pre.read_text().replace("0.299, 0.587, 0.114", "0.2, 0.7, 0.1"))
    rehash(bundle, "preprocess.py", code=True)
    rec = tmp_path / "record.json"
    r = packager("selftest", bundle, "--record", rec, cwd=tmp_path)
    assert r.code == 1, r.stderr
    problems = record_of(r, rec)["checks"][0]["problems"]
    assert "model.sig: changed: preprocess.py since it was signed" in problems, problems
    assert "model.sig: changed: manifest.json since it was signed" in problems, problems


def test_verify_says_unsigned_first(bundle: Path, tmp_path: Path) -> None:
    r = packager("verify", bundle, cwd=tmp_path)
    assert r.code == 0 and r.stdout.splitlines()[0].startswith("UNSIGNED: "), r.stdout
    assert packager("verify", bundle, "--json", cwd=tmp_path).json["signed"] is False
    assert packager("keygen", "--out", tmp_path / "k", cwd=tmp_path).code == 0
    assert packager("sign", bundle, "--key", tmp_path / "k", cwd=tmp_path).code == 0
    r = packager("verify", bundle, "--json", cwd=tmp_path)
    assert r.code == 0 and r.json["signed"] is True
    assert "UNSIGNED" not in packager("verify", bundle, cwd=tmp_path).stdout


def test_no_bytecode_is_written_into_a_bundle(
    bundle: Path, tmp_path: Path, data_path: Path
) -> None:
    """Without PYTHONDONTWRITEBYTECODE (a hospital's normal shell), importing the bundle's
    modules must not leave __pycache__/ in it: the self-test would then reject its own bundle
    ("added: __pycache__/..."), and a validated or benchmarked bundle would stop verifying."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run(
        [
            sys.executable,
            str(bundle / "predict.py"),
            "--self-test",
            "--record",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    for args in (("bench", bundle, "--batch-sizes", "1", "--seconds", "0.1"),):
        r = subprocess.run(
            [sys.executable, "-m", "packager.cli", *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert r.returncode == 0, r.stderr
    assert not list(bundle.rglob("__pycache__"))
    v = subprocess.run(
        [sys.executable, "-m", "packager.cli", "verify", str(bundle)], capture_output=True, env=env
    )
    assert v.returncode == 0, v.stdout
