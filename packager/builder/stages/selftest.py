"""Stage 4: record the self-test's golden set on the runtime validation used, then run the
bundle's own `predict.py --self-test` on the staged bundle, as a hospital will: a failure is a
gate."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from packager.builder.bundle import write_manifest
from packager.builder.session import Session
from packager.builder.stages.publish import manifest_meta
from packager.builder.state import BuildState
from packager.core import documents
from packager.core.config import LabelsConfig
from packager.core.status import Basis, CheckStatus, StepStatus
from packager.core.target import BuildOutput, Check, Target
from packager.runtime import golden
from packager.runtime.runner import run_worker


def selftest(
    s: Session, t: Target, bdir: Path, built: BuildOutput, state: BuildState, recorded: bool = False
) -> None:
    """`recorded`: the golden set is already in bdir (state.selftest describes it); only the
    self-test runs, again, on this bundle, replacing the earlier run's check."""
    if state.clinical is None:
        reason = "neither the target's runtime nor a proxy runs on this host"
        state.selftest = {"status": CheckStatus.not_run, "reason": reason}
        state.step("selftest", StepStatus.skipped, reason)
        return
    if recorded:
        assert state.selftest is not None  # recorded with the validation it is reused with
        state.checks = [c for c in state.checks if c.name != "selftest"]
        _replay(s, t, bdir, built, state, state.selftest)
        return
    cfg, kind = s.cfg, state.validation.kind
    pos, thr = cfg.labels.operating_points()
    samples = s.x[:0]
    if cfg.selftest.samples:
        with np.load(bdir / "validation.npz") as v:
            probs = v["probs"]
        samples = golden.samples_near_threshold(s.x, probs, pos, thr, cfg.selftest.samples)
    spec = {
        "fixed_batch": s.info.fixed_batch,
        "output": s.output_kind,
        "positive_index": pos,
        "threshold": thr,
        "floor": golden.floor_for(built.precision, kind != "main"),
        "near_threshold": cfg.selftest.near_threshold,
    }
    job = {
        "job": "golden",
        "target": t.name,
        "bundle": str(bdir),
        "options": built.runtime_config,
        "kind": kind,
        "spec": spec,
    }
    x = golden.synthetic_inputs(s.preprocess, cfg.selftest.synthetic)
    candidates = golden.raw_cases(s.preprocess)
    spec["raw_group"] = candidates["raw_group"].tolist()
    arrays = {"x": x, "samples": samples, "raw": golden.raw_inputs(bdir, candidates)}
    with s.progress.step(t.name, "recording the self-test golden set"):
        result = run_worker(job, cfg.bench.timeout_s, arrays)
    golden_set = {k: result.pop(f"golden_{k}") for k in ("x", "probs", "kinds", "raw_probs")}
    raw = golden.pick_raw(candidates, result.pop("golden_raw_chosen"))
    meta = {
        "precision": built.precision,
        "positive_index": pos,
        "threshold": thr,
        **multilabel_meta(cfg.labels),
        "floor": spec["floor"],
        "formats": list(s.preprocess.formats),
        "recorded_on": kind,
        "proxy": state.validation.proxy,
        "runtime": result["runtime"],
    }
    summary = golden.write_golden(bdir, result | golden_set, raw, meta)
    _replay(s, t, bdir, built, state, summary)


def multilabel_meta(labels: LabelsConfig) -> dict[str, Any]:
    """selftest.json of a multi-label model: no positive class, every finding's threshold."""
    if not labels.multilabel:
        return {}
    each = {n: labels.threshold_of(n) for n in labels.names}
    return {"positive_index": None, "threshold": labels.threshold, "thresholds": each}


def _replay(
    s: Session,
    t: Target,
    bdir: Path,
    built: BuildOutput,
    state: BuildState,
    summary: dict[str, Any],
) -> None:
    kind = state.validation.kind or "main"
    with s.progress.step(t.name, "self-test of the staged bundle (predict.py --self-test)"):
        check, record = run_selftest(bdir, kind, manifest_meta(s, t, built, state))
    summary["build_host"] = {"verdict": record.get("verdict"), "line": check.reason}
    state.selftest = summary
    state.checks = [*state.checks, check]
    state.step("selftest", StepStatus(check.status), check.reason)


def run_selftest(bdir: Path, kind: str, meta: dict[str, Any]) -> tuple[Check, dict[str, Any]]:
    # the self-test checks hashes first; rewritten when complete
    write_manifest(bdir, meta)
    with tempfile.TemporaryDirectory(prefix="packager-selftest-") as tmp:
        rec = Path(tmp) / "acceptance.json"
        cmd = [sys.executable, str(bdir / "predict.py"), "--self-test", "--record", str(rec)]
        proc = subprocess.run([*cmd, "--kind", kind], capture_output=True, text=True)
        # the bundle's own selftest.py wrote it: a record outside its model is a bug in what ships
        record = documents.read(rec, documents.Acceptance) if rec.exists() else {}
    line = (proc.stdout.strip() or proc.stderr.strip()).splitlines()[-1:] or ["no output"]
    # Without the integrity part: it names the staged manifest's sha256, which the final
    # manifest (written after the report) replaces.
    reason = line[0].split("; integrity: ")[0].split("; record: ")[0]
    label = "golden set replayed on the staged bundle" + (f" ({kind})" if kind != "main" else "")
    if proc.returncode not in (0, 1, 3):
        reason = f"predict.py --self-test exited {proc.returncode}: {reason}"
    check = Check(
        "selftest",
        label,
        "identical decisions, probabilities within tolerance",
        proc.returncode == 0,
        reason,
        ran=proc.returncode != 3,
        decided_on=Basis.every,
    )
    return check, record
