"""`packager verify` on real bundles and on hostile ones: tampered folders fail (exit 1, naming
the file); tarballs with absolute paths, '..', links or device files are refused (exit 2) and
nothing is ever written outside a temporary folder that is removed afterwards."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

import packager.builder.bundle as bundle_mod
from packager.core.errors import UserError
from tests.conftest import Result, assert_user_error

TARGET = "cpu-onnxruntime"


@pytest.fixture(scope="module")
def built(reference_bundle: Path) -> Path:
    """The folder holding one real bundle, {cpu-onnxruntime, cpu-onnxruntime.tar.gz}: the
    session's reference_bundle, read-only."""
    return reference_bundle.parent


@pytest.fixture
def bundle(built: Path, tmp_path: Path) -> Path:
    """A private copy of the bundle folder, free to damage."""
    return Path(shutil.copytree(built / TARGET, tmp_path / TARGET))


def verify_cli(*args: str | Path, cwd: Path) -> tuple[Result, list[str]]:
    """Run `packager verify` with its own TMPDIR; also return what it left there."""
    tmp = cwd / "verify-tmp"
    tmp.mkdir(exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "packager.cli", "verify", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
        timeout=120,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr), sorted(p.name for p in tmp.iterdir())


def test_real_bundle_verifies(built: Path, tmp_path: Path) -> None:
    for path in (built / TARGET, built / f"{TARGET}.tar.gz"):
        r, left = verify_cli(path, "--json", cwd=tmp_path)
        assert r.code == 0, r.stderr
        assert r.json["ok"] and r.json["files"] >= 8 and r.json["target"] == TARGET
        assert left == []


# ---------------------------------------------------------------------------------------------
# Tampered folders: exit 1 and the file named.


def change(b: Path) -> str:
    with open(b / "model.onnx", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    return "changed: model.onnx"


def add(b: Path) -> str:
    (b / "triton").mkdir()
    (b / "triton" / "extra.py").write_text("import os\n")
    return "added: triton/extra.py"


def remove(b: Path) -> str:
    (b / "report.html").unlink()
    return "missing: report.html"


def manifest_garbage(b: Path) -> str:
    (b / "manifest.json").write_text("{not json")
    return "manifest.json"


def manifest_relist(b: Path) -> str:
    """Edit a file and rewrite its hash in the manifest: the folder verifies without a key,
    which is why hospitals check the signature (test_signing)."""
    (b / "README.md").write_text("# replaced\n")
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["preprocess.py"]["sha256"] = "0" * 64
    (b / "manifest.json").write_text(json.dumps(m))
    return "changed: preprocess.py"


TAMPER: dict[str, Callable[[Path], str]] = {
    "byte_flipped": change,
    "file_added": add,
    "file_removed": remove,
    "manifest_not_json": manifest_garbage,
    "manifest_hash_edited": manifest_relist,
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_tampered_folder_fails(case: str, bundle: Path, tmp_path: Path) -> None:
    expected = TAMPER[case](bundle)
    r, _ = verify_cli(bundle, cwd=tmp_path)
    assert r.code == 1, (r.code, r.stderr)
    assert expected in r.stdout, r.stdout
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_link_in_folder_is_refused(bundle: Path, tmp_path: Path) -> None:
    (bundle / "model.onnx").unlink()
    (bundle / "model.onnx").symlink_to("/etc/hostname")
    r, _ = verify_cli(bundle, cwd=tmp_path)
    assert_user_error(r, "model.onnx", "link")


def test_fifo_in_folder_is_refused(bundle: Path, tmp_path: Path) -> None:
    os.mkfifo(bundle / "pipe")
    r, _ = verify_cli(bundle, cwd=tmp_path)  # must not block reading the pipe
    assert_user_error(r, "pipe", "plain files only")


def test_not_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert_user_error(verify_cli(tmp_path / "empty", cwd=tmp_path)[0], "no manifest.json")
    assert_user_error(verify_cli(tmp_path / "nothing", cwd=tmp_path)[0], "neither")


# ---------------------------------------------------------------------------------------------
# Hostile tarballs: the real bundle plus one evil entry.


def tar_with(built: Path, dest: Path, evil: Callable[[tarfile.TarFile], None]) -> Path:
    with tarfile.open(built / f"{TARGET}.tar.gz") as src, tarfile.open(dest, "w:gz") as out:
        for m in src.getmembers():
            out.addfile(m, src.extractfile(m) if m.isfile() else None)
        evil(out)
    return dest


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> Callable:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind, link, len(data)
        if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
        tar.addfile(info, io.BytesIO(data) if data else None)

    return add


def hostile(escape: Path) -> dict[str, tuple[Callable, str]]:
    """case -> (what it adds, a word of the refusal). `escape` is where an escape would land."""
    rel = os.path.relpath(escape, "/")
    return {
        "absolute_path": (entry(str(escape), data=b"pwned"), "escapes"),
        "dotdot": (entry(f"{TARGET}/../../{escape.name}", data=b"pwned"), "escapes"),
        "deep_dotdot": (entry("../" * 40 + rel, data=b"pwned"), "escapes"),
        "symlink_out": (entry(f"{TARGET}/link", tarfile.SYMTYPE, link=str(escape)), "links"),
        "symlink_then_write": (
            lambda t: (
                entry(f"{TARGET}/d", tarfile.SYMTYPE, link=str(escape.parent))(t),
                entry(f"{TARGET}/d/{escape.name}", data=b"pwned")(t),
            ),
            "links",
        ),
        "hardlink_out": (entry(f"{TARGET}/hard", tarfile.LNKTYPE, link=str(escape)), "links"),
        "hardlink_inside": (
            entry(f"{TARGET}/hard", tarfile.LNKTYPE, link=f"{TARGET}/model.onnx"),
            "links",
        ),
        "char_device": (entry(f"{TARGET}/null", tarfile.CHRTYPE), "devices"),
        "block_device": (entry(f"{TARGET}/disk", tarfile.BLKTYPE), "devices"),
        "fifo": (entry(f"{TARGET}/fifo", tarfile.FIFOTYPE), "devices"),
        "second_top_folder": (entry("other/x.txt", data=b"x"), "one top folder"),
        "dot_entry": (entry(".", tarfile.DIRTYPE), "escapes"),
        "file_then_folder": (
            lambda t: (
                entry(f"{TARGET}/clash", data=b"x")(t),
                entry(f"{TARGET}/clash/inner", data=b"y")(t),
            ),
            "cannot extract",
        ),
    }


CASES = list(hostile(Path("/x")))


@pytest.mark.parametrize("case", CASES)
def test_hostile_tarball_is_refused(case: str, built: Path, tmp_path: Path) -> None:
    escape = tmp_path / "outside" / "escaped.txt"
    escape.parent.mkdir()
    evil, word = hostile(escape)[case]
    tar = tar_with(built, tmp_path / "evil.tar.gz", evil)
    (tmp_path / "verify-tmp").mkdir()
    before = sorted(tmp_path.rglob("*"))
    r, left = verify_cli(tar, cwd=tmp_path)
    assert_user_error(r, word)
    assert not escape.exists() and not escape.is_symlink()
    assert left == [], "verify left files in its temporary folder"
    assert sorted(tmp_path.rglob("*")) == before


def test_gzip_bomb_is_refused_before_anything_is_written(built: Path, tmp_path: Path) -> None:
    # 64 MiB of zeros packs into ~64 KB; the limit is counted while the stream is read, before
    # extraction, so a real bomb (terabytes) never reaches the disk either.
    bomb = entry(f"{TARGET}/zeros.bin", data=bytes(64 * 2**20))
    tar = tar_with(built, tmp_path / "bomb.tar.gz", bomb)
    assert tar.stat().st_size < 2**20
    r, left = verify_cli(tar, "--max-size-gb", "0.03", cwd=tmp_path)
    assert_user_error(r, "expands to more than 0.03 GB")
    assert "--max-size-gb" in r.stderr and left == []
    # In process: the refusal comes before the tar reader is ever opened.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bundle_mod.tarfile, "open", lambda *a, **k: pytest.fail("tar opened"))
        with pytest.raises(UserError, match="expands to more than"):
            bundle_mod.safe_extract(tar, tmp_path, max_gb=0.03)
    # The same tarball is only a tampered bundle under the default limit: it extracts, and the
    # added file fails the manifest.
    r, left = verify_cli(tar, cwd=tmp_path)
    assert r.code == 1 and "added: zeros.bin" in r.stdout and left == []


def test_tarball_larger_than_the_free_disk_is_refused(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = shutil.disk_usage(tmp_path)._replace(free=1024)
    monkeypatch.setattr(bundle_mod.shutil, "disk_usage", lambda _: full)
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(UserError, match="free; set TMPDIR to a larger disk"):
        bundle_mod.safe_extract(built / f"{TARGET}.tar.gz", into)
    assert list(into.iterdir()) == []


def damaged(built: Path, dest: Path, how: str) -> Path:
    raw = (built / f"{TARGET}.tar.gz").read_bytes()
    if how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "not_gzip":
        raw = b"PK\x03\x04 this is a zip, not a tarball"
    elif how == "trailer_crc":
        raw = raw[:-8] + bytes([raw[-8] ^ 0xFF]) + raw[-7:]
    elif how == "plain_tar":
        raw = gzip.decompress(raw)
    dest.write_bytes(raw)
    return dest


@pytest.mark.parametrize("how", ["truncated", "not_gzip", "trailer_crc", "plain_tar"])
def test_damaged_tarball_is_refused(how: str, built: Path, tmp_path: Path) -> None:
    r, left = verify_cli(damaged(built, tmp_path / "b.tar.gz", how), cwd=tmp_path)
    assert_user_error(r, "b.tar.gz")
    assert left == []
