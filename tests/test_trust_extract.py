"""packager.builder.bundle.safe_extract's own checks, with tarfile's `data` extraction filter disabled
(issue 28 item 2): the filter would refuse most of these members by itself, so with it on a lost
check goes unnoticed. Here the named filter "data" is swapped for "fully_trusted" (which checks
nothing, and keeps setuid bits: the first test proves the swap took effect), so only
safe_extract's own checks stand between each member and the disk. Each refusal is asserted by its
reason, and nothing may be written anywhere, inside or outside the target folder."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from packager.builder.bundle import MAX_MEMBERS, safe_extract
from packager.core.errors import UserError

ESCAPES = "path escapes the bundle"
LINKS = "links and devices are not allowed"
ROOTS = "holds one top folder"


@pytest.fixture(autouse=True)
def no_data_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever way safe_extract names the `data` filter, it gets the one that checks nothing."""
    monkeypatch.setitem(tarfile._NAMED_FILTERS, "data", tarfile.fully_trusted_filter)  # type: ignore[attr-defined]
    monkeypatch.setattr(tarfile, "data_filter", tarfile.fully_trusted_filter)


def _member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o644 if kind == tarfile.REGTYPE else 0o755
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def _tarball(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            data = b"payload\n" if m.isfile() else b""
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data) if data else None)
    return path


def _everything_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_the_filter_is_really_off(tmp_path: Path) -> None:
    # The data filter clears setuid; with it swapped out, safe_extract keeps it: any refusal
    # below comes from safe_extract itself.
    tar = _tarball(
        tmp_path / "ok.tar.gz",
        [_member("bundle", tarfile.DIRTYPE), _member("bundle/run.sh", mode=0o4755)],
    )
    into = tmp_path / "into"
    into.mkdir()
    top = safe_extract(tar, into)
    assert top == into / "bundle"
    assert (top / "run.sh").read_bytes() == b"payload\n"
    assert os.stat(top / "run.sh").st_mode & stat.S_ISUID


def _absolute(tmp: Path) -> list[tarfile.TarInfo]:
    # an absolute name under the test's own folder, so a lost check writes nowhere else
    return [_member(str(tmp / "escaped" / "abs.txt"))]


CASES: dict[str, tuple[Callable[[Path], list[tarfile.TarInfo]], str]] = {
    "dot-dot": (
        lambda t: [_member("bundle", tarfile.DIRTYPE), _member("bundle/../../escaped.txt")],
        ESCAPES,
    ),
    "dot-dot-only": (lambda t: [_member("bundle/../escaped.txt")], ESCAPES),
    "absolute": (_absolute, ESCAPES),
    "backslash-rooted": (lambda t: [_member("\\bundle\\x.txt")], ESCAPES),
    "dot-root": (lambda t: [_member(".", tarfile.DIRTYPE)], ESCAPES),
    "symlink-out": (
        lambda t: [
            _member("bundle", tarfile.DIRTYPE),
            _member("bundle/model.onnx", tarfile.SYMTYPE, linkname=str(t / "secret")),
        ],
        LINKS,
    ),
    "symlink-inside": (
        lambda t: [
            _member("bundle", tarfile.DIRTYPE),
            _member("bundle/a.txt"),
            _member("bundle/b.txt", tarfile.SYMTYPE, linkname="a.txt"),
        ],
        LINKS,
    ),
    "hardlink": (
        lambda t: [
            _member("bundle", tarfile.DIRTYPE),
            _member("bundle/a.txt"),
            _member("bundle/b.txt", tarfile.LNKTYPE, linkname="bundle/a.txt"),
        ],
        LINKS,
    ),
    "char-device": (
        lambda t: [
            _member("bundle", tarfile.DIRTYPE),
            _member("bundle/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
        ],
        LINKS,
    ),
    "fifo": (
        lambda t: [_member("bundle", tarfile.DIRTYPE), _member("bundle/pipe", tarfile.FIFOTYPE)],
        LINKS,
    ),
    "two-roots": (lambda t: [_member("bundle/a.txt"), _member("other/b.txt")], ROOTS),
    "file-beside-root": (lambda t: [_member("bundle/a.txt"), _member("README.txt")], ROOTS),
    "empty": (lambda t: [], ROOTS),
}


@pytest.mark.parametrize("case", list(CASES))
def test_safe_extract_refuses_by_its_own_check(case: str, tmp_path: Path) -> None:
    make, reason = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    tar = _tarball(tmp_path / f"{case}.tar.gz", make(tmp_path))
    into = work / "into"
    into.mkdir()
    with pytest.raises(UserError, match=reason):
        safe_extract(tar, into)
    # nothing written: not in the target folder, not beside it, not at the absolute path
    assert _everything_under(work) == ["into"]
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "escaped.txt").exists()


def _stream_size(tar: Path) -> int:
    """What the tarball expands to, read with gzip directly."""
    return len(gzip.decompress(tar.read_bytes()))


def _big(tmp_path: Path, size: int) -> Path:
    """A bundle tarball of one file of `size` bytes of noise (several gzip chunks of 1 MiB)."""
    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.addfile(_member("bundle", tarfile.DIRTYPE))
        info = _member("bundle/model.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "big.tar.gz"
    path.write_bytes(gzip.compress(buf.getvalue(), compresslevel=1))
    return path


def test_the_size_limit_is_the_expanded_stream_exactly(tmp_path: Path) -> None:
    """The limit counts the whole decompressed stream (headers and padding too), across
    1 MiB reads: exactly at the limit passes, one byte under it is refused before anything
    is written."""
    tar = _big(tmp_path, 3 * 2**20 + 5)
    size = _stream_size(tar)
    assert size > 3 * 2**20 + 5 + 512  # headers and padding beyond the member's bytes
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(UserError) as exc:
        safe_extract(tar, into, max_gb=(size - 1) / 2**30)
    assert str(exc.value) == (
        f"{tar} expands to more than {(size - 1) / 2**30:g} GB; if the bundle really is that "
        "large, raise the limit with --max-size-gb"
    )
    assert _everything_under(into) == []
    top = safe_extract(tar, into, max_gb=size / 2**30)
    assert (top / "model.bin").stat().st_size == 3 * 2**20 + 5


@pytest.mark.parametrize("max_gb", [0.0, -1.0])
def test_a_limit_must_be_positive(tmp_path: Path, max_gb: float) -> None:
    tar = _tarball(tmp_path / "ok.tar.gz", [_member("bundle/a.txt")])
    with pytest.raises(ValueError, match=f"^max_gb must be positive, not {max_gb}$"):
        safe_extract(tar, tmp_path, max_gb)


def test_a_sparse_member_counts_the_size_it_declares(tmp_path: Path) -> None:
    """A GNU sparse member stores next to nothing but declares its full size: the limit is
    checked against the declared sizes added up (two members, each under it), exactly at the
    limit passes."""
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed: needed to write a sparse member")
    src = tmp_path / "src" / "bundle"
    src.mkdir(parents=True)
    for name in ("hole.bin", "hole2.bin"):
        with open(src / name, "wb") as f:
            f.truncate(2**21)
    tar = tmp_path / "sparse.tar.gz"
    subprocess.run(
        ["tar", "--sparse", "-czf", str(tar), "-C", str(src.parent), "bundle"], check=True
    )
    with tarfile.open(tar) as t:
        declared = sum(m.size for m in t)
    assert declared == 2**22 and _stream_size(tar) < 2**20  # the stream passes either limit
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(UserError, match="^.*sparse.tar.gz expands to more than "):
        safe_extract(tar, into, max_gb=(declared - 1) / 2**30)
    assert _everything_under(into) == []
    top = safe_extract(tar, into, max_gb=declared / 2**30)
    assert (top / "hole.bin").stat().st_size == 2**21


def test_free_space_is_checked_before_extracting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Free space is the file system's (shutil.disk_usage, replaced here by a smaller disk):
    exactly enough passes, one byte short is refused, in GB to two places."""
    tar = _big(tmp_path, 20 * 2**20)
    size = _stream_size(tar)
    into = tmp_path / "into"
    into.mkdir()
    real = shutil.disk_usage

    def disk(free: int) -> Callable[[object], object]:
        return lambda p: real(p)._replace(free=free)

    monkeypatch.setattr(shutil, "disk_usage", disk(18 * 2**20))
    with pytest.raises(UserError) as exc:
        safe_extract(tar, into)
    gb = f"{size / 2**30:.2f}"
    assert gb == "0.02"
    assert str(exc.value) == (
        f"{tar} expands to {gb} GB but {into} has 0.02 GB free; set TMPDIR to a larger disk"
    )
    monkeypatch.setattr(shutil, "disk_usage", disk(size - 1))
    with pytest.raises(UserError, match="GB free; set TMPDIR"):
        safe_extract(tar, into)
    assert _everything_under(into) == []
    monkeypatch.setattr(shutil, "disk_usage", disk(size))
    assert (safe_extract(tar, into) / "model.bin").stat().st_size == 20 * 2**20


def test_at_most_max_members_entries(tmp_path: Path) -> None:
    names = [_member("bundle", tarfile.DIRTYPE)] + [
        _member(f"bundle/{i}.txt") for i in range(MAX_MEMBERS - 1)
    ]
    into = tmp_path / "into"
    into.mkdir()
    top = safe_extract(_tarball(tmp_path / "full.tar.gz", names), into)
    assert len(list(top.iterdir())) == MAX_MEMBERS - 1
    tar = _tarball(tmp_path / "over.tar.gz", [*names, _member("bundle/one-more.txt")])
    with pytest.raises(UserError) as exc:
        safe_extract(tar, tmp_path / "into")
    assert str(exc.value) == (
        f"{tar} holds more than 10,000 entries; a bundle holds tens, so this is not one"
    )


@pytest.mark.parametrize(
    ("name", "shown", "why"),
    [
        ("bundle/red\x1b[31m.txt", "bundle/red\\x1b[31m.txt", "holds a control character"),
        (
            "bundle/evil\u202etxt.py",
            "bundle/evil\\u202etxt.py",
            "holds a Unicode bidi control, which makes a name print as another",
        ),
        ("bundle/latin\udce9.txt", "bundle/latin\\xe9.txt", "is not UTF-8"),
    ],
)
def test_a_refused_name_is_named_printably(tmp_path: Path, name: str, shown: str, why: str) -> None:
    tar = tmp_path / "names.tar.gz"
    with tarfile.open(tar, "w:gz", format=tarfile.GNU_FORMAT, errors="surrogateescape") as t:
        t.addfile(_member("bundle", tarfile.DIRTYPE))
        info = _member(name)
        t.addfile(info)
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(UserError) as exc:
        safe_extract(tar, into)
    assert str(exc.value) == f"{tar}: refusing entry '{shown}' (the name {why})"
    assert _everything_under(into) == []


def test_an_escaping_entry_is_named_with_the_tarball(tmp_path: Path) -> None:
    tar = _tarball(tmp_path / "x.tar.gz", [_member("bundle/../up.txt")])
    with pytest.raises(UserError) as exc:
        safe_extract(tar, tmp_path)
    assert str(exc.value) == f"{tar}: refusing entry 'bundle/../up.txt' (path escapes the bundle)"


def test_damaged_tarballs_are_one_line(tmp_path: Path) -> None:
    good = _tarball(tmp_path / "good.tar.gz", [_member("bundle/a.txt"), _member("bundle/b.txt")])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(UserError, match=f"^{cut} is truncated or corrupt \\(.+\\)$"):
        safe_extract(cut, tmp_path)
    not_tar = tmp_path / "not-tar.tar.gz"
    not_tar.write_bytes(gzip.compress(b"just some text, not a tar archive" * 40))
    with pytest.raises(UserError, match=f"^{not_tar} is not a readable .tar.gz \\(.+\\)$"):
        safe_extract(not_tar, tmp_path)
    # A GNU long name's own header broken (its checksum): found while the entries are read
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        t.addfile(_member("bundle", tarfile.DIRTYPE))
        t.addfile(_member("bundle/" + "n" * 150), io.BytesIO(b""))
    raw = bytearray(buf.getvalue())  # the folder, LongLink header, the name, the member's header
    raw[1536 + 150] ^= 0x01
    bad = tmp_path / "bad-header.tar.gz"
    bad.write_bytes(gzip.compress(bytes(raw)))
    (tmp_path / "x").mkdir()
    with pytest.raises(UserError, match=f"^{bad} is truncated or corrupt \\(.+\\)$"):
        safe_extract(bad, tmp_path / "x")


def test_an_extraction_that_fails_is_one_line(tmp_path: Path) -> None:
    tar = _tarball(
        tmp_path / "ok.tar.gz", [_member("bundle", tarfile.DIRTYPE), _member("bundle/a")]
    )
    into = tmp_path / "into"
    into.mkdir()
    (into / "bundle").write_bytes(b"a file where the folder goes")
    with pytest.raises(
        UserError, match=f"^{tar}: cannot extract \\(.+\\); the tarball is damaged$"
    ):
        safe_extract(tar, into)


def test_a_refused_listing_is_a_one_line_user_error_naming_the_file(tmp_path: Path) -> None:
    from packager.builder.bundle import listing
    from packager.core.errors import UserError

    (tmp_path / "model.onnx").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "model.onnx")
    with pytest.raises(UserError) as err:
        listing(tmp_path)
    assert str(err.value) == f"{tmp_path / 'link'} is a link; bundles hold plain files only"
