"""The one check of a bundle's files against its manifest.json, and the one file hash: shipped in
every bundle (the self-test runs it) and used by packager itself (`verify`, `selftest`,
`validate`, and the manifest a build writes). Standard library only.

Names are untrusted: a name that is not UTF-8, holds a control character or a Unicode bidi
control (which can make `evil.py` print as `yp.live`) is refused, and every name a message
quotes goes through `printable`, so nothing a bundle holds is echoed raw to a terminal."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
# Written after the manifest, so it cannot list them.
UNLISTED = frozenset({MANIFEST, "model.sig", "manifest.sig"})
# Explicit directional formatting (U+202A-202E, U+2066-2069) and the directional marks.
BIDI = frozenset(map(chr, (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x61C)))


class BadBundle(ValueError):
    """The bundle cannot be checked as it is: a link, a device, a refused name, or a manifest that
    is not one (the message says which; names in it are printable)."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def printable(name: str) -> str:
    """`name` safe to print: undecodable bytes as \\xNN, control and bidi characters as escapes."""
    out = []
    for ch in name:
        if 0xDC80 <= ord(ch) <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch.isprintable() and ch not in BIDI:
            out.append(ch)
        else:
            out.append(ascii(ch)[1:-1])
    return "".join(out)


def name_problem(name: str) -> str | None:
    """Why a file name cannot be in a bundle, or None."""
    if any(0xDC80 <= ord(ch) <= 0xDCFF for ch in name):
        return "is not UTF-8"
    if any(ch in BIDI for ch in name):
        return "holds a Unicode bidi control, which makes a name print as another"
    if any(not ch.isprintable() for ch in name):
        return "holds a control character"
    return None


def listing(root: Path) -> dict[str, Path]:
    """Every file under `root` by its POSIX path relative to it, except UNLISTED; BadBundle on a
    link, a device, pipe or socket, or a refused name (links are never followed)."""
    out = {}
    for top, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(top, name)
            rel = path.relative_to(root).as_posix()
            why = name_problem(rel)
            if why:
                raise BadBundle(f"the file name '{printable(rel)}' {why}; remove that file")
            if path.is_symlink():
                raise BadBundle(f"{printable(str(path))} is a link; bundles hold plain files only")
            if name in files:
                if not path.is_file():
                    raise BadBundle(
                        f"{printable(str(path))} is a device, pipe or socket; bundles hold plain "
                        "files only"
                    )
                if rel not in UNLISTED:
                    out[rel] = path
    return dict(sorted(out.items()))


def read_manifest(root: Path) -> dict[str, Any]:
    """manifest.json: a JSON object whose `files` maps each path to {sha256, size}. A missing
    manifest is FileNotFoundError; anything else it cannot be, BadBundle."""
    text = (root / MANIFEST).read_bytes()
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser
        raise BadBundle(f"{MANIFEST}: unreadable (not JSON, or nested too deep)") from None
    if not isinstance(manifest, dict):
        raise BadBundle(f"{MANIFEST}: unreadable (not a JSON object)")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(m, dict) and isinstance(m.get("sha256"), str) for m in files.values()
    ):
        raise BadBundle(f"{MANIFEST}: unreadable or without a file list")
    return manifest


def compare(listed: dict[str, dict[str, Any]], actual: dict[str, Path]) -> list[str]:
    """'missing: X', 'changed: X' and 'added: X' for every file that differs from the manifest
    (a size that differs settles it without hashing the file)."""
    problems = [f"missing: {printable(rel)}" for rel in sorted(set(listed) - set(actual))]
    for rel, meta in sorted(listed.items()):
        path = actual.get(rel)
        if path is None:
            continue
        size = meta.get("size")
        if (isinstance(size, int) and path.stat().st_size != size) or file_sha256(path) != meta.get(
            "sha256"
        ):
            problems.append(f"changed: {printable(rel)}")
    problems += [f"added: {printable(rel)}" for rel in sorted(set(actual) - set(listed))]
    return problems


def check(root: Path) -> tuple[dict[str, Any], list[str]]:
    """(the manifest, or {} when unreadable; every problem found), never raising for what the
    bundle holds: a missing manifest, a link or a refused name is a problem like a changed file."""
    try:
        manifest = read_manifest(root)
        return manifest, compare(manifest["files"], listing(root))
    except FileNotFoundError:
        return {}, [f"missing: {MANIFEST}"]
    except BadBundle as exc:
        return {}, [str(exc)]
