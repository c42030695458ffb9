"""The one path every build takes: for each target, the stages of packager.builder.stages
(convert, install the runtime, validate, self-test, benchmark, finish, publish) over one
BuildState; a precision search (packager.builder.search) runs the first stages for each candidate
and its winner is published here, through the same stages."""

from __future__ import annotations

import shutil
import traceback
from contextlib import suppress
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from packager.builder import reuse, search, stages
from packager.builder.bundle import ensure_writable, locked, make_tarball, new_stage, publish
from packager.builder.cache import Cache
from packager.builder.inputs import bundle_hashes, inputs_key
from packager.builder.session import Session
from packager.builder.signing import check_private_key
from packager.builder.stages.convert import Converter
from packager.builder.state import BuildState, TargetResult
from packager.core import documents, registry
from packager.core.errors import ModelRefused, PackagerError, Unavailable, UserError
from packager.core.gates import check_custom
from packager.core.registry import get
from packager.core.schema import from_dict
from packager.core.status import RefusalStatus, ResultStatus, StepStatus
from packager.core.target import Target
from packager.runtime.runner import WorkerFailed
from packager.shipped.integrity import MANIFEST

# A target that cannot take this model: refused by its support check or its converter.
REFUSED = tuple(RefusalStatus)
CONVERSION_LOG = "conversion.log"


def target_options(target: Target, s: Session, int8: bool, auto: bool = False) -> Any:
    """[targets.<name>] as the target's typed Options, with --int8 and --precision auto
    applied as replacements (never attribute writes)."""
    opts = from_dict(target.Options, s.cfg.targets.get(target.name), f"targets.{target.name}")
    if int8 and target.int8_option:
        key, value = target.int8_option
        opts = replace(opts, **{key: value})
    return search.auto(target, opts) if auto else opts


def check_targets(cfg_targets: dict[str, Any], names: list[str]) -> None:
    # A typo in [targets.<name>] is an error, not a silent default.
    for name in [*cfg_targets, *names]:
        registry.check_name(name)


def build(
    s: Session,
    names: list[str],
    force: bool,
    bench: bool,
    int8: bool,
    explicit: bool,
    auto: bool = False,
    cache: Cache | None = None,
) -> list[TargetResult]:
    """`packager build`: every named target, each through the stages, in order. `int8`:
    --int8; `auto`: --precision auto; `explicit`: the targets were named (one that breaks
    stops the build), not --all. A published bundle built from the same inputs is up to date
    (not rebuilt unless `force`); `cache` reuses conversions and validations."""
    check_targets(s.cfg.targets, names)
    check_custom(s.cfg.gates)
    if s.cfg.sign.key:  # a bad key fails here, before any conversion and before dist/ exists
        check_private_key(Path(s.cfg.sign.key))
    ensure_writable(Path(s.cfg.output.dir))
    root = stages.bundle_root(s)
    targets, results = [], []
    for n in names:  # everything this host cannot do is known before any work starts
        try:
            t = get(n)
            avail = t.availability().build
            if not avail.ok:
                raise Unavailable(f"{n} cannot build on this host: {avail.reason}")
            targets.append(t)
        except Unavailable as exc:  # named with -t: the CLI exits 3 once the others are built
            s.progress.say(f"[{n}] skipped: {exc}")
            results.append(TargetResult(n, ResultStatus.unavailable, str(exc)))
    # every target's options are checked before any work
    options = {t.name: target_options(t, s, int8, auto) for t in targets}
    for t in list(targets):  # the cheap support check: a refused target is never converted
        verdict = t.accepts(s.info, options[t.name])
        if not verdict.ok:
            targets.remove(t)
            results.append(
                refused(s, t.name, RefusalStatus.unsupported_model, verdict.reason, verdict.log)
            )
    inputs = {t.name: inputs_key(s, t, options[t.name], bench) for t in targets}
    for t in list(targets):  # before any conversion: unchanged ones are up to date
        done = up_to_date(root / t.name, inputs[t.name], force)
        if done is not None:
            targets.remove(t)
            s.progress.say(f"[{t.name}] up to date: {root / t.name}")
            results.append(done)
    if not targets:
        return in_order(results, names)
    try:
        reference = s.reference
    except WorkerFailed as exc:  # the source model itself is broken: bad input, not a gate
        raise UserError(
            f"the model does not run on the reference runtime ({exc}); fix or re-export it"
        ) from None
    for i, t in enumerate(targets, 1):
        try:
            with s.progress.target(t.name, i, len(targets)):
                one = build_target(
                    s, t, options[t.name], reference, bench, int8, cache, inputs[t.name]
                )
            results.append(one)
        except UserError:
            raise
        except ModelRefused as exc:  # the converter's refusal: this target's result, not a crash
            results.append(refused(s, t.name, exc.status, str(exc), exc.log))
        except Unavailable as exc:
            s.progress.say(f"[{t.name}] skipped: {exc}")
            results.append(TargetResult(t.name, ResultStatus.unavailable, str(exc)))
        except Exception as exc:  # with --all, one broken target must not stop the others
            if explicit:
                raise
            if not isinstance(exc, PackagerError):
                traceback.print_exc()  # a bug stays visible
            results.append(TargetResult(t.name, ResultStatus.error, f"{type(exc).__name__}: {exc}"))
    return in_order(results, names)


def up_to_date(bundle: Path, inputs: str, force: bool) -> TargetResult | None:
    """The published bundle's result when it was built from exactly these inputs; None when
    there is none, or `force`. One built from other inputs is replaced only with --force."""
    if not bundle.exists() or force:
        return None
    recorded = None
    with suppress(OSError, ValueError):
        recorded = documents.read(bundle / MANIFEST, documents.Manifest).get("inputs_sha256")
    if recorded != inputs:
        changed = "was built from other inputs" if recorded else "records no build inputs"
        raise UserError(
            f"{bundle} already exists and {changed}; pass --force to build a new generation"
        )
    state = BuildState.load(documents.read(bundle / "report.json", documents.Report))
    status = state.status or ResultStatus.error
    return TargetResult(state.target, ResultStatus(status), "up to date", str(bundle))


def in_order(results: list[TargetResult], names: list[str]) -> list[TargetResult]:
    return sorted(results, key=lambda r: names.index(r.target))


def build_target(
    s: Session,
    t: Target,
    opts: Any,
    reference: np.ndarray,
    bench: bool,
    int8: bool,
    cache: Cache | None,
    inputs: str,
) -> TargetResult:
    """One target: its precision search first when its Options ask for one ("auto")."""
    if not search.wants(t, opts):
        return build_one(s, t, opts, reference, bench, int8, cache=cache, inputs=inputs)
    found = search.run(s, t, opts, reference)
    if isinstance(found, TargetResult):  # no candidate passed: nothing to publish
        return found
    try:
        return build_one(
            s, t, found.opts, reference, bench, int8, found.converter, found.state, inputs=inputs
        )
    finally:
        found.done()


def build_one(
    s: Session,
    t: Target,
    opts: Any,
    reference: np.ndarray,
    bench: bool,
    int8: bool,
    converter: Converter | None = None,  # search: the winner's conversion, reused
    validated: BuildState | None = None,  # search: the winner's validation, reused
    cache: Cache | None = None,
    inputs: str | None = None,  # packager.builder.inputs.inputs_key, recorded in the manifest
) -> TargetResult:
    stage = new_stage(Path(s.cfg.output.dir), t.name)
    bdir = stage / t.name
    try:
        ctx = s.context(opts)
        if converter is not None:  # the search's winner: its folder, already converted
            built, reused = stages.convert(s, t, ctx, bdir, converter), ""
        else:
            built, reused = reuse.convert(s, t, ctx, bdir, cache)
        convert_step = (
            StepStatus.ok,
            f"precision {built.precision}" + (f"; {reused}" if reused else ""),
        )
        if int8 and not t.int8_option:
            built.notes.append(
                "--int8 is not supported by this target; built its default precision"
            )
        size_mb = stages.artifact_mb(bdir, built)
        code = stages.install_runtime(s, t, bdir, built)
        installed = bundle_hashes(bdir) if cache is not None else {}
        # the search validated these very files (copied with validation.npz and golden set)
        state = validated or reuse.validate(s, t, ctx, bdir, built, reference, cache, installed)
        state.inputs_sha256 = inputs
        state.steps.insert(0, documents.Step("convert", *convert_step))
        state.code = code
        stages.selftest(s, t, bdir, built, state, recorded=validated is not None)
        state.benchmark = reuse.bench(s, t, bdir, built, state, bench, cache, installed)
        state.benchmark["model_size_mb"] = size_mb
        report = stages.finish(s, t, bdir, built, state)
        final = stages.publish_bundle(s, t, stage, state)
        s.progress.say(f"[{t.name}] {state.status}: {final}")
        return TargetResult(t.name, ResultStatus(state.status), state.reason, str(final), report)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def refused(s: Session, target: str, status: RefusalStatus, reason: str, log: str) -> TargetResult:
    """A target that cannot take the model: its one-line reason, and the full log kept under
    DIR/.failed/<name>-<version>/<target>/ (published like a failed bundle; nothing else)."""
    reason = " ".join(reason.split())
    s.progress.say(f"[{target}] {status}: {reason}")
    out = Path(s.cfg.output.dir)
    stage = new_stage(out, target)
    bdir = stage / target
    try:
        (bdir / CONVERSION_LOG).write_text(f"{target}: {status}\n{reason}\n\n{log}".rstrip() + "\n")
        record = {
            "schema_version": 1,
            "target": target,
            "status": status,
            "reason": reason,
            "model": {
                "name": s.cfg.model.name,
                "version": s.cfg.model.version,
                "source_sha256": s.info.sha256,
                "quantization": asdict(s.info.quantization) if s.info.quantization else None,
            },
        }
        documents.write(bdir / "refusal.json", documents.Refusal, record)
        make_tarball(bdir, stage / f"{target}.tar.gz")
        with locked(out):
            final = publish(stage, out / ".failed" / stages.bundle_root(s).name, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return TargetResult(target, ResultStatus(status), reason, None, log=str(final / CONVERSION_LOG))
