"""The manifest check (packager.shipped.integrity, which the shipped self-test runs) and packager's
own bundle check (packager.builder.verify) on small bundles built by hand in each test: every
expected problem is written out from hashlib and the files the test itself made, never from
packager's own listing (issue 28: the shipped check without its `added:` line passed the suite).
In-process and fast, so `make mutate` can run them against every mutant."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from packager.builder.bundle import safe_extract
from packager.builder.verify import Checked, check_bundle, require, verify
from packager.core.errors import GateFailed, UserError
from packager.shipped import integrity
from packager.shipped.selftest import check_manifest

CODE = {
    "predict.py": b"print('predict')\n",
    "selftest.py": b"print('selftest')\n",
    "integrity.py": b"print('integrity')\n",
}
CONFIG = {
    "labels": {"names": ["normal", "pneumonia"], "positive": "pneumonia", "threshold": 0.5},
    "gates": {"min_sensitivity": 0.9, "max_sensitivity_drop": 0.02},
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_of(root: Path) -> dict[str, bytes]:
    """Every file the test wrote, except manifest.json and the signature (by their full path)."""
    out = {}
    for top, _, names in os.walk(root):
        for n in names:
            rel = Path(top, n).relative_to(root).as_posix()
            if rel not in ("manifest.json", "model.sig", "manifest.sig"):
                out[rel] = Path(top, n).read_bytes()
    return out


def write_manifest(root: Path, **extra: Any) -> None:
    listed = {r: {"sha256": sha(d), "size": len(d)} for r, d in files_of(root).items()}
    doc = {"name": "tiny", "target": "cpu-onnxruntime", "config": CONFIG, "files": listed}
    (root / "manifest.json").write_text(json.dumps(doc | extra))


def make_bundle(root: Path) -> Path:
    """A bundle that passes every check: code hashed in report.json, the config agreeing with
    runtime.json, selftest.json and report.json's gate limits, a file in a subfolder."""
    root.mkdir(parents=True)
    for name, data in CODE.items():
        (root / name).write_bytes(data)
    labels = CONFIG["labels"]
    runtime = {"labels": labels["names"], "positive": labels["positive"], "threshold": 0.5}
    (root / "runtime.json").write_text(json.dumps(runtime))
    (root / "selftest.json").write_text(json.dumps({"threshold": 0.5, "tolerance": 1e-4}))
    checks = [{"name": n, "limit": v} for n, v in CONFIG["gates"].items()]
    checks.append({"name": "max_p95_ms", "limit": 30})  # not in the config: not compared
    report = {"code": {n: sha(d) for n, d in CODE.items()}, "gates": {"checks": checks}}
    (root / "report.json").write_text(json.dumps(report))
    (root / "model.onnx").write_bytes(b"\x08\x07" * 600)
    (root / "docs").mkdir()
    (root / "docs" / "README.txt").write_bytes(b"read me\n")
    write_manifest(root)
    return root


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "cpu-onnxruntime")


def manifest_problems(root: Path) -> list[str]:
    """The shipped self-test's manifest check, and integrity.check, must agree."""
    manifest, problems = integrity.check(root)
    _, record = check_manifest(root)
    assert record["problems"] == problems
    assert record["status"] == ("failed" if problems else "passed")
    assert record["files"] == len(manifest.get("files", {}))
    return problems


def test_a_hand_built_bundle_passes_every_check(bundle: Path) -> None:
    manifest, problems = integrity.check(bundle)
    assert problems == []
    assert sorted(manifest["files"]) == sorted(files_of(bundle))
    assert check_manifest(bundle)[1] == {
        "name": "manifest",
        "status": "passed",
        "files": 8,
        "problems": [],
    }
    checked = check_bundle(bundle)
    assert checked.problems == [] and checked.ok
    assert checked.fingerprint is None
    assert checked.manifest_sha256 == sha((bundle / "manifest.json").read_bytes())
    assert checked.integrity() == {
        "basis": "manifest",
        "statement": f"manifest sha256 {checked.manifest_sha256}, compare with the release notes",
        "checked_by": "packager",
    }
    result = verify(bundle)
    assert result.ok and result.problems == []
    assert result.to_dict() == {
        "path": str(bundle),
        "ok": True,
        "problems": [],
        "signature": "not checked",
        "signed": False,
        "target": "cpu-onnxruntime",
        "files": 8,
    }


def test_added_missing_and_changed_files_are_each_named(bundle: Path) -> None:
    """The issue's survivor: the shipped check without its `added:` line. Two of each kind, so
    the order (missing, changed, added; each sorted) is pinned too."""
    (bundle / "zz-added.txt").write_bytes(b"new")
    (bundle / "docs" / "added.py").write_bytes(b"import os\n")
    (bundle / "model.onnx").unlink()
    (bundle / "docs" / "README.txt").unlink()
    (bundle / "runtime.json").write_text((bundle / "runtime.json").read_text().upper())  # same size
    (bundle / "selftest.py").write_bytes(CODE["selftest.py"] + b"# more\n")
    expected = [
        "missing: docs/README.txt",
        "missing: model.onnx",
        "changed: runtime.json",
        "changed: selftest.py",
        "added: docs/added.py",
        "added: zz-added.txt",
    ]
    assert manifest_problems(bundle) == expected
    assert check_bundle(bundle).problems[:6] == expected
    assert verify(bundle).problems == expected and not verify(bundle).ok


@pytest.mark.parametrize("kind", ["added", "missing"])
def test_one_added_or_missing_file_alone_fails(bundle: Path, kind: str) -> None:
    if kind == "added":
        (bundle / "extra.bin").write_bytes(b"")  # empty: nothing but its presence tells
    else:
        (bundle / "docs" / "README.txt").unlink()
    expected = ["added: extra.bin"] if kind == "added" else ["missing: docs/README.txt"]
    assert manifest_problems(bundle) == expected
    checked = check_bundle(bundle)
    assert checked.problems == expected and checked.manifest_sha256 is None
    assert checked.integrity()["basis"] == "unverified"


def test_a_wrong_size_fails_even_with_the_right_hash(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.onnx"]["size"] += 1  # the hash still matches the file
    manifest["files"]["predict.py"]["size"] = "17"  # not an int: the hash decides, and agrees
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert manifest_problems(bundle) == ["changed: model.onnx"]


def test_a_wrong_hash_fails_with_the_right_size(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.onnx"]["sha256"] = sha(b"something else")
    del manifest["files"]["predict.py"]["size"]
    manifest["files"]["predict.py"]["sha256"] = sha(b"")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert manifest_problems(bundle) == ["changed: model.onnx", "changed: predict.py"]


def test_signature_files_are_unlisted_only_at_the_top(bundle: Path) -> None:
    (bundle / "manifest.sig").write_bytes(b"old")
    (bundle / "docs" / "model.sig").write_bytes(b"not at the top")
    (bundle / "docs" / "manifest.json").write_bytes(b"{}")
    assert manifest_problems(bundle) == ["added: docs/manifest.json", "added: docs/model.sig"]


def test_file_sha256_is_hashlibs_across_chunks(tmp_path: Path) -> None:
    for size in (0, 1, (1 << 20) - 1, 1 << 20, 3 * (1 << 20) + 7):
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        (tmp_path / "f").write_bytes(data)
        assert integrity.file_sha256(tmp_path / "f") == sha(data)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("plain-é.txt", "plain-é.txt"),
        ("evil\u202etxt.py", "evil\\u202etxt.py"),
        ("mark\u200e", "mark\\u200e"),
        ("iso\u2066late\u2069", "iso\\u2066late\\u2069"),
        ("arabic\u061c", "arabic\\u061c"),
        ("two\nlines", "two\\nlines"),
        ("bell\x07", "bell\\x07"),
        ("latin1-\udce9", "latin1-\\xe9"),
        ("low\udc80-high\udcff", "low\\x80-high\\xff"),
        ("lone\udd00", "lone\\udd00"),  # a surrogate no undecodable byte makes (JSON can)
    ],
)
def test_printable_escapes_what_a_terminal_would_act_on(name: str, shown: str) -> None:
    assert integrity.printable(name) == shown


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("ok-\u00e9\u4e2d.txt", None),
        ("a\u202ab", "holds a Unicode bidi control, which makes a name print as another"),
        ("a\u202eb", "holds a Unicode bidi control, which makes a name print as another"),
        ("a\u2069b", "holds a Unicode bidi control, which makes a name print as another"),
        ("a\u200fb", "holds a Unicode bidi control, which makes a name print as another"),
        ("a\tb", "holds a control character"),
        ("a\x7fb", "holds a control character"),
        ("a\udc80b", "is not UTF-8"),
        ("a\udcffb", "is not UTF-8"),
        ("a\udc7fb", "holds a control character"),  # a lone surrogate, not an escaped byte
        ("a\udd00b", "holds a control character"),
        ("\u202a\t", "holds a Unicode bidi control, which makes a name print as another"),
        ("\udcc3\u202e", "is not UTF-8"),
    ],
)
def test_name_problem(name: str, why: str | None) -> None:
    assert integrity.name_problem(name) == why


def test_bidi_set_is_exactly_the_directional_controls() -> None:
    expected = {chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]}
    assert expected | {"\u200e", "\u200f", "\u061c"} == integrity.BIDI


@pytest.mark.parametrize("where", ["top", "folder"])
def test_a_refused_name_is_a_problem_not_a_crash(bundle: Path, where: str) -> None:
    if where == "top":
        (bundle / "evil\u202etxt.py").write_bytes(b"x")
        shown = "evil\\u202etxt.py"
    else:
        (bundle / "dir\x1b").mkdir()  # a folder's name is checked even when it is empty
        shown = "dir\\x1b"
    why = (
        "holds a Unicode bidi control, which makes a name print as another"
        if where == "top"
        else "holds a control character"
    )
    expected = [f"the file name '{shown}' {why}; remove that file"]
    assert manifest_problems(bundle) == expected
    assert check_bundle(bundle).problems == expected
    with pytest.raises(integrity.BadBundle) as exc:
        integrity.listing(bundle)
    assert str(exc.value) == expected[0]


@pytest.mark.parametrize("kind", ["file-link", "dir-link", "fifo"])
def test_links_and_devices_are_problems(bundle: Path, kind: str) -> None:
    node = bundle / "docs" / "node"
    if kind == "file-link":
        node.symlink_to(bundle / "model.onnx")
    elif kind == "dir-link":
        node.symlink_to(bundle / "docs")
    else:
        os.mkfifo(node)
    what = "is a link" if "link" in kind else "is a device, pipe or socket"
    tail = "; bundles hold plain files only"
    assert manifest_problems(bundle) == [f"{node} {what}{tail}"]


@pytest.mark.parametrize(
    "text",
    [b"not json", b"\xff\xfe", b"[" * 100_000, b"[1, 2]", b'"files"', b"{}", b'{"files": []}'],
)
def test_a_manifest_that_is_not_one_is_a_problem(bundle: Path, text: bytes) -> None:
    (bundle / "manifest.json").write_bytes(text)
    if text.startswith((b"{", b'"')) or text == b"[1, 2]":
        why = {
            b"[1, 2]": "unreadable (not a JSON object)",
            b'"files"': "unreadable (not a JSON object)",
        }.get(text, "unreadable or without a file list")
    else:
        why = "unreadable (not JSON, or nested too deep)"
    assert integrity.check(bundle) == ({}, [f"manifest.json: {why}"])
    assert check_bundle(bundle).problems == [f"manifest.json: {why}"]  # nothing more is checked
    result = verify(bundle)
    assert result.ok is False and result.problems == [f"manifest.json: {why}"]
    assert result.to_dict()["ok"] is False


@pytest.mark.parametrize(
    "entry", [{"sha256": 5}, {"size": 3}, "abc", None, {"sha256": None, "size": 1}]
)
def test_a_file_entry_without_a_sha256_is_refused(bundle: Path, entry: Any) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["zz"] = entry
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert integrity.check(bundle) == ({}, ["manifest.json: unreadable or without a file list"])


def test_a_missing_manifest_is_a_missing_file(bundle: Path) -> None:
    (bundle / "manifest.json").unlink()
    assert integrity.check(bundle) == ({}, ["missing: manifest.json"])
    assert check_manifest(bundle)[1] == {
        "name": "manifest",
        "status": "failed",
        "files": 0,
        "problems": ["missing: manifest.json"],
    }
    checked = check_bundle(bundle)
    assert checked.problems == ["missing: manifest.json"] and checked.manifest == {}
    with pytest.raises(UserError, match="has no manifest.json; is it a packager bundle"):
        verify(bundle)


# packager's own checks beyond the manifest (packager.builder.verify.check_bundle)


def rewrite(bundle: Path, name: str, change: Any) -> None:
    doc = json.loads((bundle / name).read_text())
    change(doc)
    (bundle / name).write_text(json.dumps(doc))
    write_manifest(bundle)  # what a careless re-packager does: the manifest agrees again


def test_code_rehashed_into_the_manifest_fails_the_code_hashes(bundle: Path) -> None:
    (bundle / "predict.py").write_bytes(b"print('other code')\n")
    (bundle / "docs" / "plugin.py").write_bytes(b"")
    (bundle / "integrity.py").unlink()
    write_manifest(bundle)
    assert integrity.check(bundle)[1] == []  # the manifest alone cannot see it
    assert check_bundle(bundle).problems == [
        "report.json code: integrity.py is missing",
        "report.json code: predict.py differs from the code the bundle was validated with",
        "report.json code: docs/plugin.py is not code it lists",
    ]


def test_a_code_entry_that_is_a_folder_is_missing(bundle: Path) -> None:
    rewrite(bundle, "report.json", lambda d: d["code"].update({"docs": sha(b"")}))
    assert check_bundle(bundle).problems == ["report.json code: docs is missing"]


@pytest.mark.parametrize("code", [None, {}, [], "abc"])
def test_no_code_hashes_is_a_problem(bundle: Path, code: Any) -> None:
    rewrite(bundle, "report.json", lambda d: d.update(code=code))
    assert check_bundle(bundle).problems == [
        "report.json: no `code` hashes; rebuild the bundle with this packager version"
    ]


@pytest.mark.parametrize(
    ("name", "change", "problem"),
    [
        (
            "runtime.json",
            lambda d: d.update(threshold=0.55),
            "runtime.json: threshold is 0.55 but manifest.json's config says 0.5",
        ),
        (
            "selftest.json",
            lambda d: d.update(threshold=0.4),
            "selftest.json: threshold is 0.4 but manifest.json's config says 0.5",
        ),
        (
            "runtime.json",
            lambda d: d.update(positive="normal"),
            "runtime.json: positive is 'normal' but manifest.json's config says 'pneumonia'",
        ),
        (
            "runtime.json",
            lambda d: d.update(labels=["pneumonia", "normal"]),
            "runtime.json: labels is ['pneumonia', 'normal'] but manifest.json's config says "
            "['normal', 'pneumonia']",
        ),
        (
            "report.json",
            lambda d: d["gates"]["checks"][0].update(limit=0.8),
            "report.json: gates.min_sensitivity is 0.8 but manifest.json's config says 0.9",
        ),
        (
            "report.json",
            lambda d: d["gates"]["checks"][1].update(limit=0.05),
            "report.json: gates.max_sensitivity_drop is 0.05 but manifest.json's config says 0.02",
        ),
    ],
)
def test_config_edited_in_one_place_is_caught(
    bundle: Path, name: str, change: Any, problem: str
) -> None:
    rewrite(bundle, name, change)
    assert check_bundle(bundle).problems == [problem]


def test_config_edited_in_the_manifest_is_caught_everywhere(bundle: Path) -> None:
    config = json.loads(json.dumps(CONFIG))
    config["labels"]["threshold"] = 0.7
    config["gates"]["min_sensitivity"] = 0.95
    config["gates"]["not_reported"] = 1  # a gate report.json does not list is not compared
    write_manifest(bundle, config=config)
    assert check_bundle(bundle).problems == [
        "runtime.json: threshold is 0.5 but manifest.json's config says 0.7",
        "selftest.json: threshold is 0.5 but manifest.json's config says 0.7",
        "report.json: gates.min_sensitivity is 0.9 but manifest.json's config says 0.95",
    ]


@pytest.mark.parametrize("config", [None, [], "x"])
def test_no_recorded_config_is_a_problem(bundle: Path, config: Any) -> None:
    write_manifest(bundle, config=config)
    assert check_bundle(bundle).problems == [
        "manifest.json: no recorded config; rebuild the bundle with this packager version"
    ]


def test_a_config_without_labels_or_gates_compares_with_none(bundle: Path) -> None:
    write_manifest(bundle, config={"labels": "x", "gates": ["min_sensitivity"]})
    assert check_bundle(bundle).problems == [
        "runtime.json: labels is ['normal', 'pneumonia'] but manifest.json's config says None",
        "runtime.json: positive is 'pneumonia' but manifest.json's config says None",
        "runtime.json: threshold is 0.5 but manifest.json's config says None",
        "selftest.json: threshold is 0.5 but manifest.json's config says None",
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (None, "missing"),
        (b"{", "unreadable (not JSON, or nested too deep)"),
        (b"[" * 100_000, "unreadable (not JSON, or nested too deep)"),
        (b"[0.5]", "unreadable (not a JSON object)"),
    ],
)
@pytest.mark.parametrize("name", ["runtime.json", "report.json", "selftest.json"])
def test_an_unreadable_document_is_named(
    bundle: Path, name: str, text: bytes | None, why: str
) -> None:
    if text is None:
        (bundle / name).unlink()
    else:
        (bundle / name).write_bytes(text)
    write_manifest(bundle)
    problems = check_bundle(bundle).problems
    assert problems[0] == f"{name}: {why}"
    # Read as empty: what it should have said is then reported as differing.
    follow = {
        "runtime.json": "runtime.json: labels is None",
        "report.json": "report.json: no `code` hashes",
        "selftest.json": "selftest.json: threshold is None",
    }[name]
    assert problems[1].startswith(follow)


def test_a_report_with_unusable_gate_checks_compares_no_gates(bundle: Path) -> None:
    for checks in (None, {"min_sensitivity": 0.1}, ["min_sensitivity", {"name": "x"}]):
        rewrite(bundle, "report.json", lambda d, c=checks: d["gates"].update(checks=c))
        assert check_bundle(bundle).problems == []
    rewrite(bundle, "report.json", lambda d: d.update(gates=None))
    assert check_bundle(bundle).problems == []


# model.sig: read without a key (its statement against the files), and checked with one


def statement_sig(root: Path, names: dict[str, bytes], algorithm: str = "sha256") -> None:
    """A model.sig in model-signing's layout (a DSSE envelope over an in-toto statement), written
    by hand: unsigned, which is all a check without a key can read."""
    resources = [{"name": n, "algorithm": algorithm, "digest": sha(d)} for n, d in names.items()]
    statement = {"predicate": {"resources": resources}}
    payload = base64.b64encode(json.dumps(statement).encode()).decode()
    (root / "model.sig").write_text(json.dumps({"dsseEnvelope": {"payload": payload}}))


def signed_files(root: Path) -> dict[str, bytes]:
    return files_of(root) | {"manifest.json": (root / "manifest.json").read_bytes()}


def test_an_unkeyed_signature_that_lists_the_files_passes(bundle: Path) -> None:
    statement_sig(bundle, signed_files(bundle))
    assert check_bundle(bundle).problems == []
    assert verify(bundle).signed


def test_a_file_rehashed_after_signing_fails_without_a_key(bundle: Path) -> None:
    statement_sig(bundle, signed_files(bundle))
    (bundle / "model.onnx").write_bytes(b"a different model")
    (bundle / "new.txt").write_bytes(b"")
    write_manifest(bundle)
    assert check_bundle(bundle).problems == [
        "model.sig: changed: manifest.json since it was signed",
        "model.sig: changed: model.onnx since it was signed",
        "model.sig: added: new.txt since it was signed",
    ]


def test_signed_resources_of_another_algorithm_are_not_read(bundle: Path) -> None:
    statement_sig(bundle, signed_files(bundle), algorithm="blake2")
    problems = check_bundle(bundle).problems
    assert problems == [
        f"model.sig: added: {n} since it was signed" for n in sorted(signed_files(bundle))
    ]


@pytest.mark.parametrize(
    "text",
    [
        b"not json",
        b"{}",
        b'{"dsseEnvelope": {"payload": "***"}}',
        b'{"dsseEnvelope": {"payload": "' + base64.b64encode(b"[1]") + b'"}}',
        b'{"dsseEnvelope": {"payload": "' + base64.b64encode(b"{nope") + b'"}}',
        b'{"dsseEnvelope": {"payload": 5}}',
    ],
)
def test_an_unreadable_signature_is_a_problem(bundle: Path, text: bytes) -> None:
    (bundle / "model.sig").write_bytes(text)
    assert check_bundle(bundle).problems == [
        "model.sig: unreadable (not a model-signing signature)"
    ]


def test_a_payload_with_a_character_outside_base64_is_unreadable(bundle: Path) -> None:
    """A lenient decoder would skip the stray character and read a statement that matches."""
    statement_sig(bundle, signed_files(bundle))
    sig = json.loads((bundle / "model.sig").read_text())
    sig["dsseEnvelope"]["payload"] = "*" + sig["dsseEnvelope"]["payload"]
    (bundle / "model.sig").write_text(json.dumps(sig))
    assert check_bundle(bundle).problems == [
        "model.sig: unreadable (not a model-signing signature)"
    ]


def test_no_signature_check_without_a_manifest(bundle: Path) -> None:
    (bundle / "model.sig").write_bytes(b"not json")
    (bundle / "manifest.json").unlink()
    assert check_bundle(bundle).problems == ["missing: manifest.json"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two P-256 key pairs made with `cryptography` directly: (private, its public, another
    public)."""
    root = tmp_path_factory.mktemp("keys")
    paths = []
    for i in range(2):
        key = ec.generate_private_key(ec.SECP256R1())
        private = root / f"k{i}.pem"
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        public = root / f"k{i}.pub"
        public.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        paths += [private, public]
    return paths[0], paths[1], paths[3]


def sign_with_model_signing(root: Path, private: Path) -> None:
    """model.sig made by the model-signing library itself, over every file but model.sig."""
    import model_signing

    out = root.parent / "model.sig.tmp"
    hashing = model_signing.hashing.Config().set_ignored_paths(
        paths=["model.sig"], ignore_git_paths=False
    )
    model_signing.signing.Config().use_elliptic_key_signer(private_key=private).set_hashing_config(
        hashing
    ).sign(root, out)
    out.rename(root / "model.sig")


def test_a_signature_checked_with_its_key(bundle: Path, keys: tuple[Path, Path, Path]) -> None:
    private, public, other = keys
    sign_with_model_signing(bundle, private)
    checked = check_bundle(bundle, public)
    assert checked.problems == []
    der = serialization.load_pem_public_key(public.read_bytes()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert checked.fingerprint == "sha256:" + sha(der)
    assert checked.integrity()["basis"] == "signature"
    assert checked.integrity()["statement"] == (
        f"signature verified (key fingerprint {checked.fingerprint})"
    )
    result = verify(bundle, public)
    assert result.ok and result.signature == "valid" and result.signed
    wrong = check_bundle(bundle, other)
    assert len(wrong.problems) == 1 and wrong.problems[0].startswith("signature: invalid")
    assert wrong.fingerprint is None and wrong.integrity()["basis"] == "unverified"
    result = verify(bundle, other)
    assert not result.ok and result.problems == wrong.problems


def test_a_key_makes_a_missing_signature_a_problem(
    bundle: Path, keys: tuple[Path, Path, Path]
) -> None:
    missing = "signature: missing (model.sig not found; sign with `packager sign`)"
    assert check_bundle(bundle, keys[1]).problems == [missing]
    assert verify(bundle, keys[1]).problems == [missing]


def test_require_names_three_problems_and_counts_the_rest(bundle: Path) -> None:
    assert require(bundle).ok
    for i in range(5):
        (bundle / f"extra{i}").write_bytes(b"")
    with pytest.raises(GateFailed) as exc:
        require(bundle)
    assert str(exc.value) == (
        f"{bundle} does not verify, so none of its code was run: "
        "added: extra0; added: extra1; added: extra2 (and 2 more)"
    )
    (bundle / "extra4").unlink()
    with pytest.raises(GateFailed) as exc:
        require(bundle)
    assert str(exc.value).endswith("added: extra0; added: extra1; added: extra2 (and 1 more)")
    (bundle / "extra3").unlink()
    with pytest.raises(GateFailed) as exc:
        require(bundle)
    assert str(exc.value).endswith("added: extra0; added: extra1; added: extra2")
    (bundle / "extra2").unlink()
    with pytest.raises(GateFailed) as exc:
        require(bundle)
    assert str(exc.value).endswith("run: added: extra0; added: extra1")


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz"])
def test_verify_reads_a_tarball(bundle: Path, tmp_path: Path, suffix: str) -> None:
    tar = tmp_path / f"tiny{suffix}"
    with tarfile.open(tar, "w:gz") as t:
        t.add(bundle, arcname=bundle.name)
    result = verify(tar)
    assert result.ok and result.path == str(tar) and result.to_dict()["files"] == 8
    (bundle / "new").write_bytes(b"")
    with tarfile.open(tar, "w:gz") as t:
        t.add(bundle, arcname=bundle.name)
    assert verify(tar).problems == ["added: new"]
    with pytest.raises(UserError, match="expands to more than"):
        verify(tar, max_gb=1e-9)


def test_extraction_keeps_tarfiles_data_filter(tmp_path: Path) -> None:
    """The other side of tests/test_trust_extract.py, which turns the filter off: with it on, a
    setuid bit in the tarball is cleared on extraction."""
    tar = tmp_path / "setuid.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        folder = tarfile.TarInfo("bundle")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        t.addfile(folder)
        run = tarfile.TarInfo("bundle/run.sh")
        run.mode, run.size = 0o4755, 3
        t.addfile(run, io.BytesIO(b"x=1"))
    top = safe_extract(tar, tmp_path)
    assert (top / "run.sh").read_bytes() == b"x=1"
    assert not (top / "run.sh").stat().st_mode & stat.S_ISUID


def test_verify_refuses_what_is_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "x.zip").write_bytes(b"")
    for path in (tmp_path / "x.zip", tmp_path / "absent"):
        with pytest.raises(UserError, match="is neither a bundle directory nor a .tar.gz"):
            verify(path)


def test_require_checks_the_signature_with_the_key(
    bundle: Path, keys: tuple[Path, Path, Path]
) -> None:
    sign_with_model_signing(bundle, keys[0])
    assert require(bundle, keys[1]).fingerprint is not None
    with pytest.raises(GateFailed, match="does not verify.*signature: invalid"):
        require(bundle, keys[2])


def test_verify_checks_a_tarballs_signature_with_the_key(
    bundle: Path, tmp_path: Path, keys: tuple[Path, Path, Path]
) -> None:
    sign_with_model_signing(bundle, keys[0])
    tar = tmp_path / "tiny.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(bundle, arcname=bundle.name)
    assert verify(tar, keys[1]).signature == "valid"
    result = verify(tar, keys[2])
    assert result.signature.startswith("invalid") and not result.ok


def test_a_valid_signature_over_an_inconsistent_bundle_is_no_basis(
    bundle: Path, keys: tuple[Path, Path, Path]
) -> None:
    """Signed as it is (the signature holds), but report.json's code hashes do not: the verdict
    rests on nothing, not on the signature."""
    (bundle / "predict.py").write_bytes(b"print('changed before signing')\n")
    write_manifest(bundle)
    sign_with_model_signing(bundle, keys[0])
    checked = check_bundle(bundle, keys[1])
    assert checked.problems == [
        "report.json code: predict.py differs from the code the bundle was validated with"
    ]
    assert checked.fingerprint is not None  # the signature itself checked out
    assert checked.manifest_sha256 is None
    assert checked.integrity() == {
        "basis": "unverified",
        "statement": "unverified",
        "checked_by": "packager",
    }


def test_a_failed_check_states_no_basis_whatever_it_holds() -> None:
    failed = Checked({}, ["added: x"], fingerprint="sha256:ab", manifest_sha256="cd")
    assert failed.integrity()["basis"] == "unverified"
    assert Checked({}, [], manifest_sha256="cd").integrity()["basis"] == "manifest"
