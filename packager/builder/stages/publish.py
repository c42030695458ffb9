"""Stages 6 and 7: finish the bundle (report.json, README and reports, SBOM and provenance,
manifest, signature, tarball) and publish it, or keep it under DIR/.failed/ with its report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from packager.builder.bundle import locked, make_tarball, publish, write_manifest
from packager.builder.session import Session
from packager.builder.signing import check_private_key, sign_dir
from packager.builder.state import BuildState
from packager.builder.supply_chain import write_sbom_and_provenance
from packager.core import documents
from packager.core.hostinfo import host_facts
from packager.core.status import ManifestStatus, ReportStatus
from packager.core.target import BuildOutput, Target
from packager.core.templating import render, target_template
from packager.core.version import __version__
from packager.reports.render import render_reports


def bundle_root(s: Session) -> Path:
    return Path(s.cfg.output.dir) / f"{s.cfg.model.name}-{s.cfg.model.version}"


def finish(
    s: Session, t: Target, bdir: Path, built: BuildOutput, state: BuildState
) -> dict[str, Any]:
    """The verdict, then every file that describes the bundle; returns report.json's dict."""
    state.finish()
    report = state.dump()
    documents.write(bdir / "report.json", documents.Report, report)
    write_bundle_docs(s, bdir, state, report)
    meta = manifest_meta(s, t, built, state)
    write_sbom_and_provenance(bdir, state, meta)
    write_manifest(bdir, meta)
    if s.cfg.sign.key and state.status != ReportStatus.failed:
        sign_dir(bdir, Path(s.cfg.sign.key))  # before publish: published already signed
    return report


def publish_bundle(s: Session, t: Target, stage: Path, state: BuildState) -> Path:
    """The tarball, then the bundle swapped in atomically: under DIR/<name>-<version>/, or
    DIR/.failed/ when a gate failed."""
    make_tarball(stage / t.name, stage / f"{t.name}.tar.gz")
    out, root = Path(s.cfg.output.dir), bundle_root(s)
    with locked(out):
        if state.status == ReportStatus.failed:
            return publish(stage, out / ".failed" / root.name, t.name)
        return publish(stage, root, t.name)


def manifest_meta(s: Session, t: Target, built: BuildOutput, state: BuildState) -> dict[str, Any]:
    runtime = state.validation.runtime or {}
    status = state.status or ManifestStatus.staged
    cfg = s.cfg.to_dict()
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
        "config": {k: v for k, v in cfg.items() if k not in ("output", "sign")}
        | {
            "model": {k: v for k, v in cfg["model"].items() if k != "path"},
            "data": {k: v for k, v in cfg["data"].items() if k != "path"},
        },
        "tool": {"packager": __version__},
        "runtime": runtime,
        "details": built.details,  # what the artifact is tied to (e.g. the GPU of an engine)
        "validated_by": {"host": host_facts(), "status": status},
    } | ({"inputs_sha256": state.inputs_sha256} if state.inputs_sha256 else {})


def write_bundle_docs(s: Session, bdir: Path, state: BuildState, report: dict[str, Any]) -> None:
    """README.md, report.md and report.html of `report` (state.dump())."""
    key = s.cfg.sign.key
    signing = None  # what the README tells a hospital about the key that signs this bundle
    if key and state.status != ReportStatus.failed:
        signing = {"fingerprint": check_private_key(Path(key)), "pubkey": Path(key).name + ".pub"}
    ctx = {
        "r": report,
        "cfg": s.cfg,
        "pre": s.preprocess,
        "info": s.info,
        "target_readme": target_template(state.target, "README.md.j2"),
        "signing": signing,
    }
    (bdir / "README.md").write_text(render("bundle/README.md.j2", **ctx))
    render_reports(bdir, report, s.validation.images)
