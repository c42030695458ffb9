"""The SBOM and the provenance statement of a real bundle, checked with the standards' own tools:
CycloneDX's JSON-schema validator (cyclonedx-python-lib) and in-toto's attestation models, with
every digest recounted here with hashlib."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEFAULT_TOML, _run

TARGET = "cpu-onnxruntime"
DESCRIPTION = "Pneumonia triage on paediatric chest X-rays; a second reader, never the only one"
NOT_FOR = "adults"
OUT_OF_SUBJECTS = {"provenance.intoto.json", "manifest.json", "model.sig"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_path: Path) -> Path:
    root = tmp_path_factory.mktemp("supply")
    toml = DEFAULT_TOML.format(model=tiny_model, data=data_path)
    toml += f'[model.card]\nintended_use = "{DESCRIPTION}"\ncontraindications = ["{NOT_FOR}"]\n'
    (root / "packager.toml").write_text(toml)
    r = _run(["build", "--target", TARGET, "--no-bench"], root)
    assert r.code == 0, r.stderr
    return root / "dist" / "tiny-1.0.0" / TARGET


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(bundle: Path) -> dict[str, str]:
    return {
        p.relative_to(bundle).as_posix(): sha256(p)
        for p in sorted(bundle.rglob("*"))
        if p.is_file()
    }


def load(bundle: Path, name: str) -> dict[str, Any]:
    return json.loads((bundle / name).read_text())


# ---------------------------------------------------------------------------------------------
# SBOM


def test_sbom_validates_against_the_cyclonedx_schema(bundle: Path) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    text = (bundle / "sbom.cdx.json").read_text()
    assert json.loads(text)["specVersion"] == "1.6"
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert error is None, error
    # The validator is not a rubber stamp: a modelCard key the schema does not know fails.
    doc = json.loads(text)
    model = next(c for c in doc["components"] if c["type"] == "machine-learning-model")
    model["modelCard"]["intendedUse"] = "x"
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(doc)) is not None


def test_sbom_lists_every_file_with_its_hash(bundle: Path) -> None:
    doc = load(bundle, "sbom.cdx.json")
    listed = {
        c["name"]: c["hashes"][0]["content"] for c in doc["components"] if c["type"] == "file"
    }
    expected = files_of(bundle)
    for rel in ("sbom.cdx.json", *OUT_OF_SUBJECTS):  # written after the SBOM
        expected.pop(rel, None)
    assert listed == expected
    assert all(h["alg"] == "SHA-256" for c in doc["components"] for h in c.get("hashes", []))


def test_sbom_runtime_packages_are_the_validated_versions(bundle: Path) -> None:
    doc = load(bundle, "sbom.cdx.json")
    libs = {c["name"]: c for c in doc["components"] if c["type"] == "library"}
    runtime = load(bundle, "report.json")["validation"]["runtime"]
    assert libs[runtime["runtime"]]["version"] == runtime["version"]
    import onnxruntime

    assert runtime["version"] == onnxruntime.__version__  # what actually ran here
    for dist in ("numpy", "pillow"):
        assert libs[dist]["version"] == metadata.version(dist)
        assert libs[dist]["purl"] == f"pkg:pypi/{dist}@{metadata.version(dist)}"
    # The dependency graph: the bundle needs the model and every package.
    deps = {d["ref"]: set(d.get("dependsOn", [])) for d in doc["dependencies"]}
    assert {"model", *(c["bom-ref"] for c in libs.values())} <= deps["bundle"]


def test_sbom_model_card(bundle: Path, tiny_model: Path, data_path: Path) -> None:
    doc = load(bundle, "sbom.cdx.json")
    report = load(bundle, "report.json")
    by_ref = {c["bom-ref"]: c for c in doc["components"]}
    model = by_ref["model"]
    assert model["hashes"][0]["content"] == sha256(tiny_model)
    card = model["modelCard"]
    # [model.card]: the intended use, and each contraindication as a limitation.
    assert card["considerations"]["useCases"] == [DESCRIPTION]
    assert f"contraindication: {NOT_FOR}" in card["considerations"]["technicalLimitations"]
    for ref in card["modelParameters"]["datasets"]:
        assert by_ref[ref["ref"]]["hashes"][0]["content"] == sha256(data_path)
    metrics = {m["type"]: m for m in card["quantitativeAnalysis"]["performanceMetrics"]}
    clinical = report["clinical"]
    # Recounted from the bundle's own validation arrays, not taken from the report.
    import numpy as np

    with np.load(bundle / "validation.npz") as v:
        labels, probs = v["labels"], v["probs"]
    y = labels == 1
    sens = float(((probs[:, 1] >= clinical["threshold"]) & y).sum() / y.sum())
    assert float(metrics["sensitivity"]["value"]) == pytest.approx(sens, abs=1e-6)
    lo, hi = clinical["sensitivity_ci95"]
    ci = metrics["sensitivity"]["confidenceInterval"]
    assert (float(ci["lowerBound"]), float(ci["upperBound"])) == pytest.approx((lo, hi), abs=1e-6)
    gates = {p["name"]: p["value"] for p in card["properties"]}
    for check in report["gates"]["checks"]:
        value = gates[f"packager:gate:{check['name']}"]
        assert value.startswith(f"{check['verdict'] or 'not run'} on {check['decided_on']}: "), (
            value
        )


def test_sbom_of_a_not_validated_bundle_is_valid_too(bundle: Path) -> None:
    """A target this host could not validate (no runtime, no clinical numbers): the SBOM says so
    and still passes the schema."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    from packager.builder.bundle import bundle_files
    from packager.builder.state import BuildState
    from packager.builder.supply_chain import sbom_json

    meta = load(bundle, "manifest.json") | {"runtime": {}, "status": "not-validated"}
    report = load(bundle, "report.json") | {
        "clinical": None,
        "gates": {"passed": False, "checks": []},
        "validation": {"runtime": None, "proxy": None, "not_validated": "no Mac"},
        "status": "not-validated",
        "reason": "not validated: no Mac",
    }
    text = sbom_json(bundle_files(bundle), BuildState.load(report), meta)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    doc = json.loads(text)
    card = next(c for c in doc["components"] if c["bom-ref"] == "model")["modelCard"]
    assert card["quantitativeAnalysis"]["performanceMetrics"] == []
    assert "not validated: no Mac" in card["considerations"]["technicalLimitations"]
    assert {"packager:validated-on": "not validated"}.items() <= {
        p["name"]: p["value"] for p in card["properties"]
    }.items()
    assert {c["name"] for c in doc["components"] if c["type"] == "library"} == {"numpy", "pillow"}


# ---------------------------------------------------------------------------------------------
# Provenance


def test_provenance_parses_with_in_toto_models(bundle: Path) -> None:
    from google.protobuf import json_format
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement

    pb = json_format.Parse(
        (bundle / "provenance.intoto.json").read_text(), statement_pb2.Statement()
    )
    Statement.copy_from_pb(pb).validate()
    assert pb.predicate_type == "https://slsa.dev/provenance/v1"
    # Strict: a field SLSA provenance v1 does not define is refused by the parser.
    prov = json_format.ParseDict(
        json_format.MessageToDict(pb.predicate), provenance_pb2.Provenance()
    )
    for dep in prov.build_definition.resolved_dependencies:
        ResourceDescriptor.copy_from_pb(dep).validate()
    assert prov.run_details.builder.id.startswith("urn:packager:host:")
    subjects = {s.name: s.digest["sha256"] for s in pb.subject}
    expected = {k: v for k, v in files_of(bundle).items() if k not in OUT_OF_SUBJECTS}
    assert subjects == expected
    assert "sbom.cdx.json" in subjects and "model.onnx" in subjects


def test_provenance_names_the_inputs(bundle: Path, tiny_model: Path, data_path: Path) -> None:
    stmt = load(bundle, "provenance.intoto.json")
    deps = {d["name"]: d for d in stmt["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert deps["model:tiny.onnx"]["digest"]["sha256"] == sha256(tiny_model)
    assert deps["data:test"]["digest"]["sha256"] == sha256(data_path)
    assert deps["calibration:train"]["digest"]["sha256"] == sha256(data_path)
    manifest = load(bundle, "manifest.json")
    canonical = json.dumps(manifest["config"], sort_keys=True, separators=(",", ":"))
    assert deps["config"]["digest"]["sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    tool = deps["packager"]
    assert tool["annotations"]["version"] == manifest["tool"]["packager"]
    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode != 0:
        pytest.skip("not validated: packager does not run from a git checkout here")
    assert tool["digest"]["gitCommit"] == head.stdout.strip()


def test_times_come_only_from_source_date_epoch(bundle: Path, tmp_path: Path) -> None:
    """Without SOURCE_DATE_EPOCH there is no time in either document (the build is
    reproducible); with it, both carry exactly that time."""
    sbom, stmt = load(bundle, "sbom.cdx.json"), load(bundle, "provenance.intoto.json")
    assert "timestamp" not in sbom["metadata"]
    assert "metadata" not in stmt["predicate"]["runDetails"]
    code = (
        "import json, sys; from pathlib import Path; "
        "from packager.builder.supply_chain import write_sbom_and_provenance as w; "
        "from packager.builder.state import BuildState; "
        "b = Path(sys.argv[1]); m = json.loads((b / 'manifest.json').read_text()); "
        "w(b, BuildState.load(json.loads((b / 'report.json').read_text())), m)"
    )
    copy = tmp_path / TARGET
    subprocess.run(["cp", "-rL", str(bundle), str(copy)], check=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1767225600"}  # 2026-01-01T00:00:00Z
    subprocess.run([sys.executable, "-c", code, str(copy)], check=True, env=env)
    assert load(copy, "sbom.cdx.json")["metadata"]["timestamp"].startswith("2026-01-01T00:00:00")
    run = load(copy, "provenance.intoto.json")["predicate"]["runDetails"]["metadata"]
    assert run == {"startedOn": "2026-01-01T00:00:00Z", "finishedOn": "2026-01-01T00:00:00Z"}


def test_validate_in_place_rewrites_sbom_and_provenance(
    bundle: Path, data_path: Path, tmp_path: Path
) -> None:
    """`packager validate` rewrites report.json: the SBOM and the provenance follow it, so the
    bundle's own statements never go stale (and the manifest covers the new ones)."""
    import shutil

    copy = Path(shutil.copytree(bundle, tmp_path / TARGET))
    # The bundle's own validation data: completed in place (other data gives a site report and
    # leaves the bundle alone, tests/test_dicom.py).
    r = _run(["validate", copy, "--data", data_path, "--json"], tmp_path)
    assert r.code in (0, 1), r.stderr
    report = load(copy, "report.json")
    assert report["clinical"]["split"] == "test"
    assert report["steps"][-1]["name"] == "revalidate"
    sbom = load(copy, "sbom.cdx.json")
    listed = {
        c["name"]: c["hashes"][0]["content"] for c in sbom["components"] if c["type"] == "file"
    }
    current = files_of(copy)
    assert listed["report.json"] == current["report.json"] != files_of(bundle)["report.json"]
    stmt = load(copy, "provenance.intoto.json")
    subjects = {s["name"]: s["digest"]["sha256"] for s in stmt["subject"]}
    assert subjects == {k: v for k, v in current.items() if k not in OUT_OF_SUBJECTS}
    assert _run(["verify", copy], tmp_path).code == 0


# ---------------------------------------------------------------------------------------------
# Release workflow


def test_release_workflow_signs_with_a_key_from_a_secret() -> None:
    from tests.test_workflow import WORKFLOW, _workflow, packager_calls

    text = WORKFLOW.read_text()
    assert "PRIVATE KEY" not in text and "BEGIN" not in text  # no key material in the file
    steps = _workflow()["jobs"]["release"]["steps"]
    sign = next(s for s in steps if "packager sign" in s.get("run", ""))
    assert sign["env"]["PACKAGER_SIGNING_KEY"] == "${{ secrets.PACKAGER_SIGNING_KEY }}"
    assert 'rm -f "$key"' in sign["run"] and "umask 077" in sign["run"]
    calls = [c for s in steps if "run" in s for c in packager_calls(s["run"])]
    assert ["sign", "$t", "--key", "$key"] in calls
    assert ["verify", "$t", "--pubkey", "release.key.pub"] in calls
    collect = next(s["run"] for s in steps if "model_signing verify key" in s.get("run", ""))
    assert "sbom.cdx.json provenance.intoto.json model.sig" in collect
    publish = next(s["run"] for s in steps if "gh release create" in s.get("run", ""))
    assert "assets/*" in publish and "dist/*/*.tar.gz" in publish
