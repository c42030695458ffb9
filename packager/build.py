"""The one path every build takes: convert, validate on the target's runtime, benchmark,
gate, then publish the bundle or keep it under DIR/.failed/ with its report."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from packager import __version__, documents, registry, search, selftest
from packager.bench import batch_of, best_throughput
from packager.bundle import (
    ensure_writable,
    locked,
    make_tarball,
    new_stage,
    publish,
    write_manifest,
)
from packager.documents import Step
from packager.errors import ConversionFailed, ModelRefused, PackagerError, Unavailable, UserError
from packager.evidence import for_build as clinical_evidence
from packager.gates import check_custom, custom_gates, metric_gates
from packager.hostinfo import host_facts
from packager.metrics import flipped, to_probabilities
from packager.profile import CALLS, RAW, top_operators
from packager.quiet import stdout_to_stderr
from packager.registry import get
from packager.render import render_bundle_docs
from packager.runner import WorkerFailed, predict, run_worker
from packager.schema import from_dict
from packager.session import Session
from packager.shipped import SHIPPED
from packager.shipped.integrity import file_sha256
from packager.signing import check_private_key, sign_dir
from packager.status import (
    BenchStatus,
    CheckStatus,
    ManifestStatus,
    RefusalStatus,
    ReportStatus,
    ResultStatus,
    StepStatus,
)
from packager.supply_chain import build_time, write_sbom_and_provenance
from packager.target import (
    BuildContext,
    BuildOutput,
    Check,
    CrossCheck,
    CrossCheckResult,
    Status,
    Target,
)
from packager.validate import evaluate, gate_checks, save_validation

PREPROCESS_SRC = Path(__file__).with_name("preprocess.py")
# every bundle; runtime.py and its siblings besides
BUNDLE_CODE = ("predict.py", "selftest.py", "integrity.py")
# A target that cannot take this model: refused by its support check or its converter.
REFUSED = tuple(RefusalStatus)
CONVERSION_LOG = "conversion.log"
# packager/ and targets/: an exception raised in their code is a bug, never a converter's refusal;
# one raised in an installed library (LIBRARIES) during a conversion is that converter's failure.
OUR_CODE = (
    Path(__file__).resolve().parent,
    Path(sys.modules[Target.__module__].__file__).resolve().parent,
)
LIBRARIES = tuple({Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")})


@dataclass
class TargetResult:
    target: str
    status: ResultStatus
    reason: str = ""
    bundle: str | None = None
    report: dict[str, Any] | None = field(default=None, repr=False)
    log: str | None = None  # a refused target's full converter / checker log

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "status": self.status,
            "reason": self.reason,
            "bundle": self.bundle,
            "log": self.log,
        }


def target_options(target: Target, s: Session, int8: bool) -> Any:
    opts = from_dict(target.Options, s.cfg.targets.get(target.name), f"targets.{target.name}")
    if int8 and target.int8_option:
        key, value = target.int8_option
        setattr(opts, key, value)
    return opts


def bundle_root(s: Session) -> Path:
    return Path(s.cfg.output.dir) / f"{s.cfg.model.name}-{s.cfg.model.version}"


def check_targets(cfg_targets: dict[str, Any], names: list[str]) -> None:
    # A typo in [targets.<name>] is an error, not a silent default.
    for name in [*cfg_targets, *names]:
        registry.check_name(name)


def build(
    s: Session, names: list[str], force: bool, bench: bool, int8: bool, explicit: bool
) -> list[TargetResult]:
    check_targets(s.cfg.targets, names)
    check_custom(s.cfg.gates)
    if s.cfg.sign.key:  # a bad key fails here, before any conversion and before dist/ exists
        check_private_key(Path(s.cfg.sign.key))
    ensure_writable(Path(s.cfg.output.dir))
    root = bundle_root(s)
    if not force:
        existing = [n for n in names if (root / n).exists()]
        if existing:
            raise UserError(f"{root / existing[0]} already exists; pass --force to replace it")
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
    options = {t.name: target_options(t, s, int8) for t in targets}  # validate all before work
    for t in list(targets):  # the cheap support check: a refused target is never converted
        verdict = t.accepts(s.info, options[t.name])
        if not verdict.ok:
            targets.remove(t)
            results.append(
                _refused(s, t.name, RefusalStatus.unsupported_model, verdict.reason, verdict.log)
            )
    if not targets:
        return _in_order(results, names)
    try:
        reference = s.reference
    except WorkerFailed as exc:  # the source model itself is broken: bad input, not a gate
        raise UserError(
            f"the model does not run on the reference runtime ({exc}); fix or re-export it"
        ) from None
    for t in targets:
        try:
            # precision search (issue 16): "auto" tries every candidate, publishes the winner
            one = search.run if search.wants(t, options[t.name]) else _build_one
            results.append(one(s, t, options[t.name], reference, bench, int8))
        except UserError:
            raise
        except ModelRefused as exc:  # the converter's refusal: this target's result, not a crash
            results.append(_refused(s, t.name, exc.status, str(exc), exc.log))
        except Unavailable as exc:
            s.progress.say(f"[{t.name}] skipped: {exc}")
            results.append(TargetResult(t.name, ResultStatus.unavailable, str(exc)))
        except Exception as exc:  # with --all, one broken target must not stop the others
            if explicit:
                raise
            if not isinstance(exc, PackagerError):
                traceback.print_exc()  # a bug stays visible
            results.append(TargetResult(t.name, ResultStatus.error, f"{type(exc).__name__}: {exc}"))
    return _in_order(results, names)


def _in_order(results: list[TargetResult], names: list[str]) -> list[TargetResult]:
    return sorted(results, key=lambda r: names.index(r.target))


def _build_one(
    s: Session,
    t: Target,
    opts: Any,
    reference: np.ndarray,
    bench: bool,
    int8: bool,
    convert: Callable[[BuildContext, Path], BuildOutput] | None = None,  # search: reuse a build
    extra: dict[str, Any] | None = None,  # search: the candidates table for report.json
    validated: tuple[dict[str, Any], list[Step]] | None = None,  # search: the winner's validation
) -> TargetResult:
    out = Path(s.cfg.output.dir)
    stage = new_stage(out, t.name)
    bdir = stage / t.name
    steps: list[Step] = []
    try:
        ctx = s.context(opts, int8)
        with (
            s.progress.step(t.name, "converting"),
            stdout_to_stderr(s.progress.enabled),
            _converter_errors(),
        ):
            built = (convert or t.build)(ctx, bdir)
        steps.append(Step("convert", StepStatus.ok, f"precision {built.precision}"))
        if int8 and not t.int8_option:
            built.notes.append(
                "--int8 is not supported by this target; built its default precision"
            )
        artifact_mb = _artifact_mb(bdir, built)
        code = _write_runtime(s, t, bdir, built)
        if validated is None:
            report = _validate(s, t, ctx, bdir, built, reference, steps)
        else:  # the search validated these very files (copied with validation.npz and golden set)
            report, done = validated
            steps += done
        report["code"] = code
        report.update(extra or {})
        _selftest(s, t, bdir, built, report, steps, recorded=validated is not None)
        report["benchmark"] = _bench(s, t, bdir, built, report, bench, steps)
        report["benchmark"]["model_size_mb"] = artifact_mb
        finish_report(report, [asdict(st) for st in steps])
        documents.write(bdir / "report.json", documents.Report, report)
        render_bundle_docs(bdir, report, s)
        write_sbom_and_provenance(bdir, report, _manifest_meta(s, t, built, report))
        write_manifest(bdir, _manifest_meta(s, t, built, report))
        if s.cfg.sign.key and report["status"] != ReportStatus.failed:
            sign_dir(bdir, Path(s.cfg.sign.key))  # before publish: published already signed
        make_tarball(bdir, stage / f"{t.name}.tar.gz")
        root = bundle_root(s)
        with locked(out):
            if report["status"] == ReportStatus.failed:
                final = publish(stage, out / ".failed" / root.name, t.name)
            else:
                final = publish(stage, root, t.name)
        s.progress.say(f"[{t.name}] {report['status']}: {final}")
        return TargetResult(
            t.name, ResultStatus(report["status"]), report["reason"], str(final), report
        )
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


@contextmanager
def _converter_errors() -> Iterator[None]:
    """An exception raised inside a converter library (OpenVINO, ONNX Runtime, coremltools,
    torch.export, TensorRT...) during a target's conversion is that target's conversion failure,
    with the traceback as its log; one raised in packager's or a target's own code is a bug and
    keeps its traceback."""
    try:
        yield
    except (PackagerError, WorkerFailed):
        raise
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        where = Path(frames[-1].filename).resolve() if frames else None
        ours = where is None or any(where.is_relative_to(d) for d in OUR_CODE)
        if ours or not any(where.is_relative_to(d) for d in LIBRARIES):
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise ConversionFailed(
            f"the converter failed ({type(exc).__name__} in {where.parent.name}/{where.name}): "
            f"{text[:300]}",
            log="".join(traceback.format_exception(exc)),
        ) from exc


def _refused(s: Session, target: str, status: RefusalStatus, reason: str, log: str) -> TargetResult:
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
            final = publish(stage, out / ".failed" / bundle_root(s).name, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return TargetResult(target, ResultStatus(status), reason, None, log=str(final / CONVERSION_LOG))


def _artifact_mb(bdir: Path, built: BuildOutput) -> float:
    files = [bdir / a for a in built.artifacts] if built.artifacts else list(bdir.rglob("*"))
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


def install_code(t: Target, dest: Path) -> dict[str, str]:
    """Copy the code a bundle runs into `dest`, verbatim: the target's runtime.py, the shipped
    modules it imports, preprocess.py, predict.py, selftest.py and integrity.py. Returns {file:
    sha256}."""
    sources = {
        "runtime.py": t.runtime_source(),
        "preprocess.py": PREPROCESS_SRC,
        **{name: SHIPPED / name for name in (*t.shipped, *BUNDLE_CODE)},
    }
    for name, src in sources.items():
        shutil.copyfile(src, dest / name)
    (dest / "predict.py").chmod(0o755)
    return {name: file_sha256(dest / name) for name in sorted(sources)}


def requirements(t: Target, runner_options: dict[str, Any], formats: tuple[str, ...] = ()) -> str:
    """requirements.txt: what predict.py needs, at the versions the bundle was validated with
    (pydicom where the bundle reads DICOM: its self-test decodes DICOM files)."""
    from importlib.metadata import PackageNotFoundError, version

    lines = []
    dicom = ["pydicom"] if "dicom" in formats else []
    for dist in ("numpy", "pillow", *dicom, *t.requirements(runner_options)):
        try:
            lines.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:  # not installed on the build host (e.g. tensorrt)
            lines.append(dist)
    return "\n".join(lines) + "\n"


def _write_runtime(s: Session, t: Target, bdir: Path, built: BuildOutput) -> dict[str, str]:
    code = install_code(t, bdir)
    (bdir / "preprocess.json").write_text(s.preprocess.to_json())
    reqs = requirements(t, built.runner_options, s.preprocess.formats)
    (bdir / "requirements.txt").write_text(reqs)
    runtime = {
        "target": t.name,
        "precision": built.precision,
        "runner_options": built.runner_options,
        "labels": s.cfg.labels.names,
        "positive": s.cfg.labels.positive,
        "threshold": s.cfg.labels.threshold,
        "output": s.output_kind,
        "fixed_batch": s.info.fixed_batch,
        "input": asdict(s.info.input),
    }
    documents.write(bdir / "runtime.json", documents.Runtime, runtime)
    return code


def _validate(
    s: Session,
    t: Target,
    ctx: BuildContext,
    bdir: Path,
    built: BuildOutput,
    reference: np.ndarray,
    steps: list[Step],
) -> dict[str, Any]:
    avail = t.availability()
    kind, proxy_label = "main", None
    if not avail.validate.ok:
        proxy = t.proxy(built.runner_options)
        if proxy is None:
            steps.append(Step("validate", StepStatus.skipped, avail.validate.reason))
            return _report_head(s, t, built, None, [], avail.validate.reason, None)
        kind, proxy_label = proxy.runner, proxy.label
    what = f"validating on {proxy_label or 'its runtime'} ({len(s.validation)} images)"
    with s.progress.step(t.name, what):
        scores, runtime = predict(
            t.name, bdir, built.runner_options, s.x, s.info.fixed_batch, s.cfg.bench.timeout_s, kind
        )
    probs, clin = evaluate(scores, s.validation.labels, s.cfg, s.output_kind, reference)
    evidence, evidence_checks = clinical_evidence(s, probs, reference)
    checks = (
        gate_checks(clin, s.cfg, has_reference=True)
        + metric_gates(clin, evidence, s.cfg.gates)
        + custom_gates(s.cfg.gates, s.validation.labels, probs, s.validation.metadata)
        + evidence_checks
        + built.checks
        + run_cross_checks(t, ctx, bdir, built.runner_options, probs)
    )
    # A check that did not run is no failure here, nor a pass: finish_report's verdict makes
    # the bundle not validated, and this step names it.
    failed = [c for c in checks if c.ran and not c.passed]
    why = [
        f"{c.name} {c.value} vs {c.limit}" if c.value is not None else f"{c.name} {c.reason}"
        for c in failed
    ]
    why += [f"{c.name} not run ({c.reason})" for c in checks if not c.ran]
    if proxy_label and not failed:
        why.append(f"proxy: {proxy_label}")
    steps.append(Step("validate", StepStatus.failed if failed else StepStatus.ok, "; ".join(why)))
    save_validation(bdir, s.validation.labels, probs, reference)
    clinical = asdict(clin)
    clinical["split"] = s.validation.split
    clinical["output"] = s.output_kind
    clinical["evidence"] = evidence
    report = _report_head(
        s, t, built, clinical, checks, avail.validate.reason if proxy_label else "", runtime
    )
    report["validation"]["proxy"] = proxy_label
    report["validation"]["kind"] = kind
    return report


LISTED_FLIPS = 20  # a cross-check's gate line names at most this many differing images


def run_cross_checks(
    t: Target, ctx: BuildContext, bdir: Path, options: dict[str, Any], probs: np.ndarray
) -> list[Check]:
    """The target's declared cross-checks, each run through the worker on the validation split
    with the build's own runner options, its decisions compared with the validated `probs`."""
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
    labels = ctx.config.labels
    pos, thr = labels.positive_index, labels.threshold
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
            ctx.config.bench.timeout_s,
            cc.runner,
            code=bdir,
        )
    if cc.allowed(len(probs)) is None:  # measured only: outputs for Target.cross_checked
        return CrossCheckResult(cc, outputs, None, [], float("nan"), runtime)
    kind = ctx.output_kind if cc.output == "model" else "probabilities"
    other = to_probabilities(outputs, kind)
    diff = float(np.max(np.abs(other[:, pos] - probs[:, pos]))) if len(probs) else 0.0
    return CrossCheckResult(cc, outputs, other, flipped(probs, other, pos, thr), diff, runtime)


def _selftest(
    s: Session,
    t: Target,
    bdir: Path,
    built: BuildOutput,
    report: dict[str, Any],
    steps: list[Step],
    recorded: bool = False,
) -> None:
    """Record the golden set on the runtime validation used, then run the bundle's own
    `predict.py --self-test` on the staged bundle, as a hospital will: a failure is a gate.
    `recorded`: the golden set is already in bdir (report["selftest"] describes it); only the
    self-test runs, again, on this bundle, replacing the earlier run's check."""
    if report["clinical"] is None:
        reason = "neither the target's runtime nor a proxy runs on this host"
        report["selftest"] = {"status": CheckStatus.not_run, "reason": reason}
        steps.append(Step("selftest", StepStatus.skipped, reason))
        return
    if recorded:
        checks = report["gates"]["checks"]
        checks[:] = [c for c in checks if c["name"] != "selftest"]
        _replay_selftest(s, t, bdir, built, report, report["selftest"], steps)
        return
    cfg, kind = s.cfg, report["validation"]["kind"]
    pos, thr = cfg.labels.positive_index, cfg.labels.threshold
    samples = s.x[:0]
    if cfg.selftest.samples:
        with np.load(bdir / "validation.npz") as v:
            probs = v["probs"]
        samples = selftest.samples_near_threshold(s.x, probs, pos, thr, cfg.selftest.samples)
    spec = {
        "fixed_batch": s.info.fixed_batch,
        "output": s.output_kind,
        "positive_index": pos,
        "threshold": thr,
        "floor": selftest.floor_for(built.precision, kind != "main"),
        "near_threshold": cfg.selftest.near_threshold,
    }
    job = {
        "job": "golden",
        "target": t.name,
        "bundle": str(bdir),
        "options": built.runner_options,
        "kind": kind,
        "spec": spec,
    }
    x = selftest.synthetic_inputs(s.preprocess, cfg.selftest.synthetic)
    candidates = selftest.raw_cases(s.preprocess)
    spec["raw_group"] = candidates["raw_group"].tolist()
    arrays = {"x": x, "samples": samples, "raw": selftest.raw_inputs(bdir, candidates)}
    with s.progress.step(t.name, "recording the self-test golden set"):
        result = run_worker(job, cfg.bench.timeout_s, arrays)
    golden = {k: result.pop(f"golden_{k}") for k in ("x", "probs", "kinds", "raw_probs")}
    raw = selftest.pick_raw(candidates, result.pop("golden_raw_chosen"))
    meta = {
        "precision": built.precision,
        "positive_index": pos,
        "threshold": thr,
        "floor": spec["floor"],
        "formats": list(s.preprocess.formats),
        "recorded_on": kind,
        "proxy": report["validation"]["proxy"],
        "runtime": result["runtime"],
    }
    summary = selftest.write_golden(bdir, result | golden, raw, meta)
    _replay_selftest(s, t, bdir, built, report, summary, steps)


def _replay_selftest(
    s: Session,
    t: Target,
    bdir: Path,
    built: BuildOutput,
    report: dict[str, Any],
    summary: dict[str, Any],
    steps: list[Step],
) -> None:
    kind = report["validation"]["kind"]
    with s.progress.step(t.name, "self-test of the staged bundle (predict.py --self-test)"):
        check, record = _run_selftest(bdir, kind, _manifest_meta(s, t, built, report))
    summary["build_host"] = {"verdict": record.get("verdict"), "line": check.reason}
    report["selftest"] = summary
    report["gates"] = gates([*report["gates"]["checks"], check.to_dict()])
    steps.append(Step("selftest", StepStatus(check.status), check.reason))


def _run_selftest(bdir: Path, kind: str, meta: dict[str, Any]) -> tuple[Check, dict[str, Any]]:
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
    )
    return check, record


def _report_head(
    s: Session,
    t: Target,
    built: BuildOutput,
    clinical: dict[str, Any] | None,
    checks: list[Check],
    not_validated: str,
    runtime: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "target": t.name,
        "summary": t.summary,
        "precision": built.precision,
        "built_at": build_time(),
        "model": {
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
        "validation": {
            "runtime": runtime,
            "proxy": None,
            "not_validated": not_validated,
            "limitations": list(t.limitations),
        },
        "clinical": clinical,
        "gates": gates([c.to_dict() for c in checks]),
        "details": built.details,
        "notes": built.notes,
    }


def _bench(
    s: Session,
    t: Target,
    bdir: Path,
    built: BuildOutput,
    report: dict[str, Any],
    bench: bool,
    steps: list[Step],
) -> dict[str, Any]:
    avail = t.availability()
    reason = (
        "--no-bench given"
        if not bench
        else "a gate failed"
        if report["gates"]["checks"] and not report["gates"]["passed"]
        else ""
        if avail.bench.ok
        else avail.bench.reason
    )
    if reason:
        steps.append(Step("benchmark", StepStatus.skipped, reason))
        return {"status": BenchStatus.skipped, "reason": reason, "host": host_facts()}
    b = s.cfg.bench
    sizes = [s.info.fixed_batch] if s.info.fixed_batch else b.batch_sizes
    sample = s.x[: max(sizes)]
    spec = {
        "batch_sizes": sizes,
        "warmup": b.warmup,
        "seconds": b.seconds,
        "min_iterations": b.min_iterations,
        "stability": b.stability,
        "max_seconds": b.max_seconds,
    }
    try:
        with s.progress.step(t.name, f"benchmarking batch sizes {sizes}"):
            main = bench_run(t, bdir, built.runner_options, spec, sample, b.timeout_s)
            variants = []
            for label, override in t.bench_variants(built.runner_options):
                r = bench_run(
                    t, bdir, {**built.runner_options, **override}, spec, sample, b.timeout_s
                )
                variants.append({"label": label, **r})
        with s.progress.step(t.name, "profiling operators at batch 1"):
            main["profile"] = profile_run(
                t,
                bdir,
                built.runner_options,
                batch_of(sample, s.info.fixed_batch or 1),
                b.timeout_s,
            )
        if b.open_loop.enabled:
            o = asdict(b.open_loop)
            what = f"open-loop load, p95 <= {o['sla_ms']} ms"
            with s.progress.step(t.name, what):
                main["open_loop"] = open_loop_run(
                    t, bdir, built.runner_options, o, s.x, s.info.fixed_batch, b.timeout_s
                )
    except PackagerError as exc:
        steps.append(Step("benchmark", StepStatus.failed, str(exc)))
        return {"status": BenchStatus.failed, "reason": str(exc), "host": host_facts()}
    steps.append(Step("benchmark", StepStatus.ok, ""))
    best = best_throughput(main["batches"])
    return {
        "status": BenchStatus.ok,
        "reason": "",
        "host": {
            **host_facts(),
            "runtime_versions": {
                main["runtime"].get("runtime", "?"): main["runtime"].get("version")
            },
        },
        **main,
        "best": {"batch_size": best["batch_size"], "throughput_sps": best["throughput_sps"]}
        if best
        else None,
        "variants": variants,
    }


def bench_run(
    t: Target,
    bdir: Path,
    options: dict[str, Any],
    spec: dict[str, Any],
    sample: np.ndarray,
    timeout: float,
) -> dict[str, Any]:
    job = {"job": "bench", "target": t.name, "bundle": str(bdir), "options": options, "bench": spec}
    return run_worker(job, timeout, {"x": sample})


def profile_run(
    t: Target, bdir: Path, options: dict[str, Any], x: np.ndarray, timeout: float
) -> dict[str, Any]:
    """The runtime's own per-operator profile of `x` (packager.profile), its raw form written
    into the bundle as profile.json. A profiler that fails leaves the benchmark standing: the
    profile says it did not run, and why."""
    job = {"job": "profile", "target": t.name, "bundle": str(bdir), "options": options}
    job["calls"] = CALLS
    try:
        result = run_worker(job, timeout, {"x": x}, {RAW: bdir / RAW})
    except PackagerError as exc:
        return top_operators(None, f"the profiler failed: {exc}")
    return top_operators(result["profile"], batch=len(x))


def open_loop_run(
    t: Target,
    bdir: Path,
    options: dict[str, Any],
    spec: dict[str, Any],
    x: np.ndarray,
    fixed_batch: int | None,
    timeout: float,
) -> dict[str, Any]:
    """packager.openloop.search on the bundle's runtime, in the worker ([bench.open_loop])."""
    job = {
        "job": "openloop",
        "target": t.name,
        "bundle": str(bdir),
        "options": options,
        "open_loop": spec,
        "fixed_batch": fixed_batch,
    }
    return run_worker(job, timeout, {"x": x[: fixed_batch or spec["max_batch"]]})


def gates(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """report.json's gates: they pass when there are checks and every one passed."""
    return {"passed": bool(checks) and all(c["passed"] for c in checks), "checks": checks}


def finish_report(report: dict[str, Any], steps: list[dict[str, Any]]) -> None:
    """The verdict and its reason from the gates, and the steps: the last part of every
    report.json (a build's, and one `packager validate` completes in place)."""
    checks = report["gates"]["checks"]
    # A check that did not run is never a pass, and not a failure either: it leaves the bundle
    # not validated, with the reason.
    not_run = [c for c in checks if c.get("status") == CheckStatus.not_run]
    failed = [c for c in checks if not c["passed"] and c not in not_run]
    v = report["validation"]
    status: ReportStatus
    if failed:
        status = ReportStatus.failed
        reason = "gate failed: " + "; ".join(
            f"{c['name']} = {c['value']} (limit {c['limit']})"
            if c["value"] is not None
            else f"{c['name']} {c['reason']} (limit {c['limit']})"
            for c in failed
        )
    elif v["not_validated"] or not_run:
        status = ReportStatus.not_validated
        why = [v["not_validated"]] if v["not_validated"] else []
        why += [f"{c['name']} not run ({c['reason']})" for c in not_run]
        reason = f"not validated: {'; '.join(why)}" + (
            f" (proxy check passed on {v['proxy']})" if v["proxy"] else ""
        )
    else:
        status, reason = ReportStatus.passed, "every gate passed on the target's own runtime"
    report["status"], report["reason"] = status, reason
    report["steps"] = steps


def _manifest_meta(
    s: Session, t: Target, built: BuildOutput, report: dict[str, Any]
) -> dict[str, Any]:
    runtime = (report["validation"] or {}).get("runtime") or {}
    status = report.get("status", ManifestStatus.staged)
    return {
        "name": s.cfg.model.name,
        "version": s.cfg.model.version,
        "target": t.name,
        "precision": built.precision,
        "status": status,
        "source_model": {"file": s.model_path.name, "sha256": s.info.sha256},
        "data": {
            "sha256": s.validation.sha256,
            "split": s.validation.split,
            "n": len(s.validation),
        },
        "config": {k: v for k, v in s.cfg.to_dict().items() if k not in ("output", "sign")}
        | {
            "model": {k: v for k, v in s.cfg.to_dict()["model"].items() if k != "path"},
            "data": {k: v for k, v in s.cfg.to_dict()["data"].items() if k != "path"},
        },
        "tool": {"packager": __version__},
        "runtime": runtime,
        "details": built.details,  # what the artifact is tied to (e.g. the GPU of an engine)
        "validated_by": {"host": host_facts(), "status": status},
    }
