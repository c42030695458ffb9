"""The typed documents (packager/core/documents/__init__.py) and their published JSON Schemas (docs/schemas/):
the committed schemas are what the models give, and the documents a real build writes pass an
independent validator (the check-jsonschema CLI) against the committed files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from packager.core import documents
from tests.conftest import Result, assert_user_error, must_have
from tests.test_trust_verify_first import rehash

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "docs" / "schemas"
ROOT = Path("dist/tiny-1.0.0")
CHECK_JSONSCHEMA = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))


def check_jsonschema(schema: str, *docs: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema (python-jsonschema underneath, formats checked) against the committed
    schema file: nothing of packager's own code runs here."""
    if CHECK_JSONSCHEMA is None:
        must_have("not validated: the check-jsonschema CLI is not installed (packager[dev])")
    return subprocess.run(
        [CHECK_JSONSCHEMA, "--schemafile", str(SCHEMAS / f"{schema}.schema.json"), *map(str, docs)],
        capture_output=True,
        text=True,
    )


def schema_errors(schema: str, doc: object) -> list[str]:
    """What python-jsonschema (check-jsonschema's engine, formats checked) finds wrong with
    `doc` against the committed schema file, in process: nothing of packager's code runs."""
    from jsonschema.validators import validator_for

    spec = json.loads((SCHEMAS / f"{schema}.schema.json").read_text())
    cls = validator_for(spec)
    cls.check_schema(spec)
    found = cls(spec, format_checker=cls.FORMAT_CHECKER).iter_errors(doc)
    return [f"{list(e.absolute_path)}: {e.message}" for e in found]


def test_committed_schemas_are_what_the_models_give() -> None:
    committed = {p.name for p in SCHEMAS.glob("*.schema.json")}
    assert committed == {f"{name}.schema.json" for name in documents.SCHEMAS}
    for name, model in documents.SCHEMAS.items():
        on_disk = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
        assert on_disk == documents.json_schema(model), (
            f"docs/schemas/{name}.schema.json is stale: run python -m packager.core.documents "
            "docs/schemas"
        )


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    data_path: Path,
    benched_build: Callable[[str], tuple[Path, Result]],
) -> tuple[Path, Path]:
    """(a passed cpu-onnxruntime bundle built with benchmarks: the session's, read-only; a
    failed one under .failed/)."""
    from tests.conftest import DEFAULT_TOML, _run, bundle_dir

    passed, r = benched_build("cpu-onnxruntime")
    assert r.code == 0, r.stderr
    root = tmp_path_factory.mktemp("failed")
    toml = DEFAULT_TOML.format(model=tiny_model, data=data_path)
    (root / "packager.toml").write_text(toml.replace("threshold = 0.2", "threshold = 0.95"))
    r = _run(["build", "-t", "cpu-onnxruntime", "--json", "-q"], root)
    assert r.code == 1, r.stderr
    failed = root / "dist/.failed/tiny-1.0.0" / "cpu-onnxruntime"
    return bundle_dir(passed, "cpu-onnxruntime"), failed


def test_a_real_build_writes_documents_the_published_schemas_accept(
    built: tuple[Path, Path], cli: Callable[..., Result], tmp_path: Path
) -> None:
    passed, failed = built
    for bundle, status, bench in ((passed, "passed", "ok"), (failed, "failed", "skipped")):
        report = json.loads((bundle / "report.json").read_text())
        assert report["status"] == status and report["benchmark"]["status"] == bench
    for name in ("report", "runtime", "manifest", "selftest"):  # both bundles' in one call
        r = check_jsonschema(name, passed / f"{name}.json", failed / f"{name}.json")
        assert r.returncode == 0, (name, r.stdout, r.stderr)
    # The acceptance record a hospital writes with the bundle's own self-test.
    record = tmp_path / "acceptance.json"
    r = cli("selftest", passed, "--record", record, "--json", cwd=tmp_path)
    assert r.code == 0, r.stderr
    assert r.json["verdict"] == "accepted"
    ok = check_jsonschema("acceptance", record)
    assert ok.returncode == 0, (ok.stdout, ok.stderr)


@pytest.mark.parametrize(
    ("schema", "file", "change"),
    [
        ("report", "report.json", lambda d: d.update(status="fine")),
        ("report", "report.json", lambda d: d.update(colour="green")),
        ("report", "report.json", lambda d: d["steps"][0].update(status="done")),
        ("report", "report.json", lambda d: d["gates"]["checks"][0].update(status="skipped")),
        ("report", "report.json", lambda d: d["benchmark"].update(status="maybe")),
        ("runtime", "runtime.json", lambda d: d.update(output="scores")),
        ("runtime", "runtime.json", lambda d: d.pop("threshold")),
        ("manifest", "manifest.json", lambda d: d.update(status="shipped")),
        ("manifest", "manifest.json", lambda d: d["files"]["model.onnx"].pop("sha256")),
    ],
)
def test_the_schemas_and_the_models_refuse_what_packager_never_writes(
    built: tuple[Path, Path], schema: str, file: str, change: Callable
) -> None:
    data = json.loads((built[0] / file).read_text())
    assert schema_errors(schema, data) == []  # as written: refused only for the change
    change(data)
    assert schema_errors(schema, data)
    with pytest.raises(ValueError):
        documents.SCHEMAS[schema].model_validate(data)


def test_the_models_hold_the_rules_a_schema_cannot(built: tuple[Path, Path]) -> None:
    """A check that did not run is never passed, only the verdict `pass` passes (never
    `insufficient evidence` or `undefined`), and gates pass only when every check does."""
    report = json.loads((built[0] / "report.json").read_text())
    documents.Report.model_validate(report)
    check = report["gates"]["checks"][0]
    assert check["verdict"] == "pass" and check["passed"] is True
    not_run = json.loads(json.dumps(report))
    not_run["gates"]["checks"][0] = check | {"status": "not-run", "passed": True}
    with pytest.raises(ValueError, match="passed=True but status not-run"):
        documents.Report.model_validate(not_run)
    for verdict in ("insufficient evidence", "undefined", "fail"):
        passed_anyway = json.loads(json.dumps(report))
        passed_anyway["gates"]["checks"][0] = check | {"verdict": verdict}
        with pytest.raises(ValueError, match=f"passed=True but verdict {verdict}"):
            documents.Report.model_validate(passed_anyway)
    gate_failed = json.loads(json.dumps(report))
    gate_failed["gates"]["checks"][0] = check | {
        "status": "failed",
        "passed": False,
        "verdict": "insufficient evidence",
    }
    with pytest.raises(ValueError, match="gates.passed"):
        documents.Report.model_validate(gate_failed)
    gate_failed["gates"]["passed"] = False  # consistent gates, but the verdict still says passed
    with pytest.raises(ValueError, match="status passed with gates"):
        documents.Report.model_validate(gate_failed)


def test_status_words_write_as_plain_strings() -> None:
    word = documents.ReportStatus.not_validated
    assert json.dumps({"s": word}) == '{"s": "not-validated"}'
    assert f"{word}" == str(word) == "not-validated" and word == "not-validated"
    assert {"not-validated": 3}[word] == 3 and word in {"not-validated"}


def test_a_record_outside_the_acceptance_model_is_a_one_line_error(
    built: tuple[Path, Path], cli: Callable[..., Result], tmp_path: Path
) -> None:
    """A bundle whose selftest.py writes something else than an acceptance record (an older or
    altered one, its hashes rewritten to pass packager's own check): `packager selftest` names
    the mismatch instead of passing the dict on."""
    bundle = tmp_path / "cpu-onnxruntime"
    shutil.copytree(built[0], bundle)
    code = bundle / "selftest.py"
    code.write_text(code.read_text().replace('"packager acceptance"', '"something else"'))
    rehash(bundle, "selftest.py", code=True)
    r = cli("selftest", bundle, "--record", tmp_path / "rec.json", cwd=tmp_path)
    assert_user_error(r, "not a packager acceptance record", "record")


def test_validate_writes_a_site_report_the_schema_accepts_and_refuses_a_bundle_outside_it(
    built: tuple[Path, Path], cli: Callable[..., Result], data_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "site"
    r = cli("validate", built[0], "--data", data_path, "--out", out, "--json", cwd=tmp_path)
    # 386/390 positives: the 95% lower bound (0.974) cannot clear min_sensitivity 0.98.
    assert r.code == 1 and r.json["verdict"] == "insufficient evidence", r.stderr
    [site] = out.glob("site-validation-*.json")
    ok = check_jsonschema("site-validation", site)
    assert ok.returncode == 0, (ok.stdout, ok.stderr)
    # A bundle whose report.json is not one packager writes: one line naming the mismatch.
    bundle = Path(shutil.copytree(built[0], tmp_path / "cpu-onnxruntime"))
    report = json.loads((bundle / "report.json").read_text())
    (bundle / "report.json").write_text(json.dumps(report | {"status": "fine"}))
    rehash(bundle, "report.json")  # past packager's own check, to the document's model
    r = cli("validate", bundle, "--data", data_path, cwd=tmp_path)
    assert_user_error(r, "report.schema.json", "status", "rebuild the bundle")
