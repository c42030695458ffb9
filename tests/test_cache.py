"""packager/cache.py against independent checks: keys recomputed with hashlib from literal JSON
bytes, stored files compared byte for byte and re-hashed, the cache root inspected with
os.listdir. Corrupt entries are misses with a warning and are removed; two processes putting the
same key leave one whole entry and no temp folders."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from packager.builder.cache import Cache, CacheCorruptWarning, Entry, cache_key, cache_root
from packager.core.errors import UserError

KIND = "conversion"


def make_src(folder: Path, seed: int, size: int = 4096) -> dict[str, bytes]:
    """A folder with a nested binary file and a text file; returns {relative name: bytes}."""
    rng = random.Random(seed)
    files = {
        "model.onnx": rng.randbytes(size),
        "sub/calib.json": json.dumps({"seed": seed}).encode(),
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def read_tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def key_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def no_temp_dirs(root: Path) -> bool:
    return not [n for n in os.listdir(root) if n.startswith(".tmp")]


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache")


def test_root_is_the_env_var_or_home_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PACKAGER_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert Cache().root == tmp_path / "c"
    monkeypatch.delenv("PACKAGER_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "packager"


def test_key_is_sha256_of_sorted_compact_json() -> None:
    parts = {"model": "ab" * 32, "options": {"int8": True, "batch": 1}, "versions": ["ov 2024.6"]}
    literal = (
        '{"model":"' + "ab" * 32 + '","options":{"batch":1,"int8":true},"versions":["ov 2024.6"]}'
    )
    assert cache_key(parts) == key_of(literal)


def test_a_changed_part_changes_the_key_and_reordering_does_not() -> None:
    parts: dict[str, Any] = {"model": "m1", "options": {"int8": True, "batch": 1}, "runtime": "1.2"}
    key = cache_key(parts)
    reordered = {"runtime": "1.2", "options": {"batch": 1, "int8": True}, "model": "m1"}
    assert cache_key(reordered) == key
    for name, value in [
        ("model", "m2"),
        ("runtime", "1.3"),
        ("options", {"int8": False, "batch": 1}),
    ]:
        assert cache_key({**parts, name: value}) != key, name
    assert cache_key({**parts, "calibration": None}) != key  # an added part counts too


@pytest.mark.parametrize("bad", [Path("/x"), object(), {1, 2}, float("nan"), b"bytes"])
def test_a_non_json_part_is_refused_naming_it(bad: object) -> None:
    with pytest.raises(TypeError, match="part 'options' is not JSON-able"):
        cache_key({"model": "m", "options": {"inner": [bad]}})


def test_round_trip(cache: Cache, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = make_src(src, seed=1)
    key = cache_key({"model": "m"})
    before = datetime.now(timezone.utc) - timedelta(seconds=2)
    stored = cache.put(KIND, key, src, {"converter": "ovc 2024.6"})
    dest = tmp_path / "dest"
    got = cache.get(KIND, key, dest)

    assert isinstance(got, Entry)
    assert read_tree(dest) == files
    assert (got.key, got.kind, got.meta) == (key, KIND, {"converter": "ovc 2024.6"})
    assert got.size == sum(len(b) for b in files.values()) == stored.size
    created = datetime.fromisoformat(got.created)
    assert created.utcoffset() == timedelta(0)
    assert before <= created <= datetime.now(timezone.utc)
    index = json.loads((cache.root / KIND / key / "index.json").read_text())
    assert {n: f["sha256"] for n, f in index["files"].items()} == {
        n: hashlib.sha256(b).hexdigest() for n, b in files.items()
    }
    assert os.listdir(cache.root / KIND) == [key]
    assert no_temp_dirs(cache.root)
    assert [e.key for e in cache.ls()] == [key]


def test_a_miss_returns_none_and_writes_nothing(cache: Cache, tmp_path: Path) -> None:
    assert cache.get(KIND, key_of("absent"), tmp_path / "dest") is None
    assert not (tmp_path / "dest").exists()


def test_an_existing_entry_is_kept(cache: Cache, tmp_path: Path) -> None:
    make_src(tmp_path / "a", seed=1)
    files_b = make_src(tmp_path / "b", seed=2)
    key = key_of("k")
    cache.put(KIND, key, tmp_path / "a", {"w": "a"})
    assert cache.put(KIND, key, tmp_path / "b", {"w": "b"}).meta == {"w": "a"}
    assert cache.get(KIND, key, tmp_path / "dest") is not None
    assert read_tree(tmp_path / "dest") != files_b


def flip_byte(entry: Path) -> None:
    p = entry / "files" / "model.onnx"
    data = bytearray(p.read_bytes())
    data[100] ^= 0x01
    p.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        flip_byte,
        lambda e: (e / "files" / "sub" / "calib.json").unlink(),
        lambda e: (e / "files" / "extra.bin").write_bytes(b"x"),
        lambda e: (e / "index.json").write_text("{not json"),
    ],
    ids=["flipped-byte", "missing-file", "extra-file", "bad-index"],
)
def test_a_corrupt_entry_is_a_miss_with_a_warning_and_is_removed(
    cache: Cache, tmp_path: Path, damage: Any
) -> None:
    files = make_src(tmp_path / "src", seed=3)
    key = key_of("corrupt")
    cache.put(KIND, key, tmp_path / "src", {})
    damage(cache.root / KIND / key)
    with pytest.warns(CacheCorruptWarning, match=key) as record:
        assert cache.get(KIND, key, tmp_path / "dest") is None
    assert len(str(record[0].message).splitlines()) == 1
    assert os.listdir(cache.root / KIND) == []
    assert not (tmp_path / "dest").exists()  # nothing of the bad entry was handed out
    assert no_temp_dirs(cache.root)
    cache.put(KIND, key, tmp_path / "src", {})  # rebuilt
    assert cache.get(KIND, key, tmp_path / "dest") is not None
    assert read_tree(tmp_path / "dest") == files


def _concurrent_put(root: str, src: str, writer: int, barrier: Any, out: Any) -> None:
    barrier.wait()
    entry = Cache(Path(root)).put(KIND, key_of("shared"), Path(src), {"writer": writer})
    out.put(entry.meta["writer"])


def test_concurrent_puts_of_one_key_leave_one_whole_entry(cache: Cache, tmp_path: Path) -> None:
    srcs = [tmp_path / f"src{i}" for i in range(2)]
    trees = [make_src(s, seed=10 + i, size=8 << 20) for i, s in enumerate(srcs)]
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_concurrent_put, args=(str(cache.root), str(s), i, barrier, out))
        for i, s in enumerate(srcs)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0  # a racing rename onto the other's entry would raise here
    winners = [out.get(timeout=5) for _ in procs]
    key = key_of("shared")
    assert os.listdir(cache.root / KIND) == [key]
    assert no_temp_dirs(cache.root)
    assert winners[0] == winners[1]  # the loser got the winner's entry back
    stored = read_tree(cache.root / KIND / key / "files")
    assert stored == trees[winners[0]]  # whole, from one writer, not a mix
    index = json.loads((cache.root / KIND / key / "index.json").read_text())
    assert index["meta"] == {"writer": winners[0]}
    assert all(
        index["files"][n]["sha256"] == hashlib.sha256(b).hexdigest() for n, b in stored.items()
    )


def fill(cache: Cache, tmp_path: Path, ages_s: dict[str, float]) -> dict[str, str]:
    """One entry per name, last used ages_s[name] seconds ago; returns {name: key}."""
    keys = {}
    for i, (name, age) in enumerate(ages_s.items()):
        src = tmp_path / f"src-{name}"
        make_src(src, seed=i, size=1000)
        keys[name] = key_of(name)
        cache.put(KIND, keys[name], src, {"name": name})
        t = time.time() - age
        os.utime(cache.root / KIND / keys[name] / "index.json", (t, t))
    return keys


def test_prune_by_age_removes_entries_unused_that_long(cache: Cache, tmp_path: Path) -> None:
    keys = fill(cache, tmp_path, {"old": 10 * 86400, "older": 5 * 86400, "new": 1 * 86400})
    removed = cache.prune(older_than_days=3)
    assert {e.key for e in removed} == {keys["old"], keys["older"]}
    assert os.listdir(cache.root / KIND) == [keys["new"]]


def test_prune_by_size_removes_least_recently_used_first(cache: Cache, tmp_path: Path) -> None:
    keys = fill(cache, tmp_path, {"a": 300, "b": 200, "c": 100})
    assert cache.get(KIND, keys["a"], tmp_path / "dest") is not None  # a is now the newest use
    size = cache.ls()[0].size
    assert size == 1000 + len(json.dumps({"seed": 0}).encode())
    removed = cache.prune(max_bytes=2 * size)
    assert [e.key for e in removed] == [keys["b"]]
    assert sorted(os.listdir(cache.root / KIND)) == sorted([keys["a"], keys["c"]])
    assert [e.key for e in cache.prune(max_bytes=0)] == [keys["c"], keys["a"]]


def test_clear_empties_the_cache(cache: Cache, tmp_path: Path) -> None:
    fill(cache, tmp_path, {"a": 0, "b": 0, "c": 0})
    assert cache.clear() == 3
    assert os.listdir(cache.root / KIND) == []
    assert cache.ls() == []
    assert no_temp_dirs(cache.root)


def test_an_unwritable_cache_is_a_one_line_user_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("PACKAGER_CACHE", str(blocker / "cache"))
    with pytest.raises(UserError) as err:
        Cache()
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert str(blocker / "cache") in message
    assert "set PACKAGER_CACHE to a writable directory" in message
    assert err.value.exit_code == 2


@pytest.mark.parametrize("kind,key", [(KIND, "../../etc"), (KIND, "ABC" * 10), ("../x", "ab" * 32)])
def test_keys_and_kinds_cannot_escape_the_root(
    cache: Cache, kind: str, key: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError):
        cache.get(kind, key, tmp_path / "dest")


def _bench(noisy: bool | None = False, stable: tuple[bool, ...] = (True, True)) -> dict:
    state = None if noisy is None else {"noisy": noisy}
    return {"host_state": state, "batches": [{"stable": s} for s in stable]}


def test_only_a_quiet_settled_benchmark_is_reused_by_default() -> None:
    from packager.builder.reuse import settled

    ok = {"status": "ok", **_bench(), "variants": [_bench()]}
    assert settled(ok)
    assert not settled(ok | {"status": "skipped"})
    assert not settled(ok | _bench(noisy=True))  # the main run on a busy host
    assert not settled(ok | _bench(noisy=None))  # host state unknown: not known quiet
    assert not settled(ok | _bench(stable=(True, False)))  # one window never settled
    assert not settled(ok | {"variants": [_bench(), _bench(noisy=True)]})  # a variant busy
    assert not settled(ok | {"variants": [_bench(stable=(False,))]})
    assert settled(ok | {"variants": []})
