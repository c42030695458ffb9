"""What a hospital's security team checks with standard tools: a CycloneDX SBOM and an in-toto
SLSA provenance statement, both written into the bundle before the manifest (so the manifest and
the model-signing signature cover them). Both are byte-reproducible: times come only from
SOURCE_DATE_EPOCH, the SBOM serial number is derived from the content, the host fingerprint is
fixed per machine."""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import subprocess
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from packager.builder.bundle import bundle_files
from packager.builder.state import BuildState
from packager.core.hostinfo import host_facts
from packager.core.status import ReportStatus
from packager.core.version import __version__

SBOM = "sbom.cdx.json"
PROVENANCE = "provenance.intoto.json"
GENERATED = {SBOM, PROVENANCE}
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:packager:buildtype:bundle:v1"
# Imported by every bundle's preprocess.py / predict.py besides the runtime itself.
COMMON_PACKAGES = ("numpy", "pillow")


def write_sbom_and_provenance(bdir: Path, state: BuildState, meta: dict[str, Any]) -> None:
    """Write sbom.cdx.json, then provenance.intoto.json (whose subjects include the SBOM).
    Call it right before write_manifest(), with the same manifest meta."""
    # The runtime this bundle was validated on (after `packager validate`, this host's).
    runtime = state.validation.runtime or meta.get("runtime") or {}
    meta = {**meta, "runtime": runtime}
    files = {k: v for k, v in bundle_files(bdir).items() if k not in GENERATED}
    (bdir / SBOM).write_text(sbom_json(files, state, meta))
    files[SBOM] = bundle_files(bdir)[SBOM]
    (bdir / PROVENANCE).write_text(provenance_json(files, meta))


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def _epoch() -> datetime | None:
    """Build time only when the builder fixes it (SOURCE_DATE_EPOCH): else no time at all, so a
    rebuild from the same inputs is byte-identical."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    return datetime.fromtimestamp(int(raw), tz=timezone.utc) if raw else None


def build_time() -> str | None:
    """The build time as report.json records it (ISO 8601, UTC), or None (see _epoch)."""
    when = _epoch()
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def _canonical_sha256(obj: Any) -> str:
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def _runtime_dist(name: str) -> str | None:
    """The installed distribution that provides the runtime `name` (itself, or the distribution
    of the module of that name), so the SBOM gets a real package URL; None when unknown."""
    if not name:
        return None
    if _dist_version(name) is not None:
        return name
    dists = metadata.packages_distributions().get(name)  # slow (every installed file): last
    return dists[0] if dists else None


def runtime_packages(meta: dict[str, Any]) -> list[dict[str, str | None]]:
    """The packages a bundle needs to run: its runtime at the version it was validated with, and
    the common ones at the versions installed where it was validated."""
    out: list[dict[str, str | None]] = []
    runtime = meta.get("runtime") or {}
    if runtime.get("runtime"):
        out.append(
            {
                "name": str(runtime["runtime"]),
                "version": str(runtime.get("version") or "") or None,
                "dist": _runtime_dist(str(runtime["runtime"])),
                "role": "runtime",
            }
        )
    for dist in COMMON_PACKAGES:
        out.append({"name": dist, "version": _dist_version(dist), "dist": dist, "role": "library"})
    return out


# ---------------------------------------------------------------------------------------------
# CycloneDX


def sbom_json(files: dict[str, dict[str, Any]], state: BuildState, meta: dict[str, Any]) -> str:
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.bom_ref import BomRef
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    def sha(digest: str) -> list[HashType]:
        return [HashType(alg=HashAlgorithm.SHA_256, content=digest)]

    cfg_data = meta["config"]["data"]
    bundle = Component(
        type=ComponentType.APPLICATION,
        name=f"{meta['name']}/{meta['target']}",
        version=meta["version"],
        bom_ref=BomRef("bundle"),
        properties=[
            Property(name="packager:target", value=meta["target"]),
            Property(name="packager:precision", value=str(meta["precision"])),
            Property(name="packager:status", value=meta["status"]),
        ],
    )
    model = Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=meta["name"],
        version=meta["version"],
        bom_ref=BomRef("model"),
        description=meta["config"]["model"].get("description") or None,
        hashes=sha(meta["source_model"]["sha256"]),
        properties=[Property(name="packager:source-file", value=meta["source_model"]["file"])],
    )
    data = [
        Component(
            type=ComponentType.DATA,
            name=f"validation split '{meta['data']['split']}'",
            bom_ref=BomRef("data:validation"),
            hashes=sha(meta["data"]["sha256"]),
            properties=[
                Property(name="packager:split", value=meta["data"]["split"]),
                Property(name="packager:images", value=str(meta["data"]["n"])),
            ],
        ),
        Component(
            type=ComponentType.DATA,
            name=f"calibration split '{cfg_data['calibration_split']}' (INT8 builds only)",
            bom_ref=BomRef("data:calibration"),
            hashes=sha(meta["data"]["sha256"]),  # the same dataset file, another split
            properties=[
                Property(name="packager:split", value=cfg_data["calibration_split"]),
                Property(name="packager:size", value=str(cfg_data["calibration_size"])),
                Property(name="packager:seed", value=str(cfg_data["seed"])),
            ],
        ),
    ]
    packages = []
    for p in runtime_packages(meta):
        packages.append(
            Component(
                type=ComponentType.LIBRARY,
                name=str(p["dist"] or p["name"]),
                version=p["version"],
                bom_ref=BomRef(f"pkg:{p['name']}"),
                purl=PackageURL(type="pypi", name=str(p["dist"]), version=p["version"])
                if p["dist"]
                else None,
                properties=[Property(name="packager:role", value=str(p["role"]))],
            )
        )
    file_components = [
        Component(
            type=ComponentType.FILE,
            name=rel,
            bom_ref=BomRef(f"file:{rel}"),
            hashes=sha(info["sha256"]),
        )
        for rel, info in sorted(files.items())
    ]
    tool = Component(type=ComponentType.APPLICATION, name="packager", version=__version__)
    bom = Bom(
        # Derived from the content: the same bundle gets the same serial number.
        serial_number=uuid.uuid5(uuid.NAMESPACE_URL, "urn:packager:" + _canonical_sha256(files)),
        metadata=BomMetaData(component=bundle, timestamp=_epoch() or datetime.now(timezone.utc)),
        components=[model, *data, *packages, *file_components],
    )
    bom.metadata.tools.components.add(tool)
    bom.register_dependency(bundle, [model, *packages, *file_components])
    bom.register_dependency(model, data)
    doc = json.loads(JsonV1Dot6(bom).output_as_string())
    if _epoch() is None:
        del doc["metadata"]["timestamp"]  # optional in CycloneDX; kept out for reproducibility
    for comp in doc["components"]:
        if comp.get("bom-ref") == "model":
            comp["modelCard"] = model_card(state, meta)
    return _dump(doc)


def model_card(state: BuildState, meta: dict[str, Any]) -> dict[str, Any]:
    """CycloneDX 1.6 modelCard (cyclonedx-python-lib has no class for it; the SBOM is checked
    against the schema by the library's validator in tests/test_supply_chain.py)."""
    clinical = state.clinical or {}
    metrics = []
    where = f"split {clinical.get('split')}, threshold {clinical.get('threshold')}"
    for key in ("sensitivity", "specificity", "accuracy", "auc", "sensitivity_drop"):
        value = clinical.get(key)
        if value is None:
            continue
        metric: dict[str, Any] = {"type": key, "value": f"{value:.6g}", "slice": where}
        if key == "sensitivity" and clinical.get("sensitivity_ci95"):
            lo, hi = clinical["sensitivity_ci95"]
            metric["confidenceInterval"] = {"lowerBound": f"{lo:.6g}", "upperBound": f"{hi:.6g}"}
        metrics.append(metric)
    runtime = meta.get("runtime") or {}
    gates = [
        {
            "name": f"packager:gate:{c.name}",
            "value": f"{c.verdict or 'not run'} on {c.decided_on}: {c.value} (limit {c.limit})",
        }
        for c in state.checks
    ]
    card = state.model.get("card") or {}
    uses = [card["intended_use"]] if card.get("intended_use") else []
    uses += [f"indication: {x}" for x in card.get("indications", [])]
    limitations = [state.reason] if state.status != ReportStatus.passed else []
    limitations += [f"contraindication: {x}" for x in card.get("contraindications", [])]
    limitations += state.validation.limitations
    limitations.append(
        "validated on the vendor's split only; re-validate on local images "
        "(packager validate BUNDLE --data LOCAL)"
    )
    labels = meta["config"].get("labels") or {}
    return {
        "modelParameters": {
            "approach": {"type": "supervised"},
            "task": "classification",
            "datasets": [{"ref": "data:validation"}, {"ref": "data:calibration"}],
            "inputs": [{"format": "image"}],
            "outputs": [
                {"format": f"class scores: {', '.join(map(str, labels.get('names', [])))}"}
            ],
        },
        "quantitativeAnalysis": {"performanceMetrics": metrics},
        "considerations": {
            "useCases": uses,
            "technicalLimitations": limitations,
        },
        "properties": [
            {"name": "packager:status", "value": str(state.status)},
            {
                "name": "packager:validated-on",
                "value": f"{runtime.get('runtime')} {runtime.get('version')}"
                if runtime
                else "not validated",
            },
            *gates,
        ],
    }


# ---------------------------------------------------------------------------------------------
# in-toto Statement v1 with a SLSA provenance v1 predicate


def _git(*args: str) -> str | None:
    src = Path(__file__).resolve().parents[2]
    if not (src / ".git").exists():  # installed from a wheel: no checkout to name
        return None
    try:
        proc = subprocess.run(
            ["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def packager_source() -> dict[str, Any]:
    """packager's own version, and its git commit when it runs from a checkout."""
    out: dict[str, Any] = {"name": "packager", "annotations": {"version": __version__}}
    commit = _git("rev-parse", "HEAD")
    if commit:
        out["digest"] = {"gitCommit": commit}
        # Tracked files edited since the commit: the commit alone does not name the code.
        out["annotations"]["dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return out


def host_fingerprint() -> str:
    """Stable per machine, never the raw machine id (a keyed hash, as systemd recommends for
    application-specific ids); falls back to the host facts where there is no machine id."""
    try:
        machine_id = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine_id = ""
    if machine_id:
        return hmac.new(b"packager-provenance", machine_id.encode(), hashlib.sha256).hexdigest()
    return _canonical_sha256(host_facts())


def provenance(files: dict[str, dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    cfg_data = meta["config"]["data"]
    deps = [
        {
            "name": f"model:{meta['source_model']['file']}",
            "digest": {"sha256": meta["source_model"]["sha256"]},
        },
        {
            "name": f"data:{meta['data']['split']}",
            "digest": {"sha256": meta["data"]["sha256"]},
            "annotations": {"role": "validation", "images": meta["data"]["n"]},
        },
        {
            "name": f"calibration:{cfg_data['calibration_split']}",
            "digest": {"sha256": meta["data"]["sha256"]},
            "annotations": {
                "role": "INT8 calibration (used only by INT8 builds)",
                "size": cfg_data["calibration_size"],
                "seed": cfg_data["seed"],
            },
        },
        {"name": "config", "digest": {"sha256": _canonical_sha256(meta["config"])}},
        packager_source(),
    ]
    run_metadata: dict[str, Any] = {}
    stamp = build_time()
    if stamp is not None:
        run_metadata = {"startedOn": stamp, "finishedOn": stamp}
    runtimes = [
        {"name": str(p["dist"] or p["name"]), "annotations": {"version": p["version"] or ""}}
        for p in runtime_packages(meta)
    ]
    predicate: dict[str, Any] = {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {
                "target": meta["target"],
                "precision": meta["precision"],
                "config": meta["config"],
            },
            "internalParameters": {"host": host_facts(), "status": meta["status"]},
            "resolvedDependencies": deps,
        },
        "runDetails": {
            "builder": {
                "id": f"urn:packager:host:{host_fingerprint()}",
                "version": {"packager": __version__},
                "builderDependencies": runtimes,
            },
        },
    }
    if run_metadata:
        predicate["runDetails"]["metadata"] = run_metadata
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [
            {"name": rel, "digest": {"sha256": info["sha256"]}}
            for rel, info in sorted(files.items())
        ],
        "predicateType": SLSA_PROVENANCE,
        "predicate": predicate,
    }


def provenance_json(files: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    return _dump(provenance(files, meta))
