"""packager.builder.bundle.safe_extract's own checks, with tarfile's `data` extraction filter disabled
(issue 28 item 2): the filter would refuse most of these members by itself, so with it on a lost
check goes unnoticed. Here the named filter "data" is swapped for "fully_trusted" (which checks
nothing, and keeps setuid bits: the first test proves the swap took effect), so only
safe_extract's own checks stand between each member and the disk. Each refusal is asserted by its
reason, and nothing may be written anywhere, inside or outside the target folder."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from packager.builder.bundle import safe_extract
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
