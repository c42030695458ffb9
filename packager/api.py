"""packager's Python API, for pipelines: the same calls the command line makes (packager.cli is
a thin layer over these). Each returns typed documents (packager.core.documents models, or
typed results) and raises packager.core.errors' typed exceptions, whose messages are the CLI's
one-line errors: UserError (bad input), GateFailed (a gate or check failed), Unavailable (this
host cannot run it), ModelRefused (a target cannot take the model).

    import packager

    results = packager.build("packager.toml", targets=["cpu-openvino"], out="dist")
    results.raise_for_status()           # GateFailed / ModelRefused / Unavailable, as the CLI
    report = results.reports()["cpu-openvino"]          # a packager.core.documents.Report
    record = packager.selftest("dist/m-1.0/cpu-openvino.tar.gz", pubkey="release.pub")
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.builder.state import TargetResult
from packager.core import documents
from packager.core.errors import GateFailed, ModelRefused, Unavailable, UserError
from packager.core.progress import Progress
from packager.core.status import ResultStatus

if TYPE_CHECKING:
    from packager.builder.cache import Cache
    from packager.builder.verify import VerifyResult
    from packager.core.config import Config

PathLike = str | Path


@dataclass
class BuildResults:
    """One result per target, in the order named."""

    results: list[TargetResult]
    explicit: bool  # the targets were named (an unavailable one is an error), not --all

    def reports(self) -> dict[str, documents.Report]:
        """Each built target's report.json, typed."""
        return {
            r.target: documents.Report.model_validate(r.report)
            for r in self.results
            if r.report is not None and "schema_version" in r.report
        }

    @property
    def exit_code(self) -> int:
        try:
            self.raise_for_status()
        except (GateFailed, ModelRefused, Unavailable) as exc:
            return exc.exit_code
        return 0

    def raise_for_status(self) -> None:
        """The CLI's exit, as an exception; when several apply, the most severe: GateFailed (a
        gate failed, or a target's error) > ModelRefused (a target cannot take this model) >
        Unavailable (a target named explicitly cannot run on this host; --all skips those)."""
        from packager.builder.pipeline import REFUSED

        results = self.results
        failed = [r for r in results if r.status in (ResultStatus.failed, ResultStatus.error)]
        if failed:
            why = "; ".join(f"{r.target}: {r.reason}" for r in failed)
            kept = next((r.bundle for r in failed if r.bundle), None)
            raise GateFailed(
                f"{why} — not published" + (f"; report kept in {kept}" if kept else "")
            )
        refused = [r for r in results if r.status in REFUSED]
        if refused:
            raise ModelRefused(
                f"{len(refused)} of {len(results)} targets cannot take this model: "
                + "; ".join(f"{r.target} {r.status}" for r in refused)
                + " (reasons in the results; full logs under DIR/.failed/)"
            )
        missing = [r for r in results if r.status == ResultStatus.unavailable]
        if self.explicit and missing:
            raise Unavailable("; ".join(r.reason for r in missing))


def build(
    config: PathLike | Config | None = None,
    targets: Sequence[str] = (),
    out: PathLike | None = None,
    *,
    all_targets: bool = False,
    int8: bool = False,
    precision: str | None = None,
    force: bool = False,
    bench: bool = True,
    cache: bool = True,
    sign: PathLike | None = None,
    progress: str | bool | None = False,
) -> BuildResults:
    """`packager build`: `config` is a packager.toml path (None: ./packager.toml or
    [tool.packager] in ./pyproject.toml) or a loaded Config. Name `targets`, or pass
    `all_targets=True`. `precision="auto"` runs the precision search. `progress`: a mode
    (auto, rich, plain, none), True (plain), False (none) or None ($PACKAGER_PROGRESS, else
    auto)."""
    from packager.builder.bundle import ensure_writable
    from packager.builder.pipeline import build as run_build
    from packager.builder.pipeline import check_targets
    from packager.builder.session import Session
    from packager.builder.signing import check_private_key
    from packager.core import registry
    from packager.core.config import Config, load_config, override

    if bool(targets) == all_targets:
        raise UserError("name targets with --target NAME (repeatable) or pass --all")
    if precision not in (None, "auto"):
        raise UserError(f"precision {precision!r}: the one choice is 'auto'")
    cfg = config if isinstance(config, Config) else load_config(_path(config))
    override(cfg, "output", "dir", str(Path(out).resolve()) if out else None)
    override(cfg, "sign", "key", str(Path(sign).resolve()) if sign else None)
    if cfg.sign.key:  # a bad key is one line, before the model or data are read
        check_private_key(Path(cfg.sign.key))
    names = registry.names() if all_targets else list(dict.fromkeys(targets))
    check_targets(cfg.targets, names)  # a misspelt target before any model or data is read
    ensure_writable(Path(cfg.output.dir))  # before the cache: the output is what matters
    session = Session.open(cfg, Progress(progress))
    explicit = not all_targets
    results = run_build(
        session,
        names,
        force,
        bench,
        int8,
        explicit,
        precision == "auto",
        _cache() if cache else None,
    )
    return BuildResults(results, explicit)


def verify(
    bundle: PathLike, pubkey: PathLike | None = None, max_size_gb: float | None = None
) -> VerifyResult:
    """`packager verify`: every file against the manifest, and the signature with `pubkey`.
    Returns the result (check `.ok`); a path that is no bundle is a UserError."""
    from packager.builder.verify import verify as run_verify

    return run_verify(Path(bundle), _path(pubkey), max_size_gb)


def selftest(
    bundle: PathLike,
    pubkey: PathLike | None = None,
    record: PathLike | None = None,
    max_size_gb: float | None = None,
) -> documents.Acceptance:
    """`packager selftest`: packager's own check of the bundle, then its own self-test on this
    host. Returns the acceptance record; a rejected bundle raises GateFailed (`.record` holds
    the record), a runtime this host lacks Unavailable."""
    from packager.hospital.selftest import arrival

    code, line, rec = arrival(Path(bundle), _path(record), max_size_gb, _path(pubkey))
    if code == 1:
        raise _with_record(GateFailed(line), rec)
    if code == 3:
        raise _with_record(Unavailable(line), rec)
    return documents.Acceptance.model_validate(rec)


def validate(
    bundle: PathLike,
    data: PathLike | None = None,
    split: str | None = None,
    labels: PathLike | None = None,
    out: PathLike | None = None,
    group_by: Sequence[str] = (),
    pubkey: PathLike | None = None,
    sign: PathLike | None = None,
    progress: str | bool | None = False,
) -> dict[str, Any]:
    """`packager validate`: site acceptance on a site's own data (the site validation report),
    or the bundle's report completed on its own data. A failed verdict raises GateFailed with
    the CLI's line (`.record` holds the report)."""
    from packager.hospital.site import revalidate

    outcome = revalidate(
        Path(bundle),
        _path(data),
        split,
        Progress(progress),
        _path(labels),
        _path(out),
        list(group_by) or None,
        _path(pubkey),
        _path(sign),
    )
    problems = validate_problems(outcome)
    if problems:
        raise _with_record(GateFailed("; ".join(problems)), outcome)
    return outcome


def validate_problems(outcome: dict[str, Any]) -> list[str]:
    """What makes a validation exit 1: a failed verdict, or a completed report not published."""
    from packager.core.status import ReportStatus

    problems = [outcome["reason"]] if outcome["status"] == ReportStatus.failed else []
    publication = outcome.get("publication") or {}
    if publication and not publication["published"]:
        problems.append(publication["reason"])
    return problems


def compare(
    paths: Sequence[PathLike], sla: PathLike | None = None, fmt: str = "json"
) -> tuple[str, list[str]]:
    """`packager compare`: the comparison of bundles or reports in `fmt` (md, html, json), and
    every SLA line missed."""
    from packager.reports.compare import compare as run_compare

    return run_compare([Path(p) for p in paths], _path(sla), fmt)


def _cache() -> Cache | None:
    """The build cache; where it cannot be written, the build goes on without it (a warning)."""
    from packager.builder.cache import Cache

    try:
        return Cache()
    except UserError as exc:
        print(f"warning: building without the cache: {exc}", file=sys.stderr, flush=True)
        return None


def _path(p: PathLike | None) -> Path | None:
    return None if p is None else Path(p)


def _with_record(exc: Exception, record: dict[str, Any]) -> Exception:
    exc.record = record  # type: ignore[attr-defined]
    return exc
