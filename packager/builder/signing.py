"""OpenSSF model signatures (the `model-signing` library, offline key mode: no network, no
transparency log). `model.sig` is a sigstore bundle whose DSSE envelope holds an in-toto
statement listing every other file of the bundle with its sha256; manifest.json still lists
every file too, so `packager verify` names each changed file with or without a key."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from packager.builder.bundle import (
    GENERATIONS,
    LEGACY_SIGNATURE,
    SIGNATURE,
    bundle_lock,
    make_tarball,
    publish,
    published_home,
    safe_extract,
    stage_copy,
)
from packager.core.errors import UserError
from packager.core.quiet import stdout_to_stderr
from packager.shipped import integrity

if TYPE_CHECKING:
    from model_signing import hashing

# model-signing accepts these curves (it refuses Ed25519); keygen makes P-256.
CURVES = ("secp256r1", "secp384r1", "secp521r1")
RESIGN = "packager keygen --out release.key && packager sign BUNDLE --key release.key"


def keygen(out: Path) -> tuple[Path, Path]:
    pub = out.with_name(out.name + ".pub")
    if out.exists() or pub.exists():
        raise UserError(f"{out} or {pub} already exists; choose another --out")
    key = ec.generate_private_key(ec.SECP256R1())
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


def _check_key(path: Path, private: bool) -> ec.EllipticCurvePublicKey:
    """Refuse, in one line, what model-signing would refuse with a traceback; the public key."""
    what = "private" if private else "public"
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
            f"{path} is not a PEM EC {what} key ({exc}); make one with `packager keygen`"
        ) from None
    want = ec.EllipticCurvePrivateKey if private else ec.EllipticCurvePublicKey
    if not isinstance(key, want) or key.curve.name not in CURVES:
        raise UserError(
            f"{path} is not an EC P-256/P-384/P-521 {what} key (model-signing refuses others, "
            "e.g. Ed25519 keys of packager <= 0.1.0); make one with `packager keygen`"
        )
    return key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key


def check_private_key(path: Path) -> str:
    """A usable signing key, checked before any work: its fingerprint (else a UserError)."""
    return _fingerprint(_check_key(path, private=True))


def _fingerprint(public: ec.EllipticCurvePublicKey) -> str:
    """sha256 of the public key's DER SubjectPublicKeyInfo, what
    `openssl pkey -pubin -in KEY.pub -outform DER | sha256sum` prints."""
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def is_signed(root: Path) -> bool:
    return (root / SIGNATURE).exists() or (root / LEGACY_SIGNATURE).exists()


def check_same_key(root: Path, key_path: Path) -> None:
    """Re-signing a signed bundle takes the key it was signed with: a hospital holds that
    key's public half, and another key's signature would fail there."""
    public = _check_key(key_path, private=True)
    if not (root / SIGNATURE).exists():
        return  # unsigned, or in the retired format: any release key may sign it
    with tempfile.TemporaryDirectory(prefix="packager-key-") as tmp:
        pub = Path(tmp) / "key.pub"
        pub.write_bytes(
            public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        status = check_signature(root, pub)
    if status != "valid":
        raise UserError(
            f"{root.name} is signed with another key than {key_path} (fingerprint "
            f"{_fingerprint(public)[:16]}…): {status}; pass the key it was signed with"
        )


def sign(bundle: Path, key_path: Path, max_gb: float | None = None) -> Path:
    """Sign a bundle directory (its tarball beside it is re-made) or a tarball in place. A
    published bundle (a link into DIR/.generations) gets a new signed generation, published
    atomically: it is never changed in place."""
    _check_key(key_path, private=True)
    if bundle.is_file():
        with tempfile.TemporaryDirectory(prefix="packager-sign-") as tmp:
            root = safe_extract(bundle, Path(tmp), max_gb)
            sign_dir(root, key_path)
            make_tarball(root, bundle)
        return bundle
    if bundle.is_symlink() or GENERATIONS in bundle.resolve().parts:
        dest_dir, name = published_home(bundle)
        with bundle_lock(dest_dir, name):
            stage = stage_copy(bundle)
            try:
                sign_dir(stage / name, key_path)
                make_tarball(stage / name, stage / f"{name}.tar.gz")
                return publish(stage, dest_dir, name)
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
    sign_dir(bundle, key_path)
    tar = bundle.with_name(bundle.name + ".tar.gz")
    if tar.exists():
        make_tarball(bundle, tar)
    return bundle


def _hashing() -> hashing.Config:
    from model_signing import hashing

    # Git paths are signed too (the library skips .git* by default): nothing in a bundle is
    # left out but the signature itself.
    return hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False)


def sign_dir(root: Path, key_path: Path) -> None:
    """Write model.sig into the bundle folder `root` (a stage, or an unpublished copy)."""
    import model_signing

    root = root.resolve()  # a published bundle is a link into its generation
    _, problems = integrity.check(root)
    if problems:
        raise UserError(f"{root} does not verify ({'; '.join(problems)}); refusing to sign")
    (root / LEGACY_SIGNATURE).unlink(missing_ok=True)  # replaced by the model-signing signature
    sig = root / SIGNATURE
    part = root.parent / f".{root.name}.sig.part"  # outside root: never hashed into itself
    try:
        model_signing.signing.Config().use_elliptic_key_signer(
            private_key=key_path
        ).set_hashing_config(_hashing()).sign(root, part)
        os.replace(part, sig)
    finally:
        part.unlink(missing_ok=True)


def _mismatch(message: str) -> str:
    """model-signing's manifest diff (a str() of a list of sentences), reduced to file names."""
    changed = re.findall(r"Hash mismatch for \\?'(.+?)\\?'", message)
    parts = [f"changed {', '.join(changed)}"] if changed else []
    for kind, names in re.findall(
        r"(Extra|Missing) files[a-z ]* in model '[^']*': ([^\"]+)", message
    ):
        parts.append(f"{'added' if kind == 'Extra' else 'missing'} {names}")
    return "; ".join(parts) or message[:200]


def key_fingerprint(pubkey: Path) -> str:
    """sha256 of the public key's DER SubjectPublicKeyInfo, as anyone can recompute it:
    `openssl pkey -pubin -in KEY.pub -outform DER | sha256sum`."""
    _check_key(pubkey, private=False)
    key = serialization.load_pem_public_key(pubkey.read_bytes())
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def check_signature(root: Path, pubkey: Path) -> str:
    """'valid', or why not (the words name model.sig and the files that differ)."""
    _check_key(pubkey, private=False)
    root = root.resolve()  # a published bundle is a link into its generation
    sig = root / SIGNATURE
    if not sig.exists():
        if (root / LEGACY_SIGNATURE).exists():
            raise UserError(
                f"{root.name} is signed in the old packager format ({LEGACY_SIGNATURE}, Ed25519), "
                f"which this version no longer checks; re-sign it: {RESIGN} (see README, "
                "Migrating signatures)"
            )
        return f"missing ({SIGNATURE} not found; sign with `packager sign`)"
    import model_signing

    try:
        # The library print()s warnings (e.g. about old signature formats): keep them off
        # stdout, which may be `verify --json`'s one JSON document.
        with stdout_to_stderr(show=False):
            model_signing.verifying.Config().use_elliptic_key_verifier(
                public_key=pubkey
            ).set_hashing_config(_hashing()).verify(root, sig)
    except InvalidSignature:
        return f"invalid ({SIGNATURE} was made with another key, or was changed)"
    except ValueError as exc:
        text = " ".join(str(exc).split())
        if text.startswith("Key mismatch"):
            return f"invalid ({SIGNATURE} was made with another key)"
        if text.startswith("Signature mismatch"):
            return f"invalid ({SIGNATURE} does not match the files: {_mismatch(text)})"
        return f"invalid ({SIGNATURE} is damaged or not a model-signing signature: {text[:160]})"
    except Exception as exc:  # a damaged signature fails in protobuf, json, base64...: fail closed
        text = " ".join(str(exc).split())[:160]
        return f"invalid ({SIGNATURE} is damaged or not a model-signing signature: {text})"
    return "valid"
