"""Issue 24, items 5 and 6: bundles are signed before they are published (`build --sign`,
`[sign] key`), and a published bundle is never changed in place: in-place `validate` publishes a
new generation (re-signed with the key, or not at all for a signed bundle without it), holds a
per-bundle lock, and site reports never overwrite each other nor live inside a generation.

Every signature is checked with model-signing's own CLI or packager verify; every fingerprint
with openssl; the bundle README's arrival commands are run verbatim."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from packager.core.config import parse_config
from tests.conftest import DEFAULT_TOML, Result, _run, assert_user_error, copy_project, must_have

TARGET = "cpu-onnxruntime"
BUILD = ["build", "--target", TARGET, "--no-bench"]
BIN = Path(sys.executable).parent
MODEL_SIGNING = BIN / "model_signing"


def tree(folder: Path) -> dict[str, str]:
    """sha256 of every file under a bundle folder (through its published link)."""
    root = folder.resolve()
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def openssl_fingerprint(pub: Path) -> str:
    """The key fingerprint as a hospital computes it: openssl, not packager."""
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(pub), "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    return hashlib.sha256(der).hexdigest()


def model_signing_verify(folder: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    if not MODEL_SIGNING.exists():
        must_have(f"not validated: model-signing's CLI is not installed at {MODEL_SIGNING}")
    cmd = [str(MODEL_SIGNING), "verify", "key", str(folder), "--signature"]
    cmd += [str(folder / "model.sig"), "--public_key", str(pub), "--no-ignore-git-paths"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def extract(tar: Path, into: Path) -> Path:
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    return into / TARGET


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("keys")
    assert _run(["keygen", "--out", "release.key"], root).code == 0
    return root / "release.key", root / "release.key.pub"


@pytest.fixture(scope="module")
def signed_project(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_path: Path, keys
) -> Path:
    """A project built with `build --sign KEY`: dist/tiny-1.0.0/cpu-onnxruntime, signed."""
    root = tmp_path_factory.mktemp("signed")
    (root / "packager.toml").write_text(DEFAULT_TOML.format(model=tiny_model, data=data_path))
    r = _run([*BUILD, "--sign", str(keys[0])], root)
    assert r.code == 0, r.stderr
    return root


@pytest.fixture
def signed(signed_project: Path, tmp_path: Path) -> Path:
    """A private copy of the signed dist/ (links and generations kept), for tests that change it."""
    dist = Path(shutil.copytree(signed_project / "dist", tmp_path / "dist", symlinks=True))
    return dist / "tiny-1.0.0" / TARGET


# ---- signed by default ------------------------------------------------------------------


def test_build_sign_is_accepted_by_packager_verify_and_model_signing(
    signed_project: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle = signed_project / "dist" / "tiny-1.0.0" / TARGET
    assert (bundle / "model.sig").is_file()
    for path in (bundle, bundle.with_name(f"{TARGET}.tar.gz")):
        r = _run(["verify", str(path), "--pubkey", str(keys[1]), "--json"], tmp_path)
        assert r.code == 0 and r.json["signature"] == "valid", r.stdout + r.stderr
    folder = extract(bundle.with_name(f"{TARGET}.tar.gz"), tmp_path / "x")
    ok = model_signing_verify(folder, keys[1])
    assert ok.returncode == 0 and "Verification succeeded" in ok.stdout, ok.stderr
    # The key is never shipped, nor its path recorded.
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "sign" not in manifest["config"] and "release.key" not in json.dumps(manifest)
    assert not any("key" in name for name in manifest["files"])


def test_readme_names_the_key_fingerprint(signed_project: Path, keys: tuple[Path, Path]) -> None:
    readme = (signed_project / "dist" / "tiny-1.0.0" / TARGET / "README.md").read_text()
    assert openssl_fingerprint(keys[1]) in readme
    assert "release.key.pub" in readme and "unsigned" not in readme


def arrival_commands(readme: str) -> list[str]:
    """The command lines of the bash block of the README's arrival steps."""
    block = re.search(r"## On arrival.*?```bash\n(.*?)```", readme, re.S)
    assert block, readme
    return [line for line in block.group(1).splitlines() if line.strip()]


def hospital_copy(signed_project: Path, keys: tuple[Path, Path], data_path: Path, at: Path) -> Path:
    """The extracted tarball with the vendor's public key saved next to it, and ~/images."""
    folder = extract(signed_project / "dist" / "tiny-1.0.0" / f"{TARGET}.tar.gz", at / "hospital")
    shutil.copy(keys[1], folder.parent / keys[1].name)
    (at / "home" / "images").mkdir(parents=True)
    with np.load(data_path) as d:
        Image.fromarray(d["test_images"][0]).save(at / "home" / "images" / "chest_xray.png")
    return folder


def run_arrival(folder: Path, bin_dir: Path, home: Path, fingerprint: str) -> list[str]:
    """Each command line of the arrival steps, verbatim, in the bundle folder, with only
    `bin_dir` (then /usr/bin, /bin) on PATH and no other environment (no
    PYTHONDONTWRITEBYTECODE: a hospital's shell has none)."""
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    commands = arrival_commands((folder / "README.md").read_text())
    assert commands[0].startswith("openssl pkey") and "model_signing verify key" in commands[1]
    outputs = []
    for line in commands:
        p = subprocess.run(
            ["bash", "-o", "pipefail", "-c", line],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 0, (line, p.stdout, p.stderr)
        outputs.append(p.stdout)
    assert outputs[0].split()[0] == fingerprint
    assert "Verification succeeded" in outputs[1]
    assert json.loads(outputs[-1].splitlines()[-1])  # predict.py: one JSON line per image
    # The same step fails on a changed file: the check is real.
    (folder / "preprocess.json").write_text((folder / "preprocess.json").read_text() + " ")
    p = subprocess.run(["bash", "-c", commands[1]], cwd=folder, env=env, capture_output=True)
    assert p.returncode == 1 and b"preprocess.json" in p.stderr
    return commands


def test_readme_arrival_commands_work_verbatim(
    signed_project: Path, keys: tuple[Path, Path], data_path: Path, tmp_path: Path
) -> None:
    """The hospital's steps, exactly as the bundle README writes them, with this environment's
    tools (model_signing, python). Old README: `model_signing verify ... --signature model.sig`
    on a bundle with no model.sig."""
    folder = hospital_copy(signed_project, keys, data_path, tmp_path)
    run_arrival(folder, BIN, tmp_path / "home", openssl_fingerprint(keys[1]))


@pytest.mark.slow
def test_readme_arrival_steps_in_a_fresh_venv(
    signed_project: Path, keys: tuple[Path, Path], data_path: Path, tmp_path: Path
) -> None:
    """The same in a new venv holding only what the README's pip line installs (found this
    way: model-signing 1.1.1 needs pyopenssl without declaring it)."""
    folder = hospital_copy(signed_project, keys, data_path, tmp_path)
    pip_line = re.search(
        r"`(pip install -r requirements.txt [^`]+)`", (folder / "README.md").read_text()
    )
    assert pip_line, "the README names what to install"
    where = tmp_path / "venv"
    venv.create(where, with_pip=True)
    pip = subprocess.run(
        [str(where / "bin" / "python"), "-m", *pip_line.group(1).split(), "-q"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if pip.returncode != 0:
        must_have(
            f"not validated: pip could not install the README's packages: {pip.stderr[-300:]}"
        )
    assert not (where / "bin" / "packager").exists()  # nothing of packager in it
    run_arrival(folder, where / "bin", tmp_path / "home", openssl_fingerprint(keys[1]))


def test_unsigned_bundle_readme_says_so(reference_bundle: Path) -> None:
    bundle = reference_bundle  # BUILD with DEFAULT_TOML, unsigned: the session's, read-only
    readme = (bundle / "README.md").read_text()
    assert not (bundle / "model.sig").exists() and "**unsigned**" in readme
    # No command in its arrival steps points at a model.sig it does not have.
    assert not any("model.sig" in line for line in arrival_commands(readme))
    assert "sha256sum manifest.json" in arrival_commands(readme)[0]


def test_sign_key_in_config_resolves_against_the_config_file(tmp_path: Path) -> None:
    cfg = parse_config({"sign": {"key": "keys/release.key"}}, tmp_path)
    assert cfg.sign.key == str(tmp_path / "keys" / "release.key")
    assert parse_config({}, tmp_path).sign.key is None


@pytest.mark.parametrize("how", ["flag", "config", "not-a-key"])
def test_missing_or_bad_key_is_one_line_before_any_work(
    how: str, tmp_path: Path, tiny_model: Path, data_path: Path, keys: tuple[Path, Path]
) -> None:
    toml = DEFAULT_TOML.format(model=tiny_model, data=data_path)
    args = list(BUILD)
    if how == "flag":
        args += ["--sign", "missing.key"]
    elif how == "config":
        toml += '[sign]\nkey = "missing.key"\n'
    else:
        args += ["--sign", str(keys[1])]  # a public key where the private one belongs
    (tmp_path / "packager.toml").write_text(toml)
    r = _run(args, tmp_path)
    assert_user_error(r, "key")
    assert not (tmp_path / "dist").exists()


# ---- a published bundle is never changed in place --------------------------------------


def in_place(bundle: Path, data: Path, cwd: Path, *extra: str) -> Result:
    return _run(["validate", str(bundle), "--data", str(data), "--json", *extra], cwd)


def test_in_place_validate_without_the_key_leaves_the_signed_generation(
    signed: Path, keys: tuple[Path, Path], data_path: Path, tmp_path: Path
) -> None:
    """Old code: model.sig silently deleted, `verify --pubkey` then says "signature: missing"."""
    before, generation = tree(signed), signed.resolve()
    tar_before = signed.with_name(f"{TARGET}.tar.gz").read_bytes()
    r = in_place(signed, data_path, tmp_path)
    assert r.code == 1, r.stderr
    assert "not published" in r.stderr and "no longer cover" in r.stderr
    assert r.json["publication"]["published"] is False
    assert signed.resolve() == generation and tree(signed) == before
    assert signed.with_name(f"{TARGET}.tar.gz").read_bytes() == tar_before
    v = _run(["verify", str(signed), "--pubkey", str(keys[1]), "--json"], tmp_path)
    assert v.code == 0 and v.json["signature"] == "valid", v.stdout


def test_in_place_validate_with_the_key_publishes_a_new_signed_generation(
    signed: Path, keys: tuple[Path, Path], data_path: Path, tmp_path: Path
) -> None:
    before, generation = tree(signed), signed.resolve()
    r = in_place(signed, data_path, tmp_path, "--sign", str(keys[0]))
    assert r.code == 0, r.stderr
    assert r.json["publication"] == {
        "published": True,
        "signed": True,
        "reason": f"published as a new generation of {signed}, signed",
    }
    assert signed.resolve() != generation and not generation.exists()  # swapped, old removed
    report = json.loads((signed / "report.json").read_text())
    assert report["steps"][-1]["name"] == "revalidate"
    assert tree(signed)["report.json"] != before["report.json"]
    for path in (signed, signed.with_name(f"{TARGET}.tar.gz")):
        v = _run(["verify", str(path), "--pubkey", str(keys[1]), "--json"], tmp_path)
        assert v.code == 0 and v.json["signature"] == "valid", v.stdout
    folder = extract(signed.with_name(f"{TARGET}.tar.gz"), tmp_path / "x")
    assert json.loads((folder / "report.json").read_text()) == report  # tarball = folder
    assert model_signing_verify(folder, keys[1]).returncode == 0
    # [sign] key of ./packager.toml does the same, relative to that file.
    work = tmp_path / "work"
    (work / "k").mkdir(parents=True)
    shutil.copy(keys[0], work / "k" / "release.key")
    (work / "packager.toml").write_text('[sign]\nkey = "k/release.key"\n')
    second = signed.resolve()
    r = in_place(signed, data_path, work)
    assert r.code == 0 and r.json["publication"]["signed"], r.stderr
    assert signed.resolve() != second
    v = _run(["verify", str(signed), "--pubkey", str(keys[1]), "--json"], tmp_path)
    assert v.code == 0 and v.json["signature"] == "valid", v.stdout


def test_in_place_validate_refuses_another_key(
    signed: Path, data_path: Path, tmp_path: Path
) -> None:
    assert _run(["keygen", "--out", "other.key"], tmp_path).code == 0
    before = tree(signed)
    r = in_place(signed, data_path, tmp_path, "--sign", str(tmp_path / "other.key"))
    assert_user_error(r, "another key", "pass the key it was signed with")
    assert tree(signed) == before


def test_sign_publishes_a_new_generation(
    tmp_path: Path, reference_project: Path, keys: tuple[Path, Path]
) -> None:
    """`packager sign` on a published bundle: the old generation is never written to."""
    copy_project(reference_project, tmp_path)  # BUILD with DEFAULT_TOML, published
    bundle = tmp_path / "dist" / "tiny-1.0.0" / TARGET
    old, before = bundle.resolve(), tree(bundle)
    assert _run(["sign", str(bundle), "--key", str(keys[0])], tmp_path).code == 0
    assert bundle.resolve() != old and not old.exists()
    assert {k: v for k, v in tree(bundle).items() if k != "model.sig"} == before
    v = _run(
        ["verify", str(bundle.with_name(f"{TARGET}.tar.gz")), "--pubkey", str(keys[1])], tmp_path
    )
    assert v.code == 0, v.stdout + v.stderr


ROUNDS = int(os.environ.get("PACKAGER_CONCURRENT_ROUNDS", "2"))


def test_concurrent_in_place_validates_never_corrupt(
    signed: Path, keys: tuple[Path, Path], data_path: Path, tmp_path: Path
) -> None:
    """Old code: tracebacks, a published folder failing verify, a tarball "not a gzipped
    file". Now each run publishes a new signed generation or refuses in one line."""
    cmd = [sys.executable, "-m", "packager.cli", "validate", str(signed), "--data"]
    cmd += [str(data_path), "--sign", str(keys[0]), "--quiet"]
    for n in range(ROUNDS):
        procs = [
            subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(4)
        ]
        done = [(p.wait(timeout=600), p.stderr.read().decode()) for p in procs if p.stderr]
        for code, err in done:
            assert "Traceback" not in err and code in (0, 2), (n, code, err)
            if code == 2:
                assert "changed while it was validated" in err and len(err.splitlines()) == 1
        assert any(code == 0 for code, _ in done), done
        for path in (signed, signed.with_name(f"{TARGET}.tar.gz")):
            v = _run(["verify", str(path), "--pubkey", str(keys[1]), "--json"], tmp_path)
            assert v.code == 0 and v.json["signature"] == "valid", (n, v.stdout, v.stderr)
    gens = [g for g in (signed.parent / ".generations" / TARGET).iterdir() if g.name != "current"]
    assert len(gens) == 1, gens  # no stage or old generation left behind
    assert not list((signed.parent / ".staging").glob("*/*"))


# ---- site reports ------------------------------------------------------------------------


def test_two_site_validations_into_one_out_keep_both(
    signed: Path, data_path: Path, tmp_path: Path
) -> None:
    """Old code: the second overwrote the first (one fixed file name per bundle)."""
    out = tmp_path / "site"
    runs = [
        _run(
            ["validate", str(signed), "--data", str(data_path), "--out", str(out), "--json"],
            tmp_path,
        )
        for _ in range(2)
    ]
    # exit 1: the build's own split cannot clear the default gates on their 95% bounds
    assert all(r.code in (0, 1) and r.json["files"] for r in runs), [r.stderr for r in runs]
    files = [Path(r.json["files"]["json"]) for r in runs]
    assert files[0] != files[1] and sorted(out.glob("*.json")) == sorted(files)
    assert all(json.loads(f.read_text())["kind"] == "site-validation" for f in files)
    assert len(list(out.glob("*.md"))) == 2 and len(list(out.glob("*.npz"))) == 2


def test_default_site_report_location_survives_the_next_build(
    tmp_path: Path, reference_project: Path, data_path: Path
) -> None:
    """Old code: the reports went inside .generations/<target>/<id>/, deleted by build --force."""
    copy_project(reference_project, tmp_path)  # BUILD with DEFAULT_TOML, published
    bundle = tmp_path / "dist" / "tiny-1.0.0" / TARGET
    args = ["validate", str(bundle), "--data", str(data_path), "--split", "val", "--json"]
    runs = [_run(args, tmp_path) for _ in range(2)]
    assert all(r.code in (0, 1) and r.json["kind"] == "site-validation" for r in runs)
    reports = [Path(r.json["files"]["json"]) for r in runs]
    home = tmp_path / "dist" / "tiny-1.0.0" / "site-validation" / TARGET
    assert reports[0] != reports[1]
    for report in reports:
        assert report.parent.parent == home and ".generations" not in report.parts
        assert re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z(-\d+)?", report.parent.name), report
    saved = {p: p.read_bytes() for p in home.rglob("*") if p.is_file()}
    assert len(saved) == 8  # json, md, html and npz of each run
    assert _run([*BUILD, "--force"], tmp_path).code == 0
    assert {p: p.read_bytes() for p in home.rglob("*") if p.is_file()} == saved
    assert _run(["verify", str(bundle)], tmp_path).code == 0
