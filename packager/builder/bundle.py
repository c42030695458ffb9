"""Bundles: staging, manifest, reproducible tarball, atomic publish, verify, sign."""

from __future__ import annotations

import fcntl
import gzip
import io
import os
import shutil
import signal
import socket
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from packager.core import documents
from packager.core.errors import UserError
from packager.core.target import Target
from packager.shipped import SHIPPED, integrity
from packager.shipped.integrity import MANIFEST, file_sha256

SIGNATURE = "model.sig"  # OpenSSF model-signing (sigstore bundle), over every other file
LEGACY_SIGNATURE = "manifest.sig"  # packager <= 0.1.0: Ed25519 over manifest.json
SCHEMA_VERSION = 1


def _mtime() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def listing(root: Path) -> dict[str, Path]:
    """integrity.listing, its refusals (a link, a device, a refused name) one-line errors."""
    try:
        return integrity.listing(root)
    except integrity.BadBundle as exc:
        raise UserError(str(exc)) from None


def bundle_files(root: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under `root` except the manifest and its signature."""
    return {
        rel: {"sha256": file_sha256(path), "size": path.stat().st_size}
        for rel, path in listing(root).items()
    }


def write_manifest(root: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """manifest.json: `meta` plus every file's sha256, checked against packager.core.documents.Manifest
    before it is written."""
    manifest = {"schema_version": SCHEMA_VERSION, **meta, "files": bundle_files(root)}
    (root / MANIFEST).write_text(documents.checked_text(documents.Manifest, manifest))
    return manifest


def make_tarball(root: Path, dest: Path) -> None:
    """A byte-identical .tar.gz for identical contents: sorted, fixed mtime, owner and modes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in [root, *sorted(root.rglob("*"))]:
            arcname = Path(root.name, path.relative_to(root)).as_posix()
            info = tarfile.TarInfo(arcname)
            info.mtime, info.uid, info.gid, info.uname, info.gname = _mtime(), 0, 0, "", ""
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = path.stat().st_size
                info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    tmp = dest.with_name(dest.name + ".part")
    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=_mtime(), compresslevel=6) as gz,
    ):
        gz.write(buf.getvalue())
    os.replace(tmp, dest)


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Serialize publishing into one output directory across processes."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_HELD: dict[Path, int] = {}  # bundle locks this process holds, and how (LOCK_SH or LOCK_EX)


def bundle_lock_path(dest_dir: Path, name: str) -> Path:
    # Beside .generations/<name>/, never inside it: publish() clears that folder, and a lock
    # file unlinked while held no longer excludes anyone.
    return dest_dir / GENERATIONS / f".{name}.lock"


@contextmanager
def bundle_lock(dest_dir: Path, name: str, exclusive: bool = True) -> Iterator[None]:
    """The per-bundle lock. Publishing a generation of DIR/<name> holds it exclusively; reading
    a bundle for a validation holds it shared, so no publish swaps or deletes the generation
    being read. Waits for the lock (concurrent runs queue). Re-entrant within a process."""
    path = bundle_lock_path(dest_dir, name)
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    held = _HELD.get(path)
    if held is not None:
        if mode == fcntl.LOCK_EX and held != mode:
            raise RuntimeError(f"{path}: upgrade a shared bundle lock by releasing it first")
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, mode)
        _HELD[path] = mode
        try:
            yield
        finally:
            del _HELD[path]
            fcntl.flock(f, fcntl.LOCK_UN)


def published_home(bundle: Path) -> tuple[Path, str]:
    """(DIR, name) of DIR/<name>, the path a bundle is published at. A path into a generation
    (DIR/.generations/<name>/<id>/<name>, e.g. a shell's resolved working directory) maps back
    to the link that publishes it."""
    path = Path(os.path.abspath(bundle))
    parts = path.parts
    if GENERATIONS in parts[:-1]:
        at = len(parts) - 1 - parts[::-1].index(GENERATIONS)
        return Path(*parts[:at]), path.name
    return path.parent, path.name


def stage_copy(bundle: Path) -> Path:
    """A new stage holding a copy of the bundle's current generation (folder only), to be
    completed there and published as the next generation."""
    dest_dir, name = published_home(bundle)
    stage = new_stage(dest_dir, name)
    try:
        shutil.copytree(bundle.resolve(), stage / name, dirs_exist_ok=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return stage


def ensure_writable(out: Path) -> None:
    """Fail before any work when the output directory cannot take files."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise UserError(
            f"cannot write to the output directory {out} ({exc.strerror}); choose another --out"
        ) from None


OWNER = ".owner"


def _sweep_stale(base: Path) -> None:
    """Remove stages left by builds on this host that were killed (their process is gone)."""
    host = socket.gethostname()
    for stage in base.iterdir():
        try:
            owner_host, pid = (stage / OWNER).read_text().split()
            os.kill(int(pid), 0)
        except ProcessLookupError:
            if owner_host == host:
                shutil.rmtree(stage, ignore_errors=True)
        except (OSError, ValueError):  # unreadable, half-written or another user's: keep
            continue


def new_stage(out: Path, target: str) -> Path:
    base = out / ".staging"
    base.mkdir(parents=True, exist_ok=True)
    _sweep_stale(base)
    stage = Path(tempfile.mkdtemp(prefix=f"{target}-", dir=base))
    try:
        (stage / OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        (stage / target).mkdir()
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return stage


GENERATIONS = ".generations"
CURRENT = "current"
# Points where publish() may be interrupted; the kill test stops the build at each of them.
PUBLISH_STEPS = ("staged", "generation-in-place", "link-made", "swapped", "cleaned")


def _boundary(step: str) -> None:
    """Fault injection for the kill-at-every-step test: PACKAGER_KILL_AT=<step> notes the step
    in PACKAGER_KILL_MARK, then SIGKILLs this process (nothing can run after SIGKILL)."""
    if os.environ.get("PACKAGER_KILL_AT") == step:
        Path(os.environ["PACKAGER_KILL_MARK"]).write_text(step)
        os.kill(os.getpid(), signal.SIGKILL)


def _link(path: Path, to: str) -> None:
    """Make `path` a symlink to `to`, replacing whatever link is there in one rename."""
    if path.is_symlink() and os.readlink(path) == to:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(to, tmp)
    os.replace(tmp, path)


def _adopt_legacy(gens: Path, dest_dir: Path, target: str) -> None:
    """Bundles published before generations (a real folder and tarball) become the current
    generation, once, so the swap below stays a single rename from then on."""
    final = dest_dir / target
    if final.is_symlink() or not final.exists():
        return
    legacy = gens / "legacy"
    shutil.rmtree(legacy, ignore_errors=True)
    legacy.mkdir()
    os.rename(final, legacy / target)
    tar = dest_dir / f"{target}.tar.gz"
    if tar.exists() and not tar.is_symlink():
        os.rename(tar, legacy / tar.name)
    _link(gens / CURRENT, "legacy")


def publish(stage: Path, dest_dir: Path, target: str) -> Path:
    """Make stage/<target> and stage/<target>.tar.gz the published bundle in one atomic step.

    Each build is a generation, DIR/.generations/<target>/<id>/ holding the folder and the
    tarball; `current` points at one generation, and DIR/<target> and DIR/<target>.tar.gz are
    fixed links through it. Publishing renames a new `current` link over the old one: a reader,
    or a build killed at any instant (even by SIGKILL), sees wholly the old or wholly the new
    bundle, folder and tarball alike. It holds the per-bundle lock (bundle_lock), so it waits
    for validations reading the old generation before it deletes it."""
    with bundle_lock(dest_dir, target):
        return _publish(stage, dest_dir, target)


def _publish(stage: Path, dest_dir: Path, target: str) -> Path:
    gens = dest_dir / GENERATIONS / target
    gens.mkdir(parents=True, exist_ok=True)
    _adopt_legacy(gens, dest_dir, target)
    _boundary("staged")
    generation = gens / stage.name
    os.rename(stage, generation)
    generation.chmod(0o755)  # mkdtemp made it private; the bundle is for everyone who reads dist/
    (generation / OWNER).unlink(missing_ok=True)
    _boundary("generation-in-place")
    for name in (target, f"{target}.tar.gz"):  # dangling until `current` exists
        _link(dest_dir / name, f"{GENERATIONS}/{target}/{CURRENT}/{name}")
    tmp = gens / f".{CURRENT}.{generation.name}"
    tmp.unlink(missing_ok=True)
    os.symlink(generation.name, tmp)
    _boundary("link-made")
    os.replace(tmp, gens / CURRENT)  # the one step that publishes
    _boundary("swapped")
    for old in gens.iterdir():  # earlier generations, and leftovers of killed builds
        if old.name not in (generation.name, CURRENT):
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    _boundary("cleaned")
    return dest_dir / target


MAX_EXTRACT_GB = 16.0  # a bundle expanding past this is refused unless the caller allows more
# A bundle holds tens of files: a tarball of many more is refused after this many headers, before
# anything is extracted (300,000 empty entries cost 53 s and as many lines of output before).
MAX_MEMBERS = 10_000


def _checked_members(tar: tarfile.TarFile, tar_path: Path, limit: int, too_big: str) -> set[str]:
    """The top folders of a tarball whose every entry is a plain file or folder inside it, with
    an acceptable name, at most MAX_MEMBERS of them, declaring at most `limit` bytes in all: a
    sparse entry counts the size it declares, not the few bytes it stores."""
    roots, declared, count = set(), 0, 0
    try:
        for m in tar:
            count += 1
            if count > MAX_MEMBERS:
                raise UserError(
                    f"{tar_path} holds more than {MAX_MEMBERS:,} entries; a bundle holds tens, "
                    "so this is not one"
                )
            name = f"'{integrity.printable(m.name)}'"
            why = integrity.name_problem(m.name)
            if why:
                raise UserError(f"{tar_path}: refusing entry {name} (the name {why})")
            parts = Path(m.name).parts
            if not parts or m.name.startswith(("/", "\\")) or Path(m.name).is_absolute():
                raise UserError(f"{tar_path}: refusing entry {name} (path escapes the bundle)")
            if ".." in parts:
                raise UserError(f"{tar_path}: refusing entry {name} (path escapes the bundle)")
            if not (m.isfile() or m.isdir()):
                raise UserError(
                    f"{tar_path}: refusing entry {name} (links and devices are not allowed)"
                )
            declared += m.size
            if declared > limit:
                raise UserError(too_big)
            roots.add(parts[0])
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{tar_path} is truncated or corrupt ({exc})") from None
    return roots


def safe_extract(tar_path: Path, into: Path, max_gb: float | None = None) -> Path:
    """Extract a bundle tarball, refusing absolute paths, '..', links and device files, and
    anything that expands past `max_gb` (default MAX_EXTRACT_GB) or the free space under `into`."""
    max_gb = MAX_EXTRACT_GB if max_gb is None else max_gb
    limit, expanded = int(max_gb * 2**30), 0
    too_big = (
        f"{tar_path} expands to more than {max_gb:g} GB; if the bundle really is that "
        "large, raise the limit with --max-size-gb"
    )
    if max_gb <= 0:
        raise ValueError(f"max_gb must be positive, not {max_gb}")
    try:  # the whole stream, so a damaged byte anywhere fails its CRC before extraction
        with gzip.open(tar_path) as gz:
            while chunk := gz.read(1 << 20):
                expanded += len(chunk)
                if expanded > limit:  # a gzip bomb stops here, before anything is written
                    raise UserError(too_big)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{tar_path} is truncated or corrupt ({exc})") from None
    free = shutil.disk_usage(into).free
    if expanded > free:
        raise UserError(
            f"{tar_path} expands to {expanded / 2**30:.2f} GB but {into} has "
            f"{free / 2**30:.2f} GB free; set TMPDIR to a larger disk"
        )
    try:
        tar = tarfile.open(tar_path, "r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{tar_path} is not a readable .tar.gz ({exc})") from None
    with tar:
        roots = _checked_members(tar, tar_path, limit, too_big)
        if len(roots) != 1:
            raise UserError(
                f"{tar_path}: a bundle tarball holds one top folder, found {sorted(roots)}"
            )
        try:
            tar.extractall(into, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise UserError(f"{tar_path}: cannot extract ({exc}); the tarball is damaged") from None
    return into / roots.pop()


PREPROCESS_SRC = SHIPPED / "preprocess.py"
# every bundle; runtime.py and its siblings besides
BUNDLE_CODE = ("predict.py", "selftest.py", "integrity.py")


def install_code(t: Target, dest: Path) -> dict[str, str]:
    """Copy the code a bundle runs into `dest`, verbatim: the target's runtime.py, the shipped
    modules it imports, preprocess.py, predict.py, selftest.py and integrity.py. Returns {file:
    sha256}."""
    sources = {
        "runtime.py": t.runtime_source(),
        "preprocess.py": PREPROCESS_SRC,
        **{name: SHIPPED / name for name in (*t.shipped, *BUNDLE_CODE)},
    }
    for name, src in sources.items():
        shutil.copyfile(src, dest / name)
    (dest / "predict.py").chmod(0o755)
    return {name: file_sha256(dest / name) for name in sorted(sources)}
