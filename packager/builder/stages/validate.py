"""Stage 3: validate the converted bundle on the target's own runtime (or its labelled proxy):
clinical metrics, every gate, the evidence, and the target's declared cross-checks."""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from packager.builder.session import Session
from packager.builder.stages.findings import judge
from packager.builder.state import BuildState, ValidationInfo, failure
from packager.builder.supply_chain import build_time
from packager.core.errors import Unavailable
from packager.core.gates import custom_gates
from packager.core.metrics import flipped, to_probabilities
from packager.core.status import StepStatus
from packager.core.target import (
    BuildContext,
    BuildOutput,
    Check,
    CrossCheck,
    CrossCheckResult,
    Status,
    Target,
)
from packager.runtime.runner import predict
from packager.runtime.validate import save_validation

LISTED_FLIPS = 20  # a cross-check's gate line names at most this many differing images


def new_state(s: Session, t: Target, built: BuildOutput, validation: ValidationInfo) -> BuildState:
    """The state a build starts from once its artifact exists: what report.json says of the
    model and the target before anything was measured."""
    return BuildState(
        target=t.name,
        summary=t.summary,
        precision=built.precision,
        built_at=build_time(),
        model={
            "name": s.cfg.model.name,
            "version": s.cfg.model.version,
            "source_sha256": s.info.sha256,
            "batch": s.info.batch,
            "gflops_per_sample": s.info.gflops_per_sample,
            "params": s.info.params,
            "card": {
                **asdict(s.cfg.model.card),
                "author": s.cfg.model.author,
                "license": s.cfg.model.license,
                "threshold_rationale": s.cfg.labels.threshold_rationale,
            },
        },
        validation=validation,
        details=built.details,
        notes=built.notes,
    )


def validate(
    s: Session,
    t: Target,
    ctx: BuildContext,
    bdir: Path,
    built: BuildOutput,
    reference: np.ndarray,
) -> BuildState:
    avail = t.availability()
    kind, proxy_label = "main", None
    limits = list(t.limitations)
    if not avail.validate.ok:
        proxy = t.proxy(built.runtime_config)
        if proxy is None:
            state = new_state(
                s, t, built, ValidationInfo(None, avail.validate.reason, None, None, limits)
            )
            state.step("validate", StepStatus.skipped, avail.validate.reason)
            return state
        kind, proxy_label = proxy.runner, proxy.label
    what = f"validating on {proxy_label or 'its runtime'} ({len(s.validation)} images)"
    with s.progress.step(t.name, what):
        scores, runtime = predict(
            t.name, bdir, built.runtime_config, s.x, s.info.fixed_batch, s.cfg.bench.timeout_s, kind
        )
    probs, clin, evidence, gates, per_finding = judge(
        s.cfg, s.validation, scores, s.output_kind, reference
    )
    checks = (
        gates
        + custom_gates(s.cfg.gates, s.validation.labels, probs, s.validation.metadata)
        + built.checks
        + run_cross_checks(t, ctx, bdir, built.runtime_config, probs)
    )
    not_validated = avail.validate.reason if proxy_label else ""
    state = new_state(
        s, t, built, ValidationInfo(runtime, not_validated, proxy_label, kind, limits)
    )
    state.checks = checks
    # A check that did not run is no failure here, nor a pass: the verdict makes the bundle not
    # validated, and this step names it.
    failed = [c for c in checks if c.ran and not c.passed]
    why = [failure(c) for c in failed]
    why += [f"{c.name} not run ({c.reason})" for c in checks if not c.ran]
    if proxy_label and not failed:
        why.append(f"proxy: {proxy_label}")
    state.step("validate", StepStatus.failed if failed else StepStatus.ok, "; ".join(why))
    save_validation(bdir, s.validation.labels, probs, reference)
    state.clinical = (
        asdict(clin)
        | {"split": s.validation.split, "output": s.output_kind, "evidence": evidence}
        | per_finding
    )
    return state


def run_cross_checks(
    t: Target, ctx: BuildContext, bdir: Path, options: dict[str, Any], probs: np.ndarray
) -> list[Check]:
    """The target's declared cross-checks, each run through the worker on the validation split
    with the build's own runtime config, its decisions compared with the validated `probs`."""
    n = len(probs)
    declared = t.cross_checks(options)
    outcome: list[CrossCheckResult | str] = []  # a result, or why it did not run
    for cc in declared:
        status = cc.available()
        if status.ok:
            try:
                outcome.append(_cross_check(t, ctx, bdir, options, cc, probs))
                continue
            except Unavailable as exc:  # the runtime it needs is not installed here
                status = Status(False, str(exc))
        outcome.append(f"{cc.name} did not run: {status.reason}")
        if cc.allowed(n) is None:  # no gate line to carry the reason
            ctx.progress.say(f"[{t.name}] {outcome[-1]}")
    t.cross_checked(ctx, bdir, probs, [r for r in outcome if isinstance(r, CrossCheckResult)])
    checks = []
    for cc, r in zip(declared, outcome, strict=True):
        allowed = cc.allowed(n)
        if allowed is None:
            continue
        limit = allowed if cc.value == "flips" else round((n - allowed) / n, 6)
        if isinstance(r, str):
            checks.append(Check(cc.name, None, limit, False, r, ran=False))
            continue
        flips = len(r.flipped)
        why = [f"{n - flips}/{n} decisions agree; max |dp| {r.max_abs_diff:.2e}", *r.notes]
        if r.flipped:
            more = " ..." if flips > LISTED_FLIPS else ""
            why.append(f"differ at indices {r.flipped[:LISTED_FLIPS]}{more}")
        value = flips if cc.value == "flips" else round((n - flips) / n, 6)
        checks.append(Check(cc.name, value, limit, flips <= allowed, "; ".join(why)))
    return checks


def _cross_check(
    t: Target,
    ctx: BuildContext,
    bdir: Path,
    options: dict[str, Any],
    cc: CrossCheck,
    probs: np.ndarray,
) -> CrossCheckResult:
    images = cc.inputs == "images"
    x = ctx.validation.images if images else ctx.x
    pos, thr = ctx.labels.operating_points()
    with (
        ctx.progress.step(t.name, f"cross-check {cc.name} ({len(x)} {cc.inputs})"),
        tempfile.TemporaryDirectory(prefix="packager-cross-") as tmp,
    ):
        where, opts = bdir, {**options, **cc.options}
        if cc.scratch is not None:  # auxiliary models, run by the bundle's own runtime.py
            where = Path(tmp)
            opts |= cc.scratch(ctx, where)
        outputs, runtime = predict(
            t.name,
            where,
            opts,
            x,
            None if images else ctx.model.fixed_batch,  # images go one request each
            ctx.timeout_s,
            cc.runner,
            code=bdir,
        )
    if cc.allowed(len(probs)) is None:  # measured only: outputs for Target.cross_checked
        return CrossCheckResult(cc, outputs, None, [], float("nan"), runtime)
    kind = ctx.output_kind if cc.output == "model" else "probabilities"
    other = to_probabilities(outputs, kind)
    diff = float(np.max(np.abs(other[:, pos] - probs[:, pos]))) if len(probs) else 0.0
    return CrossCheckResult(cc, outputs, other, flipped(probs, other, pos, thr), diff, runtime)
