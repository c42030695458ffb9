"""Ed25519 signatures: the signature covers manifest.json, the manifest covers every file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from packager.bundle import MANIFEST, SIGNATURE, make_tarball, safe_extract, verify
from packager.errors import UserError


def keygen(out: Path) -> tuple[Path, Path]:
    pub = out.with_name(out.name + ".pub")
    if out.exists() or pub.exists():
        raise UserError(f"{out} or {pub} already exists; choose another --out")
    key = Ed25519PrivateKey.generate()
    out.parent.mkdir(parents=True, exist_ok=True)
    # Created owner-only and exclusive: never readable by others, even for a moment.
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return out, pub


def _load(path: Path, private: bool) -> Ed25519PrivateKey | Ed25519PublicKey:
    try:
        data = path.read_bytes()
        key = (
            serialization.load_pem_private_key(data, password=None)
            if private
            else serialization.load_pem_public_key(data)
        )
    except FileNotFoundError:
        raise UserError(f"key file {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read key file {path} ({exc.strerror})") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UserError(
            f"{path} is not a PEM Ed25519 key ({exc}); make one with `packager keygen`"
        ) from None
    want = Ed25519PrivateKey if private else Ed25519PublicKey
    if not isinstance(key, want):
        raise UserError(f"{path} is not an Ed25519 key; make one with `packager keygen`")
    return key


def sign(bundle: Path, key_path: Path, max_gb: float | None = None) -> Path:
    """Sign a bundle directory (its tarball beside it is re-made) or a tarball in place."""
    key = _load(key_path, private=True)
    if bundle.is_file():
        with tempfile.TemporaryDirectory(prefix="packager-sign-") as tmp:
            root = safe_extract(bundle, Path(tmp), max_gb)
            _sign_dir(root, key)  # type: ignore[arg-type]
            make_tarball(root, bundle)
        return bundle
    _sign_dir(bundle, key)  # type: ignore[arg-type]
    tar = bundle.with_name(bundle.name + ".tar.gz")
    if tar.exists():
        make_tarball(bundle, tar)
    return bundle


def _sign_dir(root: Path, key: Ed25519PrivateKey) -> None:
    result = verify(root)
    if not result.ok:
        raise UserError(f"{root} does not verify ({'; '.join(result.problems)}); refusing to sign")
    (root / SIGNATURE).write_bytes(key.sign((root / MANIFEST).read_bytes()))


def check_signature(root: Path, pubkey: Path) -> str:
    key = _load(pubkey, private=False)
    sig = root / SIGNATURE
    if not sig.exists():
        return f"missing ({SIGNATURE} not found; sign with `packager sign`)"
    try:
        key.verify(sig.read_bytes(), (root / MANIFEST).read_bytes())  # type: ignore[union-attr]
    except InvalidSignature:
        return (
            f"invalid ({SIGNATURE} does not match {MANIFEST}: one of them was changed, "
            "or the bundle was signed with another key)"
        )
    return "valid"
