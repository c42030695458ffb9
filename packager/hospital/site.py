"""`packager validate` and `packager bench` on an existing bundle.

Two uses of `validate`, told apart by the data:
- on the bundle's own validation data (e.g. a Core ML bundle built on Linux, validated later on
  a Mac): the report, manifest and tarball are completed in a copy of the published generation,
  which is published atomically as the next generation (re-signed with the release key when
  one is given; a signed bundle without the key is left as published). The published bundle
  itself is never changed in place;
- on any other data, or with --labels/--out: site acceptance. A hospital re-validates the bundle
  on its own images with only what the bundle ships (preprocess.py/.json, runtime.json's labels
  and threshold, the gates in its manifest): a site validation report is written to --out or to
  DIR/site-validation/<bundle>/<utc-time>/, and the bundle itself is left byte for byte as
  shipped.

Every run holds the per-bundle lock (bundle.bundle_lock) shared while it reads the bundle, so no
publish swaps or deletes the generation being read; completing in place takes it exclusively.

Either way the images are streamed (packager.runtime.stream): read, preprocessed and inferred in chunks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np

from packager.builder.bundle import (
    LEGACY_SIGNATURE,
    MANIFEST,
    SIGNATURE,
    bundle_lock,
    make_tarball,
    publish,
    published_home,
    stage_copy,
    write_manifest,
)
from packager.builder.signing import check_private_key, check_same_key, is_signed, sign_dir
from packager.builder.stages import bench_run, open_loop_run
from packager.builder.stages.findings import judge
from packager.builder.state import BuildState, ValidationInfo
from packager.builder.supply_chain import write_sbom_and_provenance
from packager.builder.verify import require
from packager.core import documents
from packager.core.config import Config, find_config, load_config, parse_config
from packager.core.data import Dataset, labels_origin, open_dataset, row_index
from packager.core.errors import Unavailable, UserError
from packager.core.gates import check_custom, custom_gates, on_bounds
from packager.core.hostinfo import host_facts
from packager.core.progress import Progress
from packager.core.registry import get
from packager.core.status import ReportStatus, StepStatus
from packager.core.target import Check
from packager.core.version import __version__
from packager.hospital.site_findings import finding_sections, site_parts
from packager.hospital.site_gates import PASS, site_verdict
from packager.reports.evidence import check_categories, for_data
from packager.reports.render import render_reports
from packager.reports.site_report import site_html, site_markdown
from packager.runtime.stream import StreamResult, stream_predict
from packager.runtime.validate import (
    is_clinical_gate,
    save_validation,
)
from packager.shipped.preprocess import Preprocess

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
    sign_key: Path | None = None,
) -> dict[str, Any]:
    """`group_by`: the labels.csv columns to group by (--group-by); None: the bundle's own
    [data] group_by, those of its columns this data has."""
    if not bundle.is_dir():
        raise UserError(f"{bundle} is not a bundle directory; extract the tarball first")
    if sign_key is not None:
        check_private_key(sign_key)  # before any work
    with _reading(bundle):
        require(bundle, pubkey)  # before anything reads, imports or runs its files
        generation = bundle.resolve()  # what this run reads; publishing waits for the lock
        result = _revalidate(bundle, data, split, progress, labels_csv, out, group_by)
    if isinstance(result, dict):
        return result
    return _complete_in_place(bundle, generation, sign_key, *result)


@contextmanager
def _reading(bundle: Path) -> Iterator[None]:
    """The per-bundle lock, shared: no build, sign or validate publishes a new generation of
    this bundle (and deletes the one read here) until this run has read it."""
    with ExitStack() as stack:
        with suppress(OSError):  # a read-only folder: nothing can publish into it either
            stack.enter_context(bundle_lock(*published_home(bundle), exclusive=False))
        yield


def _revalidate(
    bundle: Path,
    data: Path | None,
    split: str | None,
    progress: Progress,
    labels_csv: Path | None,
    out: Path | None,
    group_by: list[str] | None,
) -> dict[str, Any] | tuple[Any, ...]:
    """The site report, or what completing the bundle in place needs (done once the shared
    lock is released)."""
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
    task = cfg.labels.task or "binary"  # as built: never inferred from the site's data
    source = open_dataset(data, split, runtime["labels"], labels_csv, columns, not group_by, task)
    for name, values in source.metadata.items():  # before any image is read or written
        check_categories(name, values)
    what = "validating on this host (streamed)"
    with progress.counted(target.name, what, len(source)) as advance:
        res = stream_predict(
            target.name,
            bundle,
            runtime["runner_options"],
            runtime["fixed_batch"],
            source,
            pre,
            cfg.bench.timeout_s,
            on_scores=advance,
        )
    same_data = res.sha256 == manifest["data"]["sha256"] and split == manifest["data"]["split"]
    if same_data and out is None and labels_csv is None and not group_by:
        images = source.images if isinstance(source, Dataset) else None
        reference = None  # read now: once the lock is released, a publish may delete it
        if (bundle / "validation.npz").exists():
            with np.load(bundle / "validation.npz") as v:
                reference = v["reference"] if "reference" in v.files else None
        signed = is_signed(bundle)
        return report, manifest, runtime, cfg, res, split, images, reference, signed
    grouping = {
        "source": "--group-by" if group_by else "the bundle's [data] group_by",
        "columns": sorted(res.metadata),
        "not_found": [c for c in columns if c not in res.metadata],
    }
    described = {"group_by": grouping, "labels": labels_origin(source, labels_csv)}
    rows = row_index(source)
    return site_acceptance(
        bundle, report, manifest, runtime, cfg, res, data, split, out, described, rows
    )


def _bundle_config(bundle: Path, manifest: dict[str, Any], runtime: dict[str, Any]) -> Config:
    """The gates and timeouts the bundle was built with; labels and threshold as it ships them."""
    cfg = parse_config(manifest["config"], bundle)
    cfg.labels.names = list(runtime["labels"])
    cfg.labels.threshold = float(runtime["threshold"])
    if runtime.get("task") == "multilabel":
        cfg.labels.task, cfg.labels.thresholds = "multilabel", dict(runtime["thresholds"])
    else:
        cfg.labels.positive = runtime["positive"]
    return cfg


def _complete_in_place(
    bundle: Path,
    generation: Path,
    sign_key: Path | None,
    report: dict[str, Any],
    manifest: dict[str, Any],
    runtime: dict[str, Any],
    cfg: Config,
    res: StreamResult,
    split: str,
    images: np.ndarray | None,
    reference: np.ndarray | None,
    signed: bool,
) -> dict[str, Any]:
    """The completed report, published as a new generation of the bundle (copied, completed,
    re-signed when a key is given, then swapped in atomically); never written into the
    published one. A signed bundle without the key stays published as it was: a new
    generation would carry no valid signature."""
    ds = Dataset(images, res.labels, split, res.sha256, metadata=res.metadata)
    probs, clin, evidence, gates, per_finding = judge(
        cfg, ds, res.scores, runtime["output"], reference, _evidence
    )
    state = BuildState.load(report)
    # The build's own checks (e.g. a converted model read back) still hold; the clinical gates
    # are this host's now (every name gate_checks can give counts as clinical).
    state.checks = (
        gates
        + custom_gates(cfg.gates, res.labels, probs, res.metadata)
        + [c for c in state.checks if not is_clinical_gate(c.name)]
    )
    state.clinical = (
        asdict(clin) | {"split": split, "output": runtime["output"], "evidence": evidence}
    ) | per_finding
    state.validation = ValidationInfo(res.runtime, limitations=state.validation.limitations)
    state.step("revalidate", StepStatus.ok)
    state.finish()
    report = state.dump()
    dest_dir, name = published_home(bundle)
    sign_key = sign_key or _configured_key()
    if sign_key is None and signed:
        return report | {
            "publication": {
                "published": False,
                "signed": False,
                "reason": (
                    f"not published: {name} is signed, and a completed report would make "
                    f"{SIGNATURE} no longer cover the bundle; the signed generation stays "
                    "published unchanged. Pass --sign KEY (the release key), or set [sign] key "
                    "in ./packager.toml, to publish a re-signed new generation"
                ),
            }
        }
    with bundle_lock(dest_dir, name):
        if bundle.resolve() != generation:
            raise UserError(
                f"{bundle} changed while it was validated (another validate, sign or build "
                "published a new generation); nothing was written: run validate again"
            )
        if sign_key is not None:
            check_same_key(generation, sign_key)
        stage = stage_copy(bundle)
        try:
            root = stage / name
            for sig in (SIGNATURE, LEGACY_SIGNATURE):  # the old signature no longer matches
                (root / sig).unlink(missing_ok=True)
            documents.write(root / "report.json", documents.Report, report)
            save_validation(root, res.labels, probs, reference)
            render_reports(root, report, images)
            meta = {k: v for k, v in manifest.items() if k not in ("files", "schema_version")}
            meta["status"] = state.status
            meta["validated_by"] = {
                "host": host_facts(),
                "status": state.status,
                "runtime": res.runtime,
            }
            write_sbom_and_provenance(root, state, meta)  # the SBOM's metrics are this host's
            write_manifest(root, meta)
            if sign_key is not None:
                sign_dir(root, sign_key)  # before publishing: published already signed
            make_tarball(root, stage / f"{name}.tar.gz")
            publish(stage, dest_dir, name)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    return report | {
        "publication": {
            "published": True,
            "signed": sign_key is not None,
            "reason": f"published as a new generation of {dest_dir / name}"
            + (", signed" if sign_key is not None else ", unsigned"),
        }
    }


def _configured_key() -> Path | None:
    """[sign] key of ./packager.toml (or [tool.packager] in ./pyproject.toml), if any: the one
    part of a build config that completing a bundle in place uses."""
    path = find_config(Path.cwd())
    if path is None:
        return None
    key = load_config(path).sign.key
    return Path(key) if key else None


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


SITE_FILES = ("json", "md", "html", "npz")


def site_report_paths(
    bundle: Path, manifest: dict[str, Any], out: Path | None, when: datetime
) -> dict[str, Path]:
    """Where this run's site report goes, never where another run's is: --out (file names with
    the UTC time, claimed by creating the .json exclusively), else a new folder
    DIR/site-validation/<bundle>/<utc-time>/ beside the published bundle: never inside a
    generation, which the next build deletes."""
    stem = f"site-validation-{manifest['name']}-{manifest['version']}-{manifest['target']}"
    now = when.strftime("%Y%m%dT%H%M%S.%fZ")
    if out is None:
        dest_dir, name = published_home(bundle)
        base = dest_dir / "site-validation" / name
        base.mkdir(parents=True, exist_ok=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
    for n in count():
        stamp = now if n == 0 else f"{now}-{n}"
        try:
            if out is None:
                where = base / stamp
                where.mkdir()
                return {ext: where / f"{stem}.{ext}" for ext in SITE_FILES}
            paths = {ext: out / f"{stem}-{stamp}.{ext}" for ext in SITE_FILES}
            os.close(os.open(paths["json"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return paths
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


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
    described: dict[str, Any],
    rows: np.ndarray,
) -> dict[str, Any]:
    """The site validation report: this site's data through the shipped bundle, gated on what
    the data can support (packager.hospital.site_gates). `described`: where the labels and the
    group columns came from; `rows`: each image's row in its labels source (data.row_index)."""
    when = datetime.now(UTC)
    built = BuildState.load(report)
    build_clinical = built.clinical or {}
    parts = site_parts(cfg, runtime["output"], res.scores, res.labels, res.metadata, build_clinical)
    probs, clin, rates = parts.probs, parts.summary.clin, parts.summary.rates()
    checks, not_applied, groups = parts.checks, parts.not_applied, parts.groups
    verdict, reason = site_verdict(checks, groups, rates["specificity"])
    n = len(res.labels)
    site = {
        "schema_version": 1,
        "kind": "site-validation",
        "status": ReportStatus.passed if verdict == PASS else ReportStatus.failed,
        "verdict": verdict,
        "reason": reason,
        "validated_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "bundle": {
            "path": str(bundle.resolve()),
            "name": manifest["name"],
            "version": manifest["version"],
            "target": manifest["target"],
            "precision": manifest.get("precision"),
            "manifest_sha256": hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest(),
            "signed": (bundle / SIGNATURE).exists(),
            "build_status": built.status,
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
            **described,
        },
        "decision": {
            "positive": runtime["positive"],
            "threshold": cfg.labels.threshold,
            "output": runtime["output"],
        }
        | ({"thresholds": runtime["thresholds"]} if parts.findings else {}),
        "clinical": asdict(clin) | {"split": split, "output": runtime["output"]},
        "rates": rates,
        # Row indexes only (data.labels.row_index says into what): no path, no identifier.
        "errors": parts.summary.errors(rows),
        "subgroups": groups,
        "gates": {
            "passed": verdict == PASS,
            "decided_on": "the 95% interval"
            if on_bounds(cfg.gates, "ci")
            else "the point estimate",
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
    if parts.findings:
        site |= {
            "finding": parts.finding,
            "findings": finding_sections(parts, rows, runtime["output"], split),
        }
    paths = site_report_paths(bundle, manifest, out, when)
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    arrays = {"labels": res.labels, "probs": probs.astype(np.float32), "row": rows}
    arrays |= {f"meta_{k}": v for k, v in res.metadata.items()}
    _atomic(paths["npz"], lambda f: np.savez(f, **arrays))
    text = documents.checked_text(documents.SiteValidation, site)
    _atomic(paths["json"], lambda f: f.write(text.encode()))
    _atomic(paths["md"], lambda f: f.write(site_markdown(site).encode()))
    _atomic(paths["html"], lambda f: f.write(site_html(site).encode()))
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
