"""Per-bundle report.md / report.html: real bundles of the tiny model, plots from the real
benchmark and validation, and reports that say what is missing instead of showing zeros."""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from packager.core.data import load_dataset
from packager.core.metrics import clinical
from packager.reports.render import render_reports
from tests.conftest import DEFAULT_TOML, Result, _run

TARGET = "cpu-onnxruntime"
PLOTS = ("latency", "sweep", "confusion", "roc", "reliability")


def bundle_of(project: Path, version: str = "1.0.0", name: str = "tiny") -> Path:
    return project / "dist" / f"{name}-{version}" / TARGET


def load(bundle: Path) -> dict:
    return json.loads((bundle / "report.json").read_text())


def plots_in(html: str) -> list[str]:
    return re.findall(r'<svg role="img" aria-label="[^"]*" class="plot" data-plot="([^"]+)"', html)


def validation_images(data_path: Path) -> np.ndarray:
    return load_dataset(data_path, "test", ["normal", "pneumonia"]).images


def make_flipped(bundle: Path, dest: Path, n_flips: int = 3) -> tuple[Path, dict]:
    """A copy of a real bundle as a less faithful target would leave it: the probabilities of
    `n_flips` true positives pushed under the threshold, report.json recomputed from them with
    the same metrics code a build uses."""
    shutil.copytree(bundle, dest)
    report = load(dest)
    with np.load(dest / "validation.npz") as z:
        labels, probs, reference = z["labels"], z["probs"].copy(), z["reference"]
    t = report["clinical"]["threshold"]
    caught = np.flatnonzero((labels == 1) & (reference[:, 1] >= t))[:n_flips]
    probs[caught, 1] = t / 4
    probs[caught, 0] = 1 - t / 4
    np.savez(dest / "validation.npz", labels=labels, probs=probs, reference=reference)
    c = clinical(probs.astype(np.float64), labels, 1, t, reference.astype(np.float64))
    report["clinical"].update(
        sensitivity=c.sensitivity,
        sensitivity_ci95=list(c.sensitivity_ci95),
        specificity=c.specificity,
        accuracy=c.accuracy,
        auc=c.auc,
        confusion=c.confusion,
        sensitivity_drop=c.sensitivity_drop,
        flipped=c.flipped,
        max_abs_diff=c.max_abs_diff,
    )
    (dest / "report.json").write_text(json.dumps(report))
    return dest, report


def build_bundle(
    cwd: Path,
    model: Path,
    data: Path,
    *args: str,
    version: str = "1.0.0",
    extra: str = "",
    labels: str = "",
) -> Path:
    """A real bundle of `model` built by the CLI in `cwd` (for module-scoped fixtures, which
    cannot use the function-scoped `project` / `cli`); `extra` is appended to packager.toml,
    `labels` to its [labels] table."""
    cwd.mkdir(parents=True, exist_ok=True)
    toml = DEFAULT_TOML.format(model=model, data=data).replace("[labels]\n", f"[labels]\n{labels}")
    toml += extra
    (cwd / "packager.toml").write_text(toml.replace('version = "1.0.0"', f'version = "{version}"'))
    r = _run(["build", "--target", TARGET, "--quiet", *args], cwd)
    assert r.code in (0, 1), r.stderr  # 1: a gate failed, the bundle is kept under .failed/
    return bundle_of(cwd, version)


@pytest.fixture(scope="module")
def built(benched_build: Callable[[str], tuple[Path, Result]]) -> Path:
    """One real benchmarked bundle (the session's, conftest.benched_build), read-only; tests
    that change it work on a copy."""
    root, r = benched_build(TARGET)
    assert r.code == 0, r.stderr
    return bundle_of(root)


def test_report_has_every_plot_and_the_numbers_of_report_json(
    built: Path, data_path: Path, tmp_path: Path
) -> None:
    report = load(built)
    html = (built / "report.html").read_text()
    md = (built / "report.md").read_text()
    assert sorted(plots_in(html)) == sorted(PLOTS)
    # Self-contained: nothing fetched from anywhere.
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<script" not in html
    c = report["clinical"]
    sens = f"{100 * c['sensitivity']:.2f}%"
    assert sens in html and sens in md
    for key in ("tp", "fn", "fp", "tn"):
        assert f"| {c['confusion'][key]}" in md
    b1 = report["benchmark"]["batches"][0]
    assert b1["batch_size"] == 1
    samples = b1["latency_samples_ms"]
    assert 0 < len(samples) <= 1000 and samples == sorted(samples)
    assert samples[0] <= b1["latency_ms"]["p50"] <= samples[-1]
    assert f"| {b1['latency_ms']['p50']:.4f} |" in md
    assert "## At a glance" in md and "Against batch size" in md
    # The same report drawn again (another process, same inputs) is byte-identical.
    again = Path(shutil.copytree(built, tmp_path / TARGET))
    render_reports(again, report, validation_images(data_path))
    assert (again / "report.html").read_text() == html


def test_flipped_cases_show_thumbnails_and_both_probabilities(
    built: Path, data_path: Path, tmp_path: Path
) -> None:
    bundle, report = make_flipped(built, tmp_path / "flipped")
    flipped = report["clinical"]["flipped"]
    assert len(flipped) == 3
    render_reports(bundle, report, validation_images(data_path))
    html = (bundle / "report.html").read_text()
    with np.load(bundle / "validation.npz") as z:
        probs, reference = z["probs"], z["reference"]
    cards = re.findall(r'<figure class="flip (?:bad|good)">(.*?)</figure>', html, re.S)
    assert len(cards) == 3
    for card, i in zip(cards, sorted(flipped), strict=True):
        assert 'src="data:image/png;base64,' in card
        assert f"#{i}</b> truly pneumonia" in card
        assert f"this target p = {probs[i, 1]:.4f}" in card
        assert f"reference p = {reference[i, 1]:.4f}" in card
        assert "new miss" in card
    md = (bundle / "report.md").read_text()
    assert md.count("| new miss |") == 3
    # Re-rendered without the images (as `packager validate` does): listed, without pictures.
    render_reports(bundle, report, None)
    html = (bundle / "report.html").read_text()
    assert "<img" not in html
    assert "No thumbnails" in html and html.count('class="flip bad"') == 3


def test_not_benchmarked_says_so(reference_bundle: Path) -> None:
    bundle = reference_bundle  # `build --target TARGET --no-bench` of DEFAULT_TOML, read-only
    html = (bundle / "report.html").read_text()
    md = (bundle / "report.md").read_text()
    assert sorted(plots_in(html)) == ["confusion", "reliability", "roc"]
    for text in (html, md):
        assert "not benchmarked: --no-bench given" in text
        assert "0.000 ms" not in text and "p50 ms | 0" not in text
    glance = md.split("## At a glance")[1].split("## Clinical")[0]
    assert glance.count("_not benchmarked: --no-bench given_") == 6  # p50 p95 tput 2x memory load


def _not_validated(report: dict, proxy: str | None) -> dict:
    r = copy.deepcopy(report)
    r["status"] = "not-validated"
    r["validation"] = {"runtime": None, "proxy": proxy, "not_validated": "no NVIDIA GPU here"}
    r["reason"] = "not validated: no NVIDIA GPU here"
    if proxy is None:
        r["clinical"] = None
        r["gates"] = {"passed": False, "checks": []}
        r["benchmark"] = {"status": "skipped", "reason": "no NVIDIA GPU here", "host": {}}
    return r


def test_not_validated_report_shows_no_clinical_zeros(built: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "gpu"
    shutil.copytree(built, bundle)
    report = _not_validated(load(built), proxy=None)
    render_reports(bundle, report, None)
    html = (bundle / "report.html").read_text()
    md = (bundle / "report.md").read_text()
    assert plots_in(html) == []
    for text in (html, md):
        assert "not validated: no NVIDIA GPU here" in text
        assert "not benchmarked: no NVIDIA GPU here" in text
        assert "0.00%" not in text
    assert "No gate was evaluated" in md


def test_proxy_validated_report_is_labelled(built: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "proxy"
    shutil.copytree(built, bundle)
    report = _not_validated(load(built), proxy="ONNX Runtime CPU on the same FP16 model")
    render_reports(bundle, report, None)
    html = (bundle / "report.html").read_text()
    md = (bundle / "report.md").read_text()
    assert "Validated on a proxy</b> (ONNX Runtime CPU on the same FP16 model)" in html
    assert "**Validated on a proxy** (ONNX Runtime CPU on the same FP16 model)" in md
    assert "confusion" in plots_in(html)


def test_plots_that_would_contradict_the_report_are_not_drawn(built: Path, tmp_path: Path) -> None:
    """A bundle re-validated elsewhere keeps the build's validation.npz: its ROC would not match."""
    bundle = tmp_path / "stale"
    shutil.copytree(built, bundle)
    report = load(bundle)
    conf = report["clinical"]["confusion"]
    conf["tp"], conf["fn"] = conf["tp"] - 1, conf["fn"] + 1
    render_reports(bundle, report, None)
    html = (bundle / "report.html").read_text()
    assert "roc" not in plots_in(html)
    assert "ROC not drawn: validation.npz does not match this report" in html


def test_user_text_is_escaped(project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    name = "<img src=x onerror=alert(1)>"
    labels = '[labels]\nnames = ["normal*", "pneu|monia <b>"]\npositive = "pneu|monia <b>"\n'
    cwd = project()
    toml = (cwd / "packager.toml").read_text()
    toml = toml.replace('name = "tiny"', f'name = "{name}"').replace("[labels]\n", labels)
    (cwd / "packager.toml").write_text(toml)
    r = cli("build", "--target", TARGET, "--quiet", cwd=cwd)
    assert r.code == 0, r.stderr
    bundle = bundle_of(cwd, name=name)
    html = (bundle / "report.html").read_text()
    md = (bundle / "report.md").read_text()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "monia <b>" not in html and "pneu|monia &lt;b&gt;" in html
    assert "monia <b>" not in md and "| truly pneu\\|monia &lt;b&gt; |" in md
    # Every table row keeps its column count: a `|` in a label does not open a new cell.
    for line in md.splitlines():
        if line.startswith("| truly"):
            assert len(re.split(r"(?<!\\)\|", line)) == 5


def test_harness_overhead_is_stated_only_where_the_runtime_timed_its_calls() -> None:
    from packager.reports.report import summarize

    row = {"batch_size": 1, "latency_ms": {"p50": 0.44, "p95": 0.5}, "throughput_sps": 2000.0}
    bench = {"status": "ok", "batches": [row]}
    assert summarize({"benchmark": bench})["harness_overhead"] is None
    row["runtime_latency_ms"] = {"p50": 0.40}
    got = summarize({"benchmark": bench})["harness_overhead"]
    assert got["batch_size"] == 1 and got["runtime_p50_ms"] == 0.40
    assert got["added_us"] == pytest.approx(40.0) and got["percent"] == pytest.approx(10.0)
    row["runtime_latency_ms"] = {"p50": 0.0}  # a runtime reporting nothing: no division by zero
    assert summarize({"benchmark": bench})["harness_overhead"] is None
