"""A content-addressed cache of build work: conversions, INT8 calibrations (and engines, such as
TensorRT timing caches) and validation results, so a rebuild redoes only what changed.

An entry is a folder of files stored under a key: the sha256 of a canonical JSON of everything
that decides the result (model sha256, the target's typed Options, preprocessing, calibration
data hash, runtime and converter versions, packager version, the target's conversion code hash).
The cache never interprets the parts; the caller chooses them. Validation results are evidence
about one artifact on one runtime on one data set, so they may be reused only when all three are
byte-identical: the caller enforces that by putting the artifact, runtime and data hashes in the
key, and any other change gives another key, hence a miss and a fresh validation.

Layout: ROOT/<kind>/<key>/{index.json, files/...}. index.json records each file's sha256 and size;
a mismatch on `get` is a miss plus a warning, and the entry is removed: never a wrong artifact.
`put` writes into ROOT/.tmp-*, then renames the folder into place (atomic on one filesystem)
under an fcntl lock per key (ROOT/.locks/), so concurrent builds share the cache safely. `get`
touches index.json, whose mtime is the last use that `prune` orders by.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from packager.core.errors import UserError

KINDS = (
    "conversion",
    "calibration",
    "validation",
    "benchmark",
)  # in use; any plain lowercase name is allowed
INDEX = "index.json"
FILES = "files"
TMP_PREFIX = ".tmp-"
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_KEY = re.compile(r"[0-9a-f]{16,128}")  # keys become folder names: hex only, no path tricks


class CacheCorruptWarning(UserWarning):
    """A stored entry failed its checksums; it was removed and treated as a miss."""


@dataclass(frozen=True)
class Entry:
    key: str
    kind: str
    created: str  # UTC, ISO 8601
    size: int  # bytes of the stored files
    meta: dict[str, Any]
    last_used: float  # epoch seconds (mtime of index.json)


def cache_root() -> Path:
    """$PACKAGER_CACHE, or ~/.cache/packager."""
    env = os.environ.get("PACKAGER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "packager"


def cache_key(parts: Mapping[str, object]) -> str:
    """sha256 of the parts as canonical JSON (sorted keys, no spaces): dict order does not matter,
    any changed value does. Values must be JSON types; a model object or path is refused rather
    than silently stringified, so pass its dump or its hash."""
    for name, value in parts.items():
        if not isinstance(name, str):
            raise TypeError(f"cache_key: part name {name!r} is not a str")
        try:
            _canonical(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"cache_key: part {name!r} is not JSON-able ({exc}); pass str, int, float, bool, "
                "None, list or dict (e.g. a hash or Options.model_dump(mode='json'))"
            ) from None
    return hashlib.sha256(_canonical(dict(parts)).encode()).hexdigest()


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _listing(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


class Cache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root()
        try:
            (self.root / ".locks").mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.root).close()
        except OSError as exc:
            raise UserError(
                f"cache directory {self.root} is not writable ({exc.strerror or exc}): "
                "set PACKAGER_CACHE to a writable directory"
            ) from None

    def get(self, kind: str, key: str, dest: Path) -> Entry | None:
        """Copy the entry's files into the folder dest and return its metadata, or None on a miss
        (absent, or corrupt: then it is removed with a CacheCorruptWarning)."""
        folder = self._folder(kind, key)
        with self._lock(kind, key, exclusive=False):
            if not folder.is_dir():
                return None
            problem = self._check(folder)
            if problem is None:
                Path(dest).mkdir(parents=True, exist_ok=True)
                shutil.copytree(folder / FILES, dest, dirs_exist_ok=True)
                os.utime(folder / INDEX)  # last use, for prune
                return self._entry(folder)
        with self._lock(kind, key, exclusive=True):
            # Re-check under the exclusive lock: a concurrent put may have replaced it meanwhile.
            if folder.is_dir() and self._check(folder) is not None:
                self._remove(folder)
        warnings.warn(
            f"cache entry {kind}/{key} is corrupt ({problem}); removed it, rebuilding",
            CacheCorruptWarning,
            stacklevel=2,
        )
        return None

    def put(self, kind: str, key: str, src: Path, meta: dict[str, Any]) -> Entry:
        """Store the files of the folder src under key and return the stored entry. If a valid
        entry for key exists (another build got there first), it is kept and returned."""
        folder = self._folder(kind, key)
        _canonical(meta)  # refuse a meta that cannot be written, before any work
        with self._lock(kind, key, exclusive=True):
            if folder.is_dir():
                if self._check(folder) is None:
                    return self._entry(folder)
                self._remove(folder)
            tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.root))
            try:
                shutil.copytree(src, tmp / FILES)
                files = {
                    name: {"sha256": _sha256(p), "size": p.stat().st_size}
                    for name, p in _listing(tmp / FILES).items()
                }
                created = datetime.now(timezone.utc).isoformat(timespec="seconds")
                index = {"key": key, "kind": kind, "created": created, "meta": meta, "files": files}
                (tmp / INDEX).write_text(json.dumps(index, indent=1, sort_keys=True))
                folder.parent.mkdir(exist_ok=True)
                os.rename(tmp, folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)  # gone already unless something failed
        return self._entry(folder)

    def ls(self) -> list[Entry]:
        """Every entry, oldest use first (not checksummed: `get` does that)."""
        entries = []
        for folder in self.root.glob("*/*"):
            if folder.parent.name.startswith(".") or not (folder / INDEX).is_file():
                continue
            try:
                entries.append(self._entry(folder))
            except (OSError, ValueError, KeyError):
                continue  # being removed, or a damaged index: get() will report it
        return sorted(entries, key=lambda e: e.last_used)

    def prune(
        self, older_than_days: float | None = None, max_bytes: int | None = None
    ) -> list[Entry]:
        """Remove entries not used for older_than_days, then least-recently-used entries until
        the total size is at most max_bytes. Returns the removed entries."""
        now = time.time()
        doomed: list[Entry] = []
        kept = self.ls()
        if older_than_days is not None:
            cutoff = now - older_than_days * 86400
            doomed = [e for e in kept if e.last_used < cutoff]
            kept = [e for e in kept if e.last_used >= cutoff]
        if max_bytes is not None:
            total = sum(e.size for e in kept)
            while kept and total > max_bytes:
                total -= kept[0].size
                doomed.append(kept.pop(0))
        for e in doomed:
            with self._lock(e.kind, e.key, exclusive=True):
                self._remove(self._folder(e.kind, e.key))
        for tmp in self.root.glob(TMP_PREFIX + "*"):  # left by a killed build, a day ago or more
            with contextlib.suppress(FileNotFoundError):  # a concurrent put renamed it in place
                if tmp.stat().st_mtime < now - 86400:
                    shutil.rmtree(tmp, ignore_errors=True)
        return doomed

    def clear(self) -> int:
        """Remove every entry; returns how many."""
        entries = self.ls()
        for e in entries:
            with self._lock(e.kind, e.key, exclusive=True):
                self._remove(self._folder(e.kind, e.key))
        return len(entries)

    def _folder(self, kind: str, key: str) -> Path:
        if not _NAME.fullmatch(kind):
            raise ValueError(f"cache kind {kind!r}: use a plain lowercase name, e.g. {KINDS[0]!r}")
        if not _KEY.fullmatch(key):
            raise ValueError(f"cache key {key!r}: use cache_key(), a lowercase hex digest")
        return self.root / kind / key

    @contextmanager
    def _lock(self, kind: str, key: str, exclusive: bool) -> Iterator[None]:
        # Lock files live apart from the entries and are never deleted: an unlinked lock file
        # no longer excludes anyone.
        with open(self.root / ".locks" / f"{kind}-{key}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _check(self, folder: Path) -> str | None:
        """None if every file matches index.json, else what is wrong (one short phrase)."""
        try:
            files = json.loads((folder / INDEX).read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"unreadable {INDEX}: {exc}"
        present = _listing(folder / FILES)
        if set(present) != set(files):
            return f"files differ from {INDEX}: {sorted(set(present) ^ set(files))[:3]}"
        for name, p in present.items():
            if _sha256(p) != files[name]["sha256"]:
                return f"checksum mismatch in {name}"
        return None

    def _entry(self, folder: Path) -> Entry:
        index = json.loads((folder / INDEX).read_text())
        return Entry(
            key=index["key"],
            kind=index["kind"],
            created=index["created"],
            size=sum(f["size"] for f in index["files"].values()),
            meta=index["meta"],
            last_used=(folder / INDEX).stat().st_mtime,
        )

    def _remove(self, folder: Path) -> None:
        # Rename first, so no reader ever sees a half-deleted entry.
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.root))
        with suppress(FileNotFoundError):
            os.rename(folder, tmp / "entry")
        shutil.rmtree(tmp, ignore_errors=True)
