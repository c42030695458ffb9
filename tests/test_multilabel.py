"""Multi-label models (issue 30): a 3-finding sigmoid model on PneumoniaMNIST-derived synthetic
findings (tests/multilabel_fixture.py) built for cpu-onnxruntime, cpu-openvino FP32 and INT8 and
edge-ort. Each finding's numbers in report.json are recounted here from validation.npz with plain
numpy and scikit-learn; a gate on one finding fails the build naming it; the shipped self-test
compares every finding's decision. Binary and multi-class builds are covered, unchanged, by the
rest of the suite."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests import multilabel_fixture
from tests.conftest import Result
from tests.multilabel_fixture import (
    FINDINGS,
    NAME,
    build,
)

TARGETS = ("cpu-onnxruntime", "cpu-openvino", "edge-ort")

project = multilabel_fixture.project  # the module fixture: model, data, packager.toml


@pytest.fixture(scope="module")
def built(project: Path) -> dict[str, Path]:
    """One build of the three targets (cpu-openvino FP32), and cpu-openvino INT8 on its own."""
    out = project / "dist"
    r = build(project, out, *(a for t in TARGETS for a in ("-t", t)))
    assert r.code == 0, r.stderr[-3000:]
    r8 = build(project, project / "dist8", "-t", "cpu-openvino", "--int8")
    assert r8.code == 0, r8.stderr[-3000:]
    bundles = {t: out / NAME / t for t in TARGETS}
    return bundles | {"cpu-openvino-int8": project / "dist8" / NAME / "cpu-openvino"}


def recount(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    d = p >= threshold
    tp = sum(1 for a, b in zip(y, d, strict=True) if a == 1 and b)
    fn = sum(1 for a, b in zip(y, d, strict=True) if a == 1 and not b)
    tn = sum(1 for a, b in zip(y, d, strict=True) if a == 0 and not b)
    fp = sum(1 for a, b in zip(y, d, strict=True) if a == 0 and b)
    return {"tp": tp, "fn": fn, "tn": tn, "fp": fp, "sens": tp / (tp + fn), "spec": tn / (tn + fp)}


@pytest.mark.parametrize("bundle", [*TARGETS, "cpu-openvino-int8"])
def test_every_finding_recounted(built: dict[str, Path], project: Path, bundle: str) -> None:
    b = built[bundle]
    report = json.loads((b / "report.json").read_text())
    assert report["status"] == "passed", report["reason"]
    with np.load(b / "validation.npz") as z:
        labels, probs, ref = z["labels"], z["probs"].astype(np.float64), z["reference"]
    with np.load(project / "findings.npz") as z:  # the labels are the data's own
        assert (labels == z["test_labels"]).all() and labels.shape[1] == 3
    clinical = report["clinical"]
    assert list(clinical["findings"]) == sorted(FINDINGS)
    sens = {}
    for k, name in enumerate(FINDINGS):
        f = clinical["findings"][name]
        n = recount(labels[:, k], probs[:, k], 0.5)
        assert f["confusion"] == {key: n[key] for key in ("tp", "fn", "tn", "fp")}
        assert f["sensitivity"] == pytest.approx(n["sens"], abs=1e-12)
        assert f["specificity"] == pytest.approx(n["spec"], abs=1e-12)
        assert f["auc"] == pytest.approx(roc_auc_score(labels[:, k], probs[:, k]), abs=1e-12)
        ref_sens = recount(labels[:, k], ref[:, k].astype(np.float64), 0.5)["sens"]
        assert f["sensitivity_drop"] == pytest.approx(ref_sens - n["sens"], abs=1e-12)
        sens[name] = n["sens"]
    # the summary is the finding with the lowest sensitivity
    worst = min(FINDINGS, key=lambda n: (sens[n], FINDINGS.index(n)))
    assert clinical["finding"] == worst and clinical["sensitivity"] == sens[worst]
    gates = {c["name"]: c for c in report["gates"]["checks"]}
    for k, name in enumerate(FINDINGS):
        line = gates[f"min_sensitivity[finding={name}]"]
        assert line["value"] == pytest.approx(sens[name], abs=1e-6) and line["limit"] == 0.8
        assert f"max_sensitivity_drop[finding={name}]" in gates
        enough = gates[f"min_finding_positives[finding={name}]"]
        assert (enough["value"], enough["limit"]) == (int(labels[:, k].sum()), 20)
        assert enough["verdict"] == "pass"
    runtime = json.loads((b / "runtime.json").read_text())
    assert runtime["task"] == "multilabel" and runtime["positive"] is None
    assert runtime["thresholds"] == dict.fromkeys(FINDINGS, 0.5)


def test_int8_control_protects_every_finding(built: dict[str, Path]) -> None:
    report = json.loads((built["cpu-openvino-int8"] / "report.json").read_text())
    assert report["precision"] == "int8"
    with np.load(built["cpu-openvino-int8"] / "validation.npz") as z:
        labels, probs, ref = z["labels"], z["probs"], z["reference"]
    drops = [
        recount(labels[:, k], ref[:, k], 0.5)["sens"]
        - recount(labels[:, k], probs[:, k], 0.5)["sens"]
        for k in range(3)
    ]
    assert max(drops) <= 0.05 + 1e-12  # max_sensitivity_drop holds for the worst finding


def test_predict_decides_each_finding(built: dict[str, Path], project: Path) -> None:
    from PIL import Image

    with np.load(project / "findings.npz") as z:
        image, truth = z["test_images"][0], z["test_labels"][0]
    png = project / "one.png"
    Image.fromarray(image).save(png)
    b = built["cpu-onnxruntime"]
    out = subprocess.run(
        [sys.executable, str(b / "predict.py"), str(png)], capture_output=True, text=True
    )
    line = json.loads(out.stdout)
    with np.load(b / "validation.npz") as z:
        p0 = z["probs"][0]
    assert line["findings"] == [n for k, n in enumerate(FINDINGS) if p0[k] >= 0.5]
    assert list(line["probabilities"]) == FINDINGS
    assert len(truth) == 3


def test_selftest_replays_every_finding(built: dict[str, Path], tmp_path: Path) -> None:
    """Each finding's near-threshold cases are in the golden set and the self-test passes; a
    threshold moved on one finding alone (runtime.json and the golden set's record agree
    otherwise) flips that finding's decisions, and the replay names those cases."""
    from packager.shipped import selftest as shipped

    b = built["cpu-onnxruntime"]
    meta = json.loads((b / "selftest.json").read_text())
    assert meta["thresholds"] == dict.fromkeys(FINDINGS, 0.5) and meta["positive_index"] is None
    assert meta["cases"]["near-threshold"] >= 2 * len(FINDINGS)
    copy = tmp_path / "bundle"
    shutil.copytree(b, copy)
    config = json.loads((copy / "runtime.json").read_text())
    runtime = _open(copy)
    try:
        checks = {c["name"]: c for c in shipped.replay(copy, runtime, config)}
        assert checks["decisions"]["status"] == "passed", checks
        with np.load(copy / "selftest.npz") as g:
            golden = np.concatenate([g["probs"], g["raw_probs"]])
        # move one finding's threshold past its near-threshold cases above it
        k = FINDINGS.index("upper")
        config["thresholds"]["upper"] = 0.5 + 0.05
        checks = {c["name"]: c for c in shipped.replay(copy, runtime, config)}
    finally:
        runtime.close()
    tol = meta["tolerance"]
    flips = [
        i for i, g in enumerate(golden) if abs(g[k] - 0.5) > tol and (g[k] >= 0.55) != (g[k] >= 0.5)
    ]
    assert flips and checks["decisions"]["differing_cases"] == flips
    assert checks["probabilities"]["status"] == "passed"


def _open(bundle: Path):  # the bundle's own runtime, as predict.py opens it
    sys.path.insert(0, str(bundle))
    try:
        from predict import open_runtime  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(bundle))
    return open_runtime(bundle)[0]


def test_site_acceptance_per_finding(
    built: dict[str, Path], project: Path, cli: Callable[..., Result], tmp_path: Path
) -> None:
    """Site acceptance on the val split: every finding's rates, gate lines and error rows,
    recounted from the site npz with plain loops; the verdict is the worst finding's."""
    b = built["cpu-onnxruntime"]
    r = cli(
        "validate",
        b,
        "--data",
        project / "findings.npz",
        "--split",
        "val",
        "--out",
        tmp_path / "site",
        cwd=tmp_path,
    )
    assert r.code in (0, 1), r.stderr[-2000:]
    site = json.loads(next((tmp_path / "site").glob("*.json")).read_text())
    z = np.load(next((tmp_path / "site").glob("*.npz")))
    labels, probs, rows = z["labels"], z["probs"].astype(np.float64), z["row"]
    with np.load(project / "findings.npz") as d:
        assert (labels == d["val_labels"]).all()
    checks = {c["name"]: c for c in site["gates"]["checks"]}
    assert "finite_outputs" in checks
    sens = {}
    for k, name in enumerate(FINDINGS):
        n = recount(labels[:, k], probs[:, k], 0.5)
        f = site["findings"][name]
        assert f["rates"]["sensitivity"]["hits"] == n["tp"]
        assert f["rates"]["sensitivity"]["n"] == n["tp"] + n["fn"]
        assert f["rates"]["specificity"]["hits"] == n["tn"]
        fp = [int(rows[i]) for i in range(len(rows)) if probs[i, k] >= 0.5 and labels[i, k] == 0]
        assert f["errors"]["false_positives"] == sorted(fp)
        line = checks[f"min_sensitivity[finding={name}]"]
        assert line["value"] == pytest.approx(n["sens"], abs=1e-6)
        # decided on the 95% lower bound at a site: pass only when it clears 0.8
        assert (line["verdict"] == "pass") == (line["ci95"][0] >= 0.8 - 1e-12)
        sens[name] = n["sens"]
    assert site["finding"] == min(FINDINGS, key=lambda n: (sens[n], FINDINGS.index(n)))
    assert site["decision"]["thresholds"] == dict.fromkeys(FINDINGS, 0.5)
    worst = all(c["verdict"] == "pass" for c in checks.values())
    assert (site["verdict"] == "pass") == worst and (r.code == 0) == worst
    html = next((tmp_path / "site").glob("*.html")).read_text()
    assert all(f"<td>{n}</td>" in html for n in FINDINGS)


def test_site_on_the_build_data_completes_per_finding(
    built: dict[str, Path], project: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    """On the bundle's own data, validate re-validates it per finding and publishes a new
    generation whose report.json has every finding recounted."""
    out = tmp_path / "dist"
    shutil.copytree(built["cpu-onnxruntime"].parent, out / NAME, symlinks=True)
    b = out / NAME / "cpu-onnxruntime"
    r = cli("validate", b, "--data", project / "findings.npz", cwd=tmp_path)
    assert r.code == 0, r.stderr[-2000:]
    report = json.loads((b / "report.json").read_text())
    with np.load(b / "validation.npz") as z:
        labels, probs = z["labels"], z["probs"].astype(np.float64)
    for k, name in enumerate(FINDINGS):
        n = recount(labels[:, k], probs[:, k], 0.5)
        assert report["clinical"]["findings"][name]["sensitivity"] == pytest.approx(n["sens"])
    names = [c["name"] for c in report["gates"]["checks"]]
    assert names.count("finite_outputs") == 1
    assert all(f"min_sensitivity[finding={n}]" in names for n in FINDINGS)


def test_report_lists_every_finding_sortable_in_chromium(built: dict[str, Path]) -> None:
    """report.html's per-finding table in Chromium: one row per finding with report.json's
    numbers, re-ordered by a click on the sensitivity header (ascending, then descending), and
    one small ROC and one reliability diagram per finding."""
    from tests.test_report_browser import CHROMIUM, check_page

    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/install-browser.sh")
    from playwright import sync_api

    b = built["cpu-onnxruntime"]
    findings = json.loads((b / "report.json").read_text())["clinical"]["findings"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = check_page(browser, b / "report.html", "report-multilabel.png")
            names = page.locator("#findings tbody tr td:first-child").all_inner_texts()
            assert sorted(names) == sorted(FINDINGS)
            page.locator("#findings th", has_text="sensitivity").first.click()
            up = page.locator("#findings tbody tr td:first-child").all_inner_texts()
            page.locator("#findings th", has_text="sensitivity").first.click()
            down = page.locator("#findings tbody tr td:first-child").all_inner_texts()
            axes = page.locator('svg[data-plot="roc-findings"] g[id^="axes_"]').count()
            cal = page.locator('svg[data-plot="reliability-findings"]').text_content() or ""
            cal_axes = page.locator('svg[data-plot="reliability-findings"] g[id^="axes_"]').count()
            signoff = page.locator("#finding-verdicts tr").all_inner_texts()
        finally:
            browser.close()
    by_sens = sorted(FINDINGS, key=lambda n: findings[n]["sensitivity"])
    assert up[0] == by_sens[0] and down[0] == by_sens[-1]
    assert axes == len(FINDINGS) and cal_axes == len(FINDINGS)
    for name in FINDINGS:  # each finding's own ECE, as report.json has it
        ece = findings[name]["evidence"]["calibration"]["target"]["ece"]
        assert f"{name} (ECE {ece:.3f})" in cal
    assert "not drawn" not in (b / "report.html").read_text()
    # the sign-off's matrix: a row per finding, a verdict per gate
    assert len(signoff) == 1 + len(FINDINGS)
    assert all(row.count("pass") == 3 for row in signoff[1:]), signoff


def _rehashed(bundle: Path, dest: Path, edit: Callable[[Path], None]) -> Path:
    """A copy of `bundle` edited, with every manifest entry made to agree again (what a hostile
    or careless re-packager does)."""
    import hashlib

    copy = shutil.copytree(bundle, dest)
    edit(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for name, meta in manifest["files"].items():
        data = (copy / name).read_bytes()
        meta["sha256"], meta["size"] = hashlib.sha256(data).hexdigest(), len(data)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _json_edit(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(b: Path) -> None:
        doc = json.loads((b / name).read_text())
        change(doc)
        (b / name).write_text(json.dumps(doc))

    return edit


@pytest.mark.parametrize(
    ("name", "change", "words"),
    [
        (  # the bundle made a one-finding model: predict.py would decide 'bright' only
            "runtime.json",
            lambda d: d.pop("task") and d.update(positive="bright"),
            "runtime.json: task",
        ),
        ("runtime.json", lambda d: d["thresholds"].update(left=0.9), "runtime.json: thresholds"),
        ("selftest.json", lambda d: d["thresholds"].update(left=0.9), "selftest.json: thresholds"),
        (  # a finding's gate limit lowered in the report
            "report.json",
            lambda d: [
                c.update(limit=0.1)
                for c in d["gates"]["checks"]
                if c["name"] == "min_sensitivity[finding=upper]"
            ],
            "gates.min_sensitivity for upper",
        ),
    ],
)
def test_an_edited_multilabel_bundle_is_rejected_before_its_code_runs(
    built: dict[str, Path],
    tmp_path: Path,
    cli: Callable[..., Result],
    name: str,
    change: Callable[[dict], None],
    words: str,
) -> None:
    b = _rehashed(built["cpu-onnxruntime"], tmp_path / "b", _json_edit(name, change))
    r = cli("selftest", b, cwd=tmp_path)
    assert r.code == 1, (r.stdout, r.stderr)
    assert "no bundle code ran" in r.stdout + r.stderr and words in r.stdout + r.stderr
