"""Reports for `packager compare`: read report.json from bundle directories, report.json files,
bundle tarballs, or dist directories holding <name>-<version>/<target>/ bundles (failed bundles
under .failed/ included), each summarized into one row."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from packager.core import documents
from packager.core.errors import UserError
from packager.reports.report import summarize


@dataclass
class Loaded:
    report: dict[str, Any]
    source: Path  # the report.json or tarball it came from
    row: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.row = summarize(self.report)
        self.row["bundle"] = str(
            self.source.parent if self.source.suffix == ".json" else self.source
        )


FIX = "pass a bundle's report.json written by this packager version"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return documents.load(path, documents.Report, FIX)
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc})") from None


def _read_tarball(path: Path) -> dict[str, Any]:
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = next(
                (
                    m
                    for m in tar.getmembers()
                    if m.isfile() and m.name.count("/") == 1 and m.name.endswith("/report.json")
                ),
                None,
            )
            if member is None:
                raise UserError(f"{path} holds no <target>/report.json; pass a bundle tarball")
            f = tar.extractfile(member)
            assert f is not None  # a regular file member always has content
            text = f.read()
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"cannot read {path} as a bundle tarball ({exc})") from None
    try:
        documents.Report.model_validate_json(text)
    except ValidationError as exc:
        where = Path(f"{path}:{member.name}")
        raise UserError(documents.mismatch(where, documents.Report, exc, FIX)) from None
    return json.loads(text)


def _visible(p: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in p.relative_to(root).parts)


def resolve(path: Path) -> list[Loaded]:
    """The reports behind one command-line path."""
    if not path.exists():
        raise UserError(
            f"{path} does not exist; pass bundle directories, report.json files or dist directories"
        )
    if path.is_file():
        if path.name.endswith((".tar.gz", ".tgz")):
            return [Loaded(_read_tarball(path), path)]
        return [Loaded(_read_json(path), path)]
    if (path / "report.json").is_file():
        return [Loaded(_read_json(path / "report.json"), path / "report.json")]
    found = [p for p in sorted(path.glob("*/report.json")) if _visible(p, path)]
    found += [p for p in sorted(path.glob("*/*/report.json")) if _visible(p, path)]
    found += sorted(path.glob(".failed/*/*/report.json"))
    if not found:
        raise UserError(
            f"no report.json under {path}; pass a bundle directory, a report.json or a dist "
            "directory holding <name>-<version>/<target>/ bundles"
        )
    loaded = [Loaded(_read_json(p), p) for p in found]
    # A target rebuilt after a failure has a published bundle and a .failed one: keep the newest.
    newest: dict[tuple[Any, ...], Loaded] = {}
    for item in loaded:
        key = (item.row["name"], item.row["version"], item.row["target"])
        old = newest.get(key)
        if old is None or item.source.stat().st_mtime > old.source.stat().st_mtime:
            newest[key] = item
    return list(newest.values())


def label_rows(rows: list[dict[str, Any]]) -> None:
    """Rows are named by target, plus model and version when several releases are mixed."""
    releases = {(r["name"], r["version"]) for r in rows}
    seen: dict[str, int] = {}
    for r in rows:
        base = r["target"] if len(releases) == 1 else f"{r['target']} ({r['name']} {r['version']})"
        seen[base] = seen.get(base, 0) + 1
        r["label"] = base if seen[base] == 1 else f"{base} #{seen[base]}"
