"""The build cache's locking, atomic writes and maintenance (packager/builder/cache.py), checked
from outside: which lock a step holds is read with fcntl on the documented lock file, the
atomic write is watched at its rename, stored files are re-hashed with hashlib, and races with
another build are played in the gap between two steps. Fast and in-process (docs/mutation.md)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from packager.builder.cache import Cache, CacheCorruptWarning, cache_key
from packager.core.errors import UserError

KIND = "conversion"
KEY = hashlib.sha256(b"entry").hexdigest()


def lock_state(root: Path, kind: str, key: str) -> str:
    """'exclusive', 'shared' or 'none': what another process would find on the entry's lock."""
    with open(root / ".locks" / f"{kind}-{key}.lock", "a") as f:
        for mode, held in ((fcntl.LOCK_SH, "exclusive"), (fcntl.LOCK_EX, "shared")):
            try:
                fcntl.flock(f, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                return held
            fcntl.flock(f, fcntl.LOCK_UN)
    return "none"


class Probed(Cache):
    """Notes the lock held on the entry whenever it is checked or removed."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.seen: list[tuple[str, str]] = []

    def _check(self, folder: Path) -> str | None:
        self.seen.append(("check", lock_state(self.root, folder.parent.name, folder.name)))
        return super()._check(folder)

    def _remove(self, folder: Path) -> None:
        self.seen.append(("remove", lock_state(self.root, folder.parent.name, folder.name)))
        super()._remove(folder)


def src_with(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


FILES = {"model.onnx": b"\x08\x07" * 500, "sub/calib.json": b'{"n": 3}'}


def stored(root: Path, kind: str = KIND) -> list[str]:
    return sorted(os.listdir(root / kind)) if (root / kind).exists() else []


def temp_dirs(root: Path) -> list[str]:
    return [n for n in os.listdir(root) if n.startswith(".tmp-")]


def corrupt(root: Path, key: str = KEY) -> None:
    (root / KIND / key / "files" / "model.onnx").write_bytes(b"not the model")


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def read_only(path: Path, on: bool) -> bool:
    """Make a folder read-only, or writable again: its mode for a user, the immutable flag for
    root (to whom modes do not apply). False where that cannot be done."""
    if os.geteuid():
        path.chmod(0o555 if on else 0o755)
        return True
    flag = "+i" if on else "-i"
    return subprocess.run(["chattr", flag, path], capture_output=True).returncode == 0


@contextmanager
def undeletable(folder: Path, now_at: Callable[[], Path] | None = None) -> Iterator[None]:
    """No entry of `folder` can be created or removed meanwhile; `now_at` finds it if it moves."""
    if not read_only(folder, True):
        pytest.skip("cannot make a folder read-only here (root without chattr)")
    try:
        try:
            (folder / "probe").touch()
        except PermissionError:
            yield
        else:
            pytest.skip("a read-only folder is writable here")
    finally:
        assert read_only(now_at() if now_at else folder, False)


def test_a_part_name_must_be_a_str() -> None:
    with pytest.raises(TypeError, match=r"^cache_key: part name 1 is not a str$"):
        cache_key({1: "x"})  # type: ignore[dict-item]


def test_a_non_json_part_says_what_to_pass() -> None:
    with pytest.raises(TypeError) as err:
        cache_key({"options": {"x": float("inf")}})
    assert re.fullmatch(
        r"cache_key: part 'options' is not JSON-able \(.+\); pass str, int, float, bool, None, "
        r"list or dict \(e\.g\. a hash or Options\.model_dump\(mode='json'\)\)",
        str(err.value),
    )


def test_a_given_root_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PACKAGER_CACHE", str(tmp_path / "env"))
    cache = Cache(tmp_path / "given")
    cache.put(KIND, KEY, src_with(tmp_path / "src", FILES), {})
    assert cache.root == tmp_path / "given"
    assert stored(tmp_path / "given") == [KEY] and not (tmp_path / "env").exists()


def test_an_unusable_root_names_the_reason_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    root = tmp_path / "a-file" / "cache"
    with pytest.raises(UserError) as err:
        Cache(root)
    reason = os.strerror(errno.ENOTDIR)
    assert str(err.value) == (
        f"cache directory {root} is not writable ({reason}): "
        "set PACKAGER_CACHE to a writable directory"
    )


def test_a_read_only_root_is_refused_at_once(tmp_path: Path) -> None:
    """The write probe runs in the cache root itself (its lock folder exists already)."""
    root = tmp_path / "cache"
    Cache(root)
    with undeletable(root), pytest.raises(UserError, match="is not writable"):
        Cache(root)


def test_get_reads_under_a_shared_lock(tmp_path: Path) -> None:
    cache = Probed(tmp_path / "cache")
    cache.put(KIND, KEY, src_with(tmp_path / "src", FILES), {})
    cache.seen.clear()
    assert cache.get(KIND, KEY, tmp_path / "dest") is not None
    assert cache.seen == [("check", "shared")]


def test_a_corrupt_entry_is_removed_under_the_exclusive_lock(tmp_path: Path) -> None:
    cache = Probed(tmp_path / "cache")
    cache.put(KIND, KEY, src_with(tmp_path / "src", FILES), {})
    corrupt(cache.root)
    cache.seen.clear()
    with pytest.warns(CacheCorruptWarning) as record:
        assert cache.get(KIND, KEY, tmp_path / "dest") is None
    assert cache.seen == [("check", "shared"), ("check", "exclusive"), ("remove", "exclusive")]
    assert len(record) == 1


def test_put_replaces_a_corrupt_entry_under_the_exclusive_lock(tmp_path: Path) -> None:
    cache = Probed(tmp_path / "cache")
    cache.put(KIND, KEY, src_with(tmp_path / "old", {"model.onnx": b"old"}), {"v": 1})
    corrupt(cache.root)
    cache.seen.clear()
    assert cache.put(KIND, KEY, src_with(tmp_path / "new", FILES), {"v": 2}).meta == {"v": 2}
    assert cache.seen == [("check", "exclusive"), ("remove", "exclusive")]
    assert tree(cache.root / KIND / KEY / "files") == FILES
    cache.seen.clear()
    assert cache.put(KIND, KEY, tmp_path / "old", {"v": 3}).meta == {"v": 2}  # valid: kept
    assert cache.seen == [("check", "exclusive")]


@pytest.mark.parametrize("how", ["prune", "clear"])
def test_prune_and_clear_remove_under_the_exclusive_lock(tmp_path: Path, how: str) -> None:
    cache = Probed(tmp_path / "cache")
    cache.put(KIND, KEY, src_with(tmp_path / "src", FILES), {})
    cache.seen.clear()
    if how == "prune":
        cache.prune(max_bytes=0)
    else:
        cache.clear()
    assert cache.seen == [("remove", "exclusive")] and stored(cache.root) == []


@pytest.mark.parametrize("dest", ["a/b/dest", "existing"])
def test_get_into_a_new_nested_or_an_existing_folder(tmp_path: Path, dest: str) -> None:
    cache = Cache(tmp_path / "cache")
    cache.put(KIND, KEY, src_with(tmp_path / "src", FILES), {})
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "other.txt").write_bytes(b"kept")
    assert cache.get(KIND, KEY, tmp_path / dest) is not None
    got = tree(tmp_path / dest)
    assert {n: got[n] for n in FILES} == FILES


class LosesTheRace(Cache):
    """get() finds the entry corrupt; before it takes the exclusive lock, another build puts a
    valid entry under the same key (it holds the lock first)."""

    def __init__(self, root: Path, other_src: Path) -> None:
        super().__init__(root)
        self.other_src: Path | None = other_src

    @contextmanager
    def _lock(self, kind: str, key: str, exclusive: bool) -> Iterator[None]:
        if exclusive and self.other_src is not None:
            Cache(self.root).put(kind, key, self.other_src, {"by": "other build"})
            self.other_src = None
        with super()._lock(kind, key, exclusive):
            yield


def test_get_keeps_a_valid_entry_another_build_put_meanwhile(tmp_path: Path) -> None:
    cache = LosesTheRace(tmp_path / "cache", src_with(tmp_path / "other", FILES))
    Cache(cache.root).put(KIND, KEY, src_with(tmp_path / "first", {"model.onnx": b"1"}), {})
    corrupt(cache.root)
    with pytest.warns(CacheCorruptWarning):
        assert cache.get(KIND, KEY, tmp_path / "dest") is None
    entry = Cache(cache.root).get(KIND, KEY, tmp_path / "again")
    assert entry is not None and entry.meta == {"by": "other build"}
    assert tree(tmp_path / "again") == FILES


def test_a_meta_that_json_cannot_write_exactly_is_refused_before_any_work(tmp_path: Path) -> None:
    """NaN would be written into index.json as a bare NaN (not JSON); refused, even when the
    entry exists already."""
    cache = Cache(tmp_path / "cache")
    src = src_with(tmp_path / "src", FILES)
    with pytest.raises(ValueError):
        cache.put(KIND, KEY, src, {"score": float("nan")})
    assert stored(cache.root) == [] and temp_dirs(cache.root) == []
    cache.put(KIND, KEY, src, {})
    with pytest.raises(ValueError):
        cache.put(KIND, KEY, src, {"score": float("nan")})


def test_a_failed_put_leaves_nothing(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    with pytest.raises(FileNotFoundError):
        cache.put(KIND, KEY, tmp_path / "no-such-folder", {})
    assert stored(cache.root) == [] and temp_dirs(cache.root) == []


def test_put_and_remove_rename_whole_folders_within_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """put() builds the entry in ROOT/.tmp-* and renames it into place when complete (no reader
    sees a partial entry); removal renames it out into ROOT/.tmp-* first."""
    cache = Cache(tmp_path / "cache")
    real_rename, seen = os.rename, []

    def watch(src: Any, dst: Any) -> None:
        src, dst = Path(src), Path(dst)
        index = json.loads((src / "index.json").read_text())
        seen.append((src, dst, dst.exists(), index["files"]))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", watch)
    cache.put(KIND, KEY, src_with(tmp_path / "src", FILES), {})
    cache.clear()
    (put_src, put_dst, existed, files), (rm_src, rm_dst, _, _) = seen
    assert put_src.parent == cache.root and put_src.name.startswith(".tmp-")
    assert put_dst == cache.root / KIND / KEY and not existed
    assert files == {
        n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in FILES.items()
    }
    assert rm_src == put_dst
    assert rm_dst.parent.parent == cache.root and rm_dst.parent.name.startswith(".tmp-")
    assert temp_dirs(cache.root) == []


def test_ls_lists_every_whole_entry_past_damaged_ones(tmp_path: Path) -> None:
    """In every kind folder: one whole entry, one with no index.json, one whose index.json is
    not JSON; and a removal cut short (ROOT/.tmp-*/entry, index.json and all)."""
    cache = Cache(tmp_path / "cache")
    src = src_with(tmp_path / "src", FILES)
    kinds = ("conversion", "calibration", "validation")
    for kind in kinds:
        cache.put(kind, KEY, src, {"kind": kind})
        (cache.root / kind / ("0" * 64)).mkdir()
        cache.put(kind, "f" * 64, src, {})
        (cache.root / kind / ("f" * 64) / "index.json").write_text("{cut")
    shutil.copytree(cache.root / KIND / KEY, cache.root / ".tmp-killed" / "entry")
    assert sorted(e.meta["kind"] for e in cache.ls()) == sorted(kinds)


def aged(path: Path, age_s: float, now: float) -> None:
    os.utime(path, (now - age_s, now - age_s))


def put_sized(cache: Cache, tmp_path: Path, name: str, size: int) -> str:
    key = hashlib.sha256(name.encode()).hexdigest()
    cache.put(KIND, key, src_with(tmp_path / name, {"f": b"x" * size}), {"name": name})
    return key


NOW = 1_700_000_000.0  # prune's clock, pinned so entries can sit exactly on its cut-offs


@pytest.fixture
def pinned_clock(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(time, "time", lambda: NOW)
    return NOW


def test_prune_by_size_counts_the_bytes_it_removed(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    keys = [put_sized(cache, tmp_path, n, s) for n, s in (("a", 100), ("b", 100), ("c", 1000))]
    for age, key in zip((300, 200, 100), keys, strict=True):
        aged(cache.root / KIND / key / "index.json", age, time.time())
    assert [e.key for e in cache.prune(max_bytes=1000)] == keys[:2]  # 1200 -> 1100 -> 1000


def test_prune_at_the_age_cutoff_keeps_and_counts_the_entry(
    tmp_path: Path, pinned_clock: float
) -> None:
    cache = Cache(tmp_path / "cache")
    edge, past = put_sized(cache, tmp_path, "edge", 10), put_sized(cache, tmp_path, "past", 10)
    aged(cache.root / KIND / edge / "index.json", 3 * 86400, pinned_clock)
    aged(cache.root / KIND / past / "index.json", 3 * 86400 + 1, pinned_clock)
    assert [e.key for e in cache.prune(older_than_days=3)] == [past]
    assert stored(cache.root) == [edge]
    assert [e.key for e in cache.prune(older_than_days=3, max_bytes=0)] == [edge]


def test_prune_removes_temp_folders_left_a_day_ago_or_more(
    tmp_path: Path, pinned_clock: float
) -> None:
    cache = Cache(tmp_path / "cache")
    for name, age in ((".tmp-old", 86400.5), (".tmp-edge", 86400), (".tmp-new", 10), ("x", 1e6)):
        src_with(cache.root / name, {"files/f": b"x"})
        aged(cache.root / name, age, pinned_clock)
    cache.prune()
    assert sorted(n for n in os.listdir(cache.root) if n != ".locks") == [
        ".tmp-edge",
        ".tmp-new",
        "x",
    ]


def test_a_stale_temp_folder_that_cannot_be_removed_does_not_stop_prune(
    tmp_path: Path, pinned_clock: float
) -> None:
    cache = Cache(tmp_path / "cache")
    key = put_sized(cache, tmp_path, "a", 10)
    src_with(cache.root / ".tmp-stuck", {"files/f": b"x"})
    aged(cache.root / ".tmp-stuck", 2 * 86400, pinned_clock)
    with undeletable(cache.root / ".tmp-stuck" / "files"):
        assert [e.key for e in cache.prune(max_bytes=0)] == [key]


def test_clear_of_an_entry_that_cannot_be_deleted_still_takes_it_out(tmp_path: Path) -> None:
    """Removal renames the entry out first, so it is gone from the cache even if deleting its
    files then fails (prune retries that a day later)."""
    cache = Cache(tmp_path / "cache")
    cache.put(KIND, KEY, src_with(tmp_path / "src", FILES), {})
    stuck = cache.root / KIND / KEY / "files" / "sub"

    def now_at() -> Path:
        moved = list(cache.root.glob(".tmp-*/entry/files/sub"))
        return moved[0] if moved else stuck

    with undeletable(stuck, now_at):
        assert cache.clear() == 1
        assert stored(cache.root) == [] and cache.ls() == []


class ClearedMeanwhile(Cache):
    """Another `packager cache clear` empties the cache just after this one listed it."""

    def ls(self) -> list[Any]:
        entries = super().ls()
        Cache(self.root).clear()
        return entries


def test_two_clears_at_once_do_not_fail(tmp_path: Path) -> None:
    cache = ClearedMeanwhile(tmp_path / "cache")
    Cache(cache.root).put(KIND, KEY, src_with(tmp_path / "src", FILES), {})
    assert cache.clear() == 1
    assert stored(cache.root) == [] and temp_dirs(cache.root) == []


def test_bad_kinds_and_keys_say_what_to_use(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    with pytest.raises(ValueError) as err:
        cache.get("../x", KEY, tmp_path)
    assert str(err.value) == "cache kind '../x': use a plain lowercase name, e.g. 'conversion'"
    with pytest.raises(ValueError) as err:
        cache.get(KIND, "ABC", tmp_path)
    assert str(err.value) == "cache key 'ABC': use cache_key(), a lowercase hex digest"


def test_a_corrupt_entry_names_the_files_that_differ(tmp_path: Path) -> None:
    """The first three names, sorted, of those present but not indexed or indexed but gone."""
    cache = Cache(tmp_path / "cache")
    cache.put(KIND, KEY, src_with(tmp_path / "src", FILES), {})
    files = cache.root / KIND / KEY / "files"
    (files / "sub" / "calib.json").unlink()
    for name in ("x1", "x2", "x3"):
        (files / name).write_bytes(b"")
    with pytest.warns(CacheCorruptWarning) as record:
        cache.get(KIND, KEY, tmp_path / "dest")
    assert str(record[0].message).endswith(
        "(files differ from index.json: ['sub/calib.json', 'x1', 'x2']); removed it, rebuilding"
    )


def test_prune_survives_a_temporary_folder_renamed_in_place_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put renames its .tmp- folder into place between prune's listing and its look at the
    folder's age: prune goes on (no FileNotFoundError), and an old leftover is still removed."""
    cache = Cache(tmp_path)
    old = tmp_path / ".tmp-old"
    old.mkdir()
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    gone = tmp_path / ".tmp-renamed"  # listed, then gone before its stat
    listing = Path.glob

    def glob(self: Path, pattern: str) -> Iterator[Path]:
        found = list(listing(self, pattern))
        return iter([gone, *found] if pattern.startswith(".tmp-") else found)

    monkeypatch.setattr(Path, "glob", glob)
    cache.prune(older_than_days=1)
    assert not old.exists()
