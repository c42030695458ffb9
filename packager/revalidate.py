"""`packager validate` and `packager bench` on an existing bundle (e.g. a Core ML bundle built on
Linux and validated later on a Mac): the report, manifest and tarball are completed in place."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from packager.build import finish_report
from packager.bundle import LEGACY_SIGNATURE, MANIFEST, SIGNATURE, make_tarball, write_manifest
from packager.config import Config, parse_config
from packager.data import Dataset, load_dataset
from packager.errors import Unavailable, UserError
from packager.evidence import for_data
from packager.hostinfo import host_facts
from packager.preprocess import Preprocess
from packager.progress import Progress
from packager.registry import get
from packager.render import render_reports
from packager.runner import predict, run_worker
from packager.supply_chain import write_sbom_and_provenance
from packager.validate import evaluate, gate_checks, is_clinical_gate, save_validation
from targets.base import Check


def _read(bundle: Path, name: str) -> dict[str, Any]:
    try:
        return json.loads((bundle / name).read_text())
    except FileNotFoundError:
        raise UserError(
            f"{bundle} has no {name}; pass a bundle directory made by packager build"
        ) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{bundle / name} is not valid JSON ({exc})") from None


def revalidate(
    bundle: Path, data: Path | None, split: str | None, progress: Progress
) -> dict[str, Any]:
    if not bundle.is_dir():
        raise UserError(f"{bundle} is not a bundle directory; extract the tarball first")
    runtime, report, manifest = (
        _read(bundle, n) for n in ("runtime.json", "report.json", MANIFEST)
    )
    target = get(runtime["target"])
    avail = target.availability().validate
    if not avail.ok:
        raise Unavailable(f"{target.name} cannot be validated on this host: {avail.reason}")
    cfg = parse_config(manifest["config"], bundle)
    split = split or manifest["data"]["split"]
    if data is None:
        raise UserError(
            f"pass --data: the bundle was validated on split '{manifest['data']['split']}' of a "
            f"dataset with sha256 {manifest['data']['sha256'][:16]}…"
        )
    ds = load_dataset(data, split, runtime["labels"])
    x = Preprocess.from_json(bundle / "preprocess.json")(ds.images)
    same_data = ds.sha256 == manifest["data"]["sha256"] and split == manifest["data"]["split"]
    reference = None
    if same_data and (bundle / "validation.npz").exists():
        with np.load(bundle / "validation.npz") as v:
            reference = v["reference"]
    with progress.step(target.name, f"validating on this host ({len(ds)} images)"):
        scores, info = predict(
            target.name,
            bundle,
            runtime["runner_options"],
            x,
            runtime["fixed_batch"],
            cfg.bench.timeout_s,
        )
    probs, clin = evaluate(scores, ds.labels, cfg, runtime["output"], reference)
    evidence, evidence_checks = _evidence(cfg, ds, probs, reference, report)
    checks = [
        c.to_dict()
        for c in gate_checks(clin, cfg, has_reference=reference is not None) + evidence_checks
    ]
    # The build's own checks (e.g. a converted model read back) still hold; the clinical gates
    # are this host's now (every name gate_checks can give counts as clinical).
    checks += [c for c in report["gates"]["checks"] if not is_clinical_gate(c["name"])]
    clinical = asdict(clin) | {"split": split, "output": runtime["output"], "evidence": evidence}
    report["clinical"] = clinical
    report["gates"] = {"passed": all(c["passed"] for c in checks), "checks": checks}
    report["validation"] = {"runtime": info, "proxy": None, "not_validated": ""}
    if reference is None:
        report["notes"].append("re-validated on other data than the build: no reference comparison")
    report.setdefault("steps", []).append(
        {"name": "revalidate", "status": "ok", "reason": str(data)}
    )
    finish_report(report, report.pop("steps"))
    (bundle / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    save_validation(bundle, ds.labels, probs, reference)
    render_reports(bundle, report, ds.images)
    for sig in (SIGNATURE, LEGACY_SIGNATURE):  # the old signature no longer matches
        (bundle / sig).unlink(missing_ok=True)
    meta = {k: v for k, v in manifest.items() if k not in ("files", "schema_version")}
    meta["status"] = report["status"]
    meta["validated_by"] = {"host": host_facts(), "status": report["status"], "runtime": info}
    write_sbom_and_provenance(bundle, report, meta)  # the SBOM's metrics are this host's now
    write_manifest(bundle, meta)
    tar = bundle.with_name(bundle.name + ".tar.gz")
    if tar.exists():
        make_tarball(bundle, tar)
    return report


def _evidence(
    cfg: Config,
    ds: Dataset,
    probs: np.ndarray,
    reference: np.ndarray | None,
    report: dict[str, Any],
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


def rebench(bundle: Path, batch_sizes: list[int], seconds: float) -> dict[str, Any]:
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
    job = {
        "job": "bench",
        "target": target.name,
        "bundle": str(bundle),
        "options": runtime["runner_options"],
        "bench": spec,
    }
    return run_worker(job, 600, {"x": sample}) | {"host": host_facts(), "input": "synthetic"}
