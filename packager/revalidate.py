"""`packager validate` and `packager bench` on an existing bundle.

Two uses of `validate`, told apart by the data:
- on the bundle's own validation data (e.g. a Core ML bundle built on Linux, validated later on
  a Mac): the report, manifest and tarball are completed in place;
- on any other data, or with --labels/--out: site acceptance. A hospital re-validates the bundle
  on its own images with only what the bundle ships (preprocess.py/.json, runtime.json's labels
  and threshold, the gates in its manifest): a site validation report is written next to the
  bundle or in --out, and the bundle itself is left byte for byte as shipped.

Either way the images are streamed (packager.stream): read, preprocessed and inferred in chunks.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from packager import __version__, documents
from packager.build import Step, bench_run, finish_report, gates, open_loop_run
from packager.bundle import LEGACY_SIGNATURE, MANIFEST, SIGNATURE, make_tarball, write_manifest
from packager.config import Config, parse_config
from packager.data import Dataset, open_dataset
from packager.errors import Unavailable, UserError
from packager.evidence import check_categories, for_data
from packager.gates import check_custom, custom_gates, metric_gates
from packager.hostinfo import host_facts
from packager.preprocess import Preprocess
from packager.progress import Progress
from packager.registry import get
from packager.render import md_escape as md
from packager.render import render_reports
from packager.site_gates import PASS, rate, site_gates, site_verdict
from packager.status import ReportStatus, StepStatus
from packager.stream import StreamResult, stream_predict
from packager.supply_chain import write_sbom_and_provenance
from packager.target import Check
from packager.trust import require
from packager.validate import evaluate, gate_checks, is_clinical_gate, save_validation

# What `validate` and `bench` read from a bundle, checked against the model it was written with.
BUNDLE_DOCUMENTS = {
    "runtime.json": documents.Runtime,
    "report.json": documents.Report,
    MANIFEST: documents.Manifest,
}


def _read(bundle: Path, name: str) -> dict[str, Any]:
    if not (bundle / name).is_file():
        raise UserError(f"{bundle} has no {name}; pass a bundle directory made by packager build")
    return documents.load(
        bundle / name, BUNDLE_DOCUMENTS[name], "rebuild the bundle with this packager version"
    )


def revalidate(
    bundle: Path,
    data: Path | None,
    split: str | None,
    progress: Progress,
    labels_csv: Path | None = None,
    out: Path | None = None,
    group_by: list[str] | None = None,
    pubkey: Path | None = None,
) -> dict[str, Any]:
    """`group_by`: the labels.csv columns to group by (--group-by); None: the bundle's own
    [data] group_by, those of its columns this data has."""
    if not bundle.is_dir():
        raise UserError(f"{bundle} is not a bundle directory; extract the tarball first")
    require(bundle, pubkey)  # before anything reads, imports or runs its files
    runtime, report, manifest = (
        _read(bundle, n) for n in ("runtime.json", "report.json", MANIFEST)
    )
    target = get(runtime["target"])
    avail = target.availability().validate
    if not avail.ok:
        raise Unavailable(f"{target.name} cannot be validated on this host: {avail.reason}")
    cfg = _bundle_config(bundle, manifest, runtime)
    check_custom(cfg.gates)
    split = split or manifest["data"]["split"]
    if data is None:
        raise UserError(
            f"pass --data: the bundle was validated on split '{manifest['data']['split']}' of a "
            f"dataset with sha256 {manifest['data']['sha256'][:16]}…"
        )
    if out is not None and out.resolve().is_relative_to(bundle.resolve()):
        raise UserError(f"--out {out} is inside the bundle; write the site report elsewhere")
    pre = Preprocess.from_json(bundle / "preprocess.json")
    columns = list(group_by) if group_by else cfg.data.group_by
    source = open_dataset(data, split, runtime["labels"], labels_csv, columns, not group_by)
    for name, values in source.metadata.items():  # before any image is read or written
        check_categories(name, values)
    with progress.step(target.name, f"validating on this host ({len(source)} images, streamed)"):
        res = stream_predict(
            target.name,
            bundle,
            runtime["runner_options"],
            runtime["fixed_batch"],
            source,
            pre,
            cfg.bench.timeout_s,
        )
    same_data = res.sha256 == manifest["data"]["sha256"] and split == manifest["data"]["split"]
    if same_data and out is None and labels_csv is None and not group_by:
        images = source.images if isinstance(source, Dataset) else None
        return _complete_in_place(bundle, report, manifest, runtime, cfg, res, split, images)
    grouping = {
        "source": "--group-by" if group_by else "the bundle's [data] group_by",
        "columns": sorted(res.metadata),
        "not_found": [c for c in columns if c not in res.metadata],
    }
    return site_acceptance(bundle, report, manifest, runtime, cfg, res, data, split, out, grouping)


def _bundle_config(bundle: Path, manifest: dict[str, Any], runtime: dict[str, Any]) -> Config:
    """The gates and timeouts the bundle was built with; labels and threshold as it ships them."""
    cfg = parse_config(manifest["config"], bundle)
    cfg.labels.names = list(runtime["labels"])
    cfg.labels.positive = runtime["positive"]
    cfg.labels.threshold = float(runtime["threshold"])
    return cfg


def _complete_in_place(
    bundle: Path,
    report: dict[str, Any],
    manifest: dict[str, Any],
    runtime: dict[str, Any],
    cfg: Config,
    res: StreamResult,
    split: str,
    images: np.ndarray | None,
) -> dict[str, Any]:
    reference = None
    if (bundle / "validation.npz").exists():
        with np.load(bundle / "validation.npz") as v:
            reference = v["reference"] if "reference" in v.files else None
    probs, clin = evaluate(res.scores, res.labels, cfg, runtime["output"], reference)
    ds = Dataset(images, res.labels, split, res.sha256, metadata=res.metadata)
    evidence, evidence_checks = _evidence(cfg, ds, probs, reference)
    checks = [
        c.to_dict()
        for c in gate_checks(clin, cfg, has_reference=reference is not None)
        + metric_gates(clin, evidence, cfg.gates)
        + custom_gates(cfg.gates, res.labels, probs, res.metadata)
        + evidence_checks
    ]
    # The build's own checks (e.g. a converted model read back) still hold; the clinical gates
    # are this host's now (every name gate_checks can give counts as clinical).
    checks += [c for c in report["gates"]["checks"] if not is_clinical_gate(c["name"])]
    clinical = asdict(clin) | {"split": split, "output": runtime["output"], "evidence": evidence}
    report |= {
        "clinical": clinical,
        "gates": gates(checks),
        "validation": {"runtime": res.runtime, "proxy": None, "not_validated": ""},
    }
    steps = [*report.pop("steps", []), asdict(Step("revalidate", StepStatus.ok))]
    finish_report(report, steps)
    documents.write(bundle / "report.json", documents.Report, report)
    save_validation(bundle, res.labels, probs, reference)
    render_reports(bundle, report, images)
    for sig in (SIGNATURE, LEGACY_SIGNATURE):  # the old signature no longer matches
        (bundle / sig).unlink(missing_ok=True)
    meta = {k: v for k, v in manifest.items() if k not in ("files", "schema_version")}
    meta["status"] = report["status"]
    meta["validated_by"] = {
        "host": host_facts(),
        "status": report["status"],
        "runtime": res.runtime,
    }
    write_sbom_and_provenance(bundle, report, meta)  # the SBOM's metrics are this host's now
    write_manifest(bundle, meta)
    tar = bundle.with_name(bundle.name + ".tar.gz")
    if tar.exists():
        make_tarball(bundle, tar)
    return report


def _evidence(
    cfg: Config, ds: Dataset, probs: np.ndarray, reference: np.ndarray | None
) -> tuple[dict[str, Any], list[Check]]:
    """This host's evidence. The subgroup labels are files of the build host: where they are not
    at hand (or are for other data), the subgroups and their gates are not re-run, and the
    report says so instead of keeping the build host's verdicts."""
    try:
        return for_data(cfg, ds, probs, reference)
    except UserError as exc:
        ev, checks = for_data(cfg, ds, probs, reference, groups={})
        ev["subgroups_not_run"] = f"not re-run by packager validate: {exc}"
        return ev, checks


def site_report_paths(bundle: Path, manifest: dict[str, Any], out: Path | None) -> dict[str, Path]:
    stem = f"site-validation-{manifest['name']}-{manifest['version']}-{manifest['target']}"
    where = out if out is not None else bundle.resolve().parent
    return {ext: where / f"{stem}.{ext}" for ext in ("json", "md", "npz")}


def site_acceptance(
    bundle: Path,
    report: dict[str, Any],
    manifest: dict[str, Any],
    runtime: dict[str, Any],
    cfg: Config,
    res: StreamResult,
    data: Path,
    split: str,
    out: Path | None,
    grouping: dict[str, Any],
) -> dict[str, Any]:
    """The site validation report: this site's data through the shipped bundle, gated on what
    the data can support (packager.site_gates)."""
    probs, clin = evaluate(res.scores, res.labels, cfg, runtime["output"], None)
    build_clinical = report.get("clinical") or {}
    checks, not_applied = site_gates(clin, cfg, build_clinical)
    c = clin.confusion
    rates = {
        "sensitivity": rate(c["tp"], c["tp"] + c["fn"]),
        "specificity": rate(c["tn"], c["tn"] + c["fp"]),
    }
    verdict, reason = site_verdict(checks, rates["specificity"])
    pos = cfg.labels.positive_index
    n = len(res.labels)
    site = {
        "schema_version": 1,
        "kind": "site-validation",
        "status": ReportStatus.passed if verdict == PASS else ReportStatus.failed,
        "verdict": verdict,
        "reason": reason,
        "bundle": {
            "path": str(bundle.resolve()),
            "name": manifest["name"],
            "version": manifest["version"],
            "target": manifest["target"],
            "precision": manifest.get("precision"),
            "manifest_sha256": hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest(),
            "signed": (bundle / SIGNATURE).exists(),
            "build_status": report.get("status"),
            "build_clinical": {
                k: build_clinical.get(k)
                for k in (
                    "n",
                    "positives",
                    "sensitivity",
                    "reference_sensitivity",
                    "specificity",
                    "split",
                )
            },
        },
        "data": {
            "path": str(Path(data).resolve()),
            "split": split,
            "n": n,
            "positives": clin.positives,
            "sha256": res.sha256,
            "same_as_build": res.sha256 == manifest["data"]["sha256"],
            "metadata_columns": sorted(res.metadata),
            "group_by": grouping,
        },
        "decision": {
            "positive": cfg.labels.positive,
            "threshold": cfg.labels.threshold,
            "output": runtime["output"],
        },
        "clinical": asdict(clin) | {"split": split, "output": runtime["output"]},
        "rates": rates,
        "subgroups": _subgroups(res.metadata, res.labels == pos, probs[:, pos], cfg),
        "gates": {
            "passed": verdict == PASS,
            "decided_on": "the 95% interval",
            "checks": checks,
            "not_applied": not_applied,
        },
        "runtime": res.runtime,
        "host": host_facts(),
        "throughput": {
            "images_per_s": n / res.timings.wall if res.timings.wall else None,
            **res.timings.to_dict(),
        },
        "tool": {"packager": __version__},
    }
    paths = site_report_paths(bundle, manifest, out)
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    arrays = {"labels": res.labels, "probs": probs.astype(np.float32)}
    arrays |= {f"meta_{k}": v for k, v in res.metadata.items()}
    _atomic(paths["npz"], lambda f: np.savez(f, **arrays))
    text = documents.checked_text(documents.SiteValidation, site)
    _atomic(paths["json"], lambda f: f.write(text.encode()))
    _atomic(paths["md"], lambda f: f.write(site_markdown(site).encode()))
    site["files"] = {k: str(v) for k, v in paths.items()}
    return site


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as f:
            write(f)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _subgroups(
    metadata: dict[str, np.ndarray], y: np.ndarray, p: np.ndarray, cfg: Config
) -> dict[str, dict[str, dict[str, Any]]]:
    """Counts and rates, with 95% Wilson intervals, per value of each group column."""
    pred = p >= cfg.labels.threshold
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for col, values in metadata.items():
        rows = {}
        for v in sorted(set(values.tolist())):
            m = values == v
            tp, pos = int((pred & y & m).sum()), int((y & m).sum())
            tn, neg = int((~pred & ~y & m).sum()), int((~y & m).sum())
            sens, spec = rate(tp, pos), rate(tn, neg)
            rows[v] = {
                "n": int(m.sum()),
                "positives": pos,
                "sensitivity": sens["value"],
                "sensitivity_ci95": sens["ci95"],
                "specificity": spec["value"],
                "specificity_ci95": spec["ci95"],
            }
        out[col] = rows
    return out


def site_markdown(site: dict[str, Any]) -> str:
    c, b, d, r = site["clinical"], site["bundle"], site["data"], site["rates"]

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    def ci(v: float | None, bounds: list[float] | None) -> str:
        return "n/a" if v is None or bounds is None else f"{f(v)} ({f(bounds[0])}–{f(bounds[1])})"

    def with_ci(x: dict[str, Any], of: str) -> str:
        if x["value"] is None:
            return f"undefined (no {of})"
        lo, hi = x["ci95"]
        return f"{f(x['value'])} ({x['hits']}/{x['n']}; 95% CI {f(lo)}–{f(hi)})"

    bc = b["build_clinical"]
    lines = [
        f"# Site validation: {md(b['name'])} {md(b['version'])} ({md(b['target'])}, "
        f"{md(b['precision'])})",
        "",
        f"**{site['verdict'].upper()}** — {md(site['reason'])}",
        "",
        f"- data: {md(d['path'])} split {md(d['split'])}, {d['n']} images, {d['positives']} "
        f"positive, sha256 {d['sha256'][:16]}…",
        f"- decision: {md(site['decision']['positive'])} when p >= {site['decision']['threshold']}",
        f"- bundle manifest sha256 {b['manifest_sha256'][:16]}… (left unchanged), "
        f"signed: {'yes' if b['signed'] else 'no'}",
        "",
        "| metric | this site | at build |",
        "| --- | --- | --- |",
        f"| sensitivity | {with_ci(r['sensitivity'], 'positives')} | {f(bc['sensitivity'])} |",
        f"| specificity | {with_ci(r['specificity'], 'negatives')} | {f(bc['specificity'])} |",
        f"| AUC | {f(c['auc'])} | |",
        f"| images | {c['n']} | {f(bc['n'])} |",
        "",
        f"Gates decide on {site['gates']['decided_on']}: a gate the data cannot support reads "
        "`insufficient evidence`, a metric with no cases `undefined`; neither is a pass.",
        "",
        "| gate | value | 95% CI | limit | decided on | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {g['name']} | {f(g['value'])} | "
            f"{'' if g['ci95'] is None else f(g['ci95'][0]) + '–' + f(g['ci95'][1])} | "
            f"{g['limit']} | {g['decided_on']} | {g['verdict'].upper()} |"
            for g in site["gates"]["checks"]
        ),
    ]
    for g in site["gates"]["not_applied"]:
        lines += ["", f"Not applied: {g['name']} (limit {g['limit']}): {md(g['reason'])}."]
    for col, rows in site["subgroups"].items():
        lines += ["", f"## By {md(col)}", ""]
        lines += ["| value | n | positives | sensitivity (95% CI) | specificity (95% CI) |"]
        lines += ["| --- | --- | --- | --- | --- |"]
        lines += [
            f"| {md(v)} | {r['n']} | {r['positives']} | "
            f"{ci(r['sensitivity'], r['sensitivity_ci95'])} | "
            f"{ci(r['specificity'], r['specificity_ci95'])} |"
            for v, r in rows.items()
        ]
    t = site["throughput"]
    lines += [
        "",
        f"Runtime {md(site['runtime'].get('runtime', '?'))} {md(site['runtime'].get('version', ''))}; "
        f"{f(t['images_per_s'])} images/s end to end (streamed).",
        "",
    ]
    return "\n".join(lines)


def rebench(
    bundle: Path, batch_sizes: list[int], seconds: float, open_loop: dict[str, Any] | None = None
) -> dict[str, Any]:
    if not bundle.is_dir():
        raise UserError(f"{bundle} is not a bundle directory; extract the tarball first")
    require(bundle)  # its runtime.py runs below
    runtime = _read(bundle, "runtime.json")
    target = get(runtime["target"])
    avail = target.availability().bench
    if not avail.ok:
        raise Unavailable(f"{target.name} cannot be benchmarked on this host: {avail.reason}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise UserError("--batch-sizes needs positive integers, e.g. 1,8,32")
    if runtime["fixed_batch"]:
        batch_sizes = [runtime["fixed_batch"]]
    pre = Preprocess.from_json(bundle / "preprocess.json")
    rng = np.random.default_rng(0)
    sample = pre(rng.integers(0, 256, (max(batch_sizes), pre.size, pre.size), dtype=np.uint8))
    spec = {"batch_sizes": batch_sizes, "warmup": 10, "seconds": seconds, "min_iterations": 20}
    result = bench_run(target, bundle, runtime["runner_options"], spec, sample, 600)
    if open_loop is not None:
        rows = pre(rng.integers(0, 256, (open_loop["max_batch"], pre.size, pre.size), np.uint8))
        result["open_loop"] = open_loop_run(
            target, bundle, runtime["runner_options"], open_loop, rows, runtime["fixed_batch"], 900
        )
    return result | {"host": host_facts(), "input": "synthetic"}
