"""`packager compare`: real bundles of tiny models side by side, the SLA scorecard, the
recommendations, release-to-release diffs, and the errors for bad input."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

from packager.core.errors import UserError
from packager.reports.compare import compare, write_comparison
from packager.reports.recommend import SCENARIOS, TIE_BREAK, recommend
from packager.reports.report import summarize
from packager.reports.sla import load_sla
from tests.conftest import Result, assert_user_error
from tests.test_report import TARGET, build_bundle, load, make_flipped


@dataclass
class Releases:
    old: Path  # dist dir of release 1.0.0: passed, benchmarked
    new: Path  # dist dir of 2.0.0: passes its gates, 2 fewer pneumonia cases caught
    failed: Path  # dist dir of 3.0.0: fails the sensitivity gate (kept under .failed/)
    nobench: Path  # dist dir of 1.0.0 built with --no-bench
    root: Path


@pytest.fixture(scope="module")
def rel(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    make_model: Callable[..., Path],
    data_path: Path,
    benched_build: Callable[[str], tuple[Path, Result]],
    reference_project: Path,
) -> Releases:
    root = tmp_path_factory.mktemp("compare")
    # 1.0.0 with and without benchmarks: the session's builds of DEFAULT_TOML, read-only.
    old, r = benched_build(TARGET)
    assert r.code == 0, r.stderr
    # A larger head scale moves every logit away from the threshold's: at 2.0 two caught
    # pneumonia cases drop under it (a drop between 0.5 and 1 point), at 3.0 the gate fails.
    build_bundle(root / "new", make_model("tiny-x2", head_scale=2.0), data_path, version="2.0.0")
    build_bundle(root / "bad", make_model("tiny-x3", head_scale=3.0), data_path, version="3.0.0")
    return Releases(
        old / "dist",
        root / "new" / "dist",
        root / "bad" / "dist",
        reference_project / "dist",
        root,
    )


def bundle(dist: Path, version: str = "1.0.0") -> Path:
    return dist / f"tiny-{version}" / TARGET


def sla_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sla.toml"
    path.write_text(text)
    return path


def test_side_by_side_in_every_format(rel: Releases, cli: Callable[..., Result]) -> None:
    report = load(bundle(rel.old))
    c, b = report["clinical"], report["benchmark"]
    md = cli("compare", rel.old, cwd=rel.root)
    assert md.code == 0, md.stderr
    row = next(line for line in md.stdout.splitlines() if line.startswith(f"| {TARGET} |"))
    assert f"{100 * c['sensitivity']:.2f}%" in row
    lo, hi = (f"{100 * v:.2f}%" for v in c["specificity_ci95"])
    assert f"| {100 * c['specificity']:.2f}% \\({lo}–{hi}\\) |" in row
    # A shaky timing carries its marks (this busy host may well set them): read from the report.
    b1 = b["batches"][0]
    on = [("unstable", b1["stable"] is False), ("busy host", b["host_state"]["noisy"])]
    marks = ", ".join(m for m, yes in on if yes)
    shown = f" \\({marks}\\)" if marks else ""
    assert f"| {b1['latency_ms']['p50']:.3f}{shown} |" in row
    assert f"{b['best']['throughput_sps']:,.0f} \\(batch {b['best']['batch_size']}\\)" in row
    assert f"**Ship to a CPU workstation: {TARGET}**" in md.stdout
    js = cli("compare", rel.old, "--format", "json", cwd=rel.root)
    data = json.loads(js.stdout)
    (r,) = data["rows"]
    assert r["sensitivity"] == c["sensitivity"] and r["flips"] == 0
    assert r["latency_p50_ms"] == b["batches"][0]["latency_ms"]["p50"]
    assert r["peak_memory_mb"] == b["peak_rss_mb"]
    assert data["recommendations"][0]["target"] == TARGET and data["missed"] == []
    html = cli("compare", rel.old, "--format", "html", "--out", rel.root / "c.html", cwd=rel.root)
    assert html.code == 0 and html.stdout == ""
    text = (rel.root / "c.html").read_text()
    assert f"Ship to a CPU workstation: {TARGET}</h2>" in text
    for plot in ("sensitivity", "latency-bars", "throughput"):
        assert f'data-plot="{plot}"' in text


def test_every_kind_of_path_gives_the_same_row(rel: Releases, cli: Callable[..., Result]) -> None:
    b = bundle(rel.old)
    rows = []
    for path in (rel.old, b, b / "report.json", b.with_name(f"{TARGET}.tar.gz")):
        r = cli("compare", path, "--format", "json", cwd=rel.root)
        assert r.code == 0, (path, r.stderr)
        (row,) = r.json["rows"]
        assert Path(row.pop("bundle")) in (b, b.with_name(f"{TARGET}.tar.gz"))
        rows.append(row)
    assert all(r == rows[0] for r in rows)


def _not_validated_copy(src: Path, dest: Path, proxy: str | None) -> Path:
    report = copy.deepcopy(load(src))
    report["target"] = "gpu-tensorrt" if proxy is None else "apple-coreml"
    report["status"] = "not-validated"
    report["reason"] = "not validated: no NVIDIA GPU here"
    report["validation"] = {"runtime": None, "proxy": proxy, "not_validated": "no NVIDIA GPU here"}
    # A skipped benchmark as a build writes it, from the real report's host and model size.
    bench = report["benchmark"]
    report["benchmark"] = {
        "status": "skipped",
        "reason": "no NVIDIA GPU here",
        "host": {k: v for k, v in bench["host"].items() if k != "runtime_versions"},
        "model_size_mb": bench["model_size_mb"],
    }
    if proxy is None:
        report["clinical"] = None
        report["gates"] = {"passed": False, "checks": []}
    dest.write_text(json.dumps(report))
    return dest


def test_missing_pieces_say_so(rel: Releases, cli: Callable[..., Result], tmp_path: Path) -> None:
    gpu = _not_validated_copy(bundle(rel.old), tmp_path / "gpu.json", proxy=None)
    proxied = _not_validated_copy(bundle(rel.old), tmp_path / "coreml.json", proxy="ORT CPU")
    r = cli("compare", rel.nobench, gpu, proxied, cwd=rel.root)
    assert r.code == 0, r.stderr
    lines = {ln.split(" | ")[0][2:]: ln for ln in r.stdout.splitlines() if ln.startswith("| ")}
    assert lines[TARGET].count("_not benchmarked_") == 6
    assert lines["gpu-tensorrt"].count("_not validated_") == 6  # sens spec AUC flips ECE Brier
    assert "\\(proxy: ORT CPU\\)" in lines["apple-coreml"]
    for line in (lines[TARGET], lines["gpu-tensorrt"]):
        assert "| 0.000 |" not in line and "| 0.0 |" not in line
    assert "- gpu-tensorrt: not validated: no NVIDIA GPU here" in r.stdout
    assert "- apple-coreml: clinical numbers measured on a proxy: ORT CPU" in r.stdout
    # Nothing measured and validated on its own runtime: nothing is recommended.
    assert "**No target can be recommended for a CPU workstation**" in r.stdout
    js = cli("compare", rel.nobench, gpu, "--format", "json", cwd=rel.root).json
    by = {x["target"]: x for x in js["rows"]}
    assert by[TARGET]["latency_p50_ms"] is None and by[TARGET]["bench_gap"].startswith(
        "not benchmarked: --no-bench"
    )
    assert by["gpu-tensorrt"]["sensitivity"] is None


def test_sla_scorecard_and_fail_on_sla(
    rel: Releases, cli: Callable[..., Result], tmp_path: Path
) -> None:
    tput = load(bundle(rel.old))["benchmark"]["best"]["throughput_sps"]
    base = (
        "[sla]\nlatency_ms = 1000\nmemory_mb = 100000\nsensitivity = 0.98\ngflops = 0.4\n"
        f"throughput_sps = {tput * 100:.0f}\n"
    )
    sla = sla_file(tmp_path, base)
    r = cli("compare", rel.old, "--sla", sla, cwd=rel.root)
    assert r.code == 0, r.stderr  # without --fail-on-sla a miss is reported, not fatal
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith(f"| {TARGET} | met"))
    assert "**missed**: " in row.split("|")[3]  # throughput_sps, the 2nd metric
    assert row.count("met: ") == 4 and row.endswith("| **missed** |")
    failed = cli("compare", rel.old, "--sla", sla, "--fail-on-sla", cwd=rel.root)
    assert failed.code == 1
    assert "throughput_sps" in failed.stderr and "Traceback" not in failed.stderr
    # A per-target override lowers the bar for this target only.
    sla.write_text(base + f"[sla.{TARGET}]\nthroughput_sps = {tput / 100:.0f}\n")
    ok = cli("compare", rel.old, "--sla", sla, "--fail-on-sla", "--format", "json", cwd=rel.root)
    assert ok.code == 0, ok.stderr
    assert ok.json["sla"]["rows"][0]["met"] is True and ok.json["missed"] == []


def test_sla_line_not_measured_is_missed(
    rel: Releases, cli: Callable[..., Result], tmp_path: Path
) -> None:
    sla = sla_file(tmp_path, "[sla]\nlatency_ms = 1000\nsensitivity = 0.5\n")
    r = cli("compare", rel.nobench, "--sla", sla, "--fail-on-sla", "--format", "json", cwd=rel.root)
    assert r.code == 1
    lines = r.json["sla"]["rows"][0]["lines"]
    assert lines["latency_ms"]["met"] is False and lines["latency_ms"]["value"] is None
    assert lines["latency_ms"]["why"].startswith("not benchmarked")
    assert lines["sensitivity"]["met"] is True


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[sla]\nlatency = 3\n", ["unknown SLA metric 'latency'", "latency_ms"]),
        ("[sla]\nsensitivity = 98\n", ["0.98, not 98"]),
        ("[sla.cpu-onnxrt]\nlatency_ms = 3\n", ["no known target", "cpu-onnxruntime"]),
        ("[sla]\nlatency_ms = -1\n", ["non-negative number"]),
        ("[sla]\nlatency_ms = \n", ["not valid TOML"]),
        ("[slas]\nlatency_ms = 3\n", ["unknown table [slas]"]),
        ("[regression]\nlatency = 0.2\n", ["unknown key 'latency'", "latency_increase"]),
        ("", ["sets no threshold"]),
    ],
)
def test_bad_sla_file_is_one_line(
    rel: Releases, cli: Callable[..., Result], tmp_path: Path, text: str, words: list[str]
) -> None:
    sla = sla_file(tmp_path, text)
    assert_user_error(cli("compare", rel.old, "--sla", sla, cwd=rel.root), *words)


def test_bad_paths_are_one_line(rel: Releases, cli: Callable[..., Result], tmp_path: Path) -> None:
    assert_user_error(cli("compare", tmp_path / "nope", cwd=rel.root), "does not exist")
    assert_user_error(cli("compare", tmp_path, cwd=rel.root), "no report.json under")
    (tmp_path / "x.json").write_text('{"a": 1}')
    assert_user_error(cli("compare", tmp_path / "x.json", cwd=rel.root), "not a packager report")
    (tmp_path / "y.json").write_text("{")
    assert_user_error(cli("compare", tmp_path / "y.json", cwd=rel.root), "not valid JSON")
    missing = cli("compare", rel.old, "--sla", tmp_path / "none.toml", cwd=rel.root)
    assert_user_error(missing, "does not exist")


def test_release_diff_flags_a_sensitivity_regression(
    rel: Releases, cli: Callable[..., Result], tmp_path: Path
) -> None:
    old, new = load(bundle(rel.old)), load(bundle(rel.new, "2.0.0"))
    drop = old["clinical"]["sensitivity"] - new["clinical"]["sensitivity"]
    assert 0.005 < drop < 0.01  # what the fixture's models are for
    # Expected text derived from the two reports under test, not pasted from the output.
    was, now = (f"{100 * r['clinical']['sensitivity']:.2f}%" for r in (old, new))
    regression = f"sensitivity regression: {was} → {now}"
    r = cli("compare", rel.old, rel.new, cwd=rel.root)
    assert r.code == 0, r.stderr
    assert r.stdout.startswith("# Release comparison: tiny 1.0.0 → tiny 2.0.0")
    assert f"{regression} \\(tolerance 0.50 pts\\)" in r.stdout
    assert f"| sensitivity \\(95% CI\\) | {was} \\(" in r.stdout
    assert f"| {-100 * drop:.2f} pts |" in r.stdout
    assert cli("compare", rel.old, rel.new, "--fail-on-sla", cwd=rel.root).code == 1
    # The same two releases as single reports, and a looser tolerance from the SLA file.
    sla = sla_file(tmp_path, "[regression]\nsensitivity_drop = 0.01\nlatency_increase = 100\n")
    js = cli(
        "compare",
        bundle(rel.old) / "report.json",
        bundle(rel.new, "2.0.0"),
        "--sla",
        sla,
        "--fail-on-sla",
        "--format",
        "json",
        cwd=rel.root,
    )
    assert js.code == 0, js.stderr
    assert js.json["mode"] == "release-diff" and js.json["diff"]["flags"] == []
    html = cli("compare", rel.old, rel.new, "--format", "html", cwd=rel.root).stdout
    assert "regression flagged" in html or "regressions flagged" in html  # latency may add one
    assert f"<li>cpu-onnxruntime: {regression}" in html
    assert '<span class="badge failed">regression</span>' in html


def test_release_diff_with_a_failed_new_release(rel: Releases, cli: Callable[..., Result]) -> None:
    assert (rel.failed / ".failed" / "tiny-3.0.0" / TARGET / "report.json").is_file()
    r = cli("compare", rel.old, rel.failed, "--format", "json", cwd=rel.root)
    flags = r.json["diff"]["flags"]
    assert any("status passed → failed" in f for f in flags)
    assert any("sensitivity regression" in f for f in flags)
    assert any("latency cannot be checked: not benchmarked: a gate failed" in f for f in flags)
    assert r.json["recommendations"][0]["target"] is None


def test_write_comparison_for_a_dist_dir(rel: Releases, tmp_path: Path) -> None:
    sla = sla_file(tmp_path, "[sla]\nsensitivity = 0.98\n")
    dist = Path(shutil.copytree(rel.old, tmp_path / "dist", symlinks=True))  # it writes there
    paths = write_comparison(dist, sla)
    assert [p.parent for p in paths] == [dist, dist]
    assert [p.name for p in paths] == ["comparison.md", "comparison.html"]
    assert "## SLA scorecard" in paths[0].read_text()
    assert f"Ship to a CPU workstation: {TARGET}</h2>" in paths[1].read_text()


def _edit(
    report: dict,
    target: str,
    *,
    p50: float | None = None,
    p95: float | None = None,
    p95_ci: list[float] | None = None,
    tput: float | None = None,
    tput_ci: list[float] | None = None,
    mem: float | None = None,
    stable: bool = True,
    noisy: bool = False,
) -> dict:
    """A real report with its benchmark numbers set: batch-1 latency, the last batch size's
    throughput (the others at half of it, so it stays the best), serving memory, and the
    stability flags (set, so this busy host's own flags cannot leak in). An interval not given
    is +-1% of its value."""
    r = copy.deepcopy(report)
    r["target"] = target
    b = r["benchmark"]
    b1, last = b["batches"][0], b["batches"][-1]
    lat = b1["latency_ms"]
    if p50 is not None:
        lat["p50"], lat["p50_ci95"] = p50, [0.99 * p50, 1.01 * p50]
    if p95 is not None:
        lat["p95"], lat["p95_ci95"] = p95, p95_ci or [0.99 * p95, 1.01 * p95]
    if tput is not None:
        for row in b["batches"]:
            row["throughput_sps"], row["throughput_ci95"] = tput / 2, [tput / 2, tput / 2]
        last["throughput_sps"], last["throughput_ci95"] = (
            tput,
            tput_ci or [0.99 * tput, 1.01 * tput],
        )
        b["best"] = {"batch_size": last["batch_size"], "throughput_sps": tput}
    b["serving_memory_mb"] = mem if mem is not None else b["serving_memory_mb"]
    for row in b["batches"]:
        row["stable"] = stable
    b["host_state"]["noisy"] = noisy
    return r


def _row(report: dict, target: str, **bench: float) -> dict:
    row = summarize(_edit(report, target, **bench))
    row["label"] = target
    return row


def _write(tmp_path: Path, *reports: dict) -> list[Path]:
    paths = []
    for r in reports:
        path = tmp_path / r["target"] / "report.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(r))
        paths.append(path)
    return paths


def test_recommendations_rank_within_the_sla_and_keep_accelerators_off_the_cpu(
    rel: Releases, tmp_path: Path
) -> None:
    report = load(bundle(rel.old))
    fast_fat = _row(report, "cpu-openvino", p50=0.001, p95=0.002, tput=1e9, mem=500)
    lean = _row(report, "edge-ort", p50=0.5, p95=0.6, tput=10, mem=50)
    gpu = _row(report, "gpu-tensorrt", p50=0.0001, p95=0.0002, tput=1e10, mem=40)
    gpu["accelerator"] = True
    picks = {r["scenario"]: r for r in recommend([fast_fat, lean, gpu], None)}
    assert [s.key for s in SCENARIOS] == ["real-time", "bulk", "edge"]
    assert picks["real-time"]["target"] == "cpu-openvino"  # the GPU is not a CPU workstation
    assert "gpu-tensorrt: runs on an accelerator" in picks["real-time"]["excluded"][0]
    assert picks["bulk"]["target"] == "gpu-tensorrt"
    assert picks["edge"]["target"] == "gpu-tensorrt"
    sla = load_sla(
        sla_file(tmp_path, "[sla]\nmemory_mb = 100\n[sla.gpu-tensorrt]\nmemory_mb = 1\n")
    )
    picks = {r["scenario"]: r for r in recommend([fast_fat, lean, gpu], sla)}
    assert picks["real-time"]["target"] == "edge-ort"
    assert any("cpu-openvino ranks higher" in w for w in picks["real-time"]["why"])
    assert picks["bulk"]["target"] == "edge-ort"
    failed = _row(report, "cpu-openvino")
    failed["status"] = "failed"
    assert recommend([failed], None)[0]["target"] is None


def test_latency_recommendation_decides_on_p95_not_p50(rel: Releases, tmp_path: Path) -> None:
    # The demo's case: a bimodal target with the best median and a long tail.
    report = load(bundle(rel.old))
    bimodal = _edit(report, "cpu-openvino", p50=0.6, p95=9.6, p95_ci=[9.0, 10.2], mem=50)
    steady = _edit(report, "edge-ort", p50=1.3, p95=2.0, p95_ci=[1.9, 2.1], mem=60)
    lat = {r["target"]: r["benchmark"]["batches"][0]["latency_ms"] for r in (bimodal, steady)}
    by_p50 = min(lat, key=lambda t: lat[t]["p50"])
    by_p95 = min(lat, key=lambda t: lat[t]["p95"])
    assert by_p50 != by_p95  # what the fixture is for
    paths = _write(tmp_path, bimodal, steady)
    rec = json.loads(compare(paths, None, "json")[0])["recommendations"][0]
    assert rec["scenario"] == "real-time" and rec["target"] == by_p95
    assert rec["decided_on"] == "batch-1 p95 latency" and rec["within_noise"] == []
    assert f"p95 {lat[by_p95]['p95']:.3f} ms" in rec["why"][1]
    md = compare(paths, None, "md")[0]
    assert f"**Ship to a CPU workstation: {by_p95}** \\(decided on batch-1 p95 latency\\)" in md
    html = compare(paths, None, "html")[0]
    assert (
        f"Ship to a CPU workstation: {by_p95}</h2>\n<p>Decided on batch-1 p95 latency.</p>" in html
    )
    # A report without intervals (an older packager) is ranked on its point estimate, and says so.
    del bimodal["benchmark"]["batches"][0]["latency_ms"]["p95_ci95"]
    rows = [summarize(r) | {"label": r["target"]} for r in (bimodal, steady)]
    why = " ".join(recommend(rows, None)[0]["why"])
    assert (
        "ranked on point estimates: no 95% interval on batch-1 p95 latency for cpu-openvino" in why
    )


def test_overlapping_intervals_are_within_noise(rel: Releases, tmp_path: Path) -> None:
    report = load(bundle(rel.old))
    # a has the better point estimates, b the smaller serving memory.
    a = _edit(report, "cpu-openvino", p95=1.00, p95_ci=[0.90, 1.15], tput=2000, mem=80)
    b = _edit(report, "edge-ort", p95=1.05, p95_ci=[0.95, 1.20], tput=1950, mem=40)
    a["benchmark"]["batches"][-1]["throughput_ci95"] = [1900, 2150]
    b["benchmark"]["batches"][-1]["throughput_ci95"] = [1850, 2050]

    def overlap(key: Callable[[dict], list[float]]) -> bool:
        (lo1, hi1), (lo2, hi2) = key(a["benchmark"]), key(b["benchmark"])
        return max(lo1, lo2) <= min(hi1, hi2)

    p95_ci = lambda bench: bench["batches"][0]["latency_ms"]["p95_ci95"]  # noqa: E731
    tput_ci = lambda bench: bench["batches"][-1]["throughput_ci95"]  # noqa: E731
    assert overlap(p95_ci) and overlap(tput_ci)
    cheaper = min((a, b), key=lambda r: r["benchmark"]["serving_memory_mb"])["target"]
    paths = _write(tmp_path / "tie", a, b)
    picks = {
        r["scenario"]: r for r in json.loads(compare(paths, None, "json")[0])["recommendations"]
    }
    for key in ("real-time", "bulk"):
        assert picks[key]["target"] == cheaper, key
        assert picks[key]["within_noise"] == ["cpu-openvino", "edge-ort"]
        assert any(w.startswith("within noise on ") for w in picks[key]["why"])
        assert picks[key]["decided_on"].startswith(TIE_BREAK)
    md = compare(paths, None, "md")[0]
    head = next(ln for ln in md.splitlines() if ln.startswith("**Ship to a CPU workstation"))
    assert f": {cheaper}**" in head and "are within noise on batch-1 p95 latency" in head
    recs = md.split("## Recommendations")[1]
    assert recs.count("- within noise on ") == 2  # real-time and bulk; memory has no interval
    # A tie is only among targets on the same side of the SLA: b misses it, so a wins.
    sla = sla_file(tmp_path, "[sla.edge-ort]\nmemory_mb = 10\n")
    picks = {
        r["scenario"]: r for r in json.loads(compare(paths, sla, "json")[0])["recommendations"]
    }
    assert picks["real-time"]["target"] == "cpu-openvino" == picks["bulk"]["target"]
    assert picks["real-time"]["within_noise"] == []
    # Move b's intervals clear of a's: a is faster, and nothing is said about noise.
    b["benchmark"]["batches"][0]["latency_ms"]["p95_ci95"] = [1.16, 1.30]
    b["benchmark"]["batches"][-1]["throughput_ci95"] = [1800, 1899]
    assert not overlap(p95_ci) and not overlap(tput_ci)
    paths = _write(tmp_path / "apart", a, b)
    picks = {
        r["scenario"]: r for r in json.loads(compare(paths, None, "json")[0])["recommendations"]
    }
    for key in ("real-time", "bulk"):
        assert picks[key]["target"] == "cpu-openvino" and picks[key]["within_noise"] == []
    assert "within noise" not in compare(paths, None, "md")[0]


def test_every_target_missing_the_sla_is_said_first(
    rel: Releases, cli: Callable[..., Result], tmp_path: Path
) -> None:
    report = load(bundle(rel.old))
    a = _edit(report, "cpu-openvino", p50=2.0, p95=2.5)
    b = _edit(report, "edge-ort", p50=4.0, p95=5.0)
    p50 = {r["target"]: r["benchmark"]["batches"][0]["latency_ms"]["p50"] for r in (a, b)}
    paths = _write(tmp_path, a, b)
    sla = sla_file(tmp_path, "[sla]\nlatency_ms = 1.5\n")  # batch-1 p50 at most 1.5 ms
    assert not any(v <= 1.5 for v in p50.values())
    md = compare(paths, sla, "md")[0]
    title, first, *_ = [ln for ln in md.splitlines() if ln.strip()]
    assert title.startswith("# Target comparison")
    assert first.startswith("**No target meets the SLA \\(") and "sla.toml" in first
    assert "all 2 targets miss at least one line" in first
    js = compare(paths, sla, "json")[0]
    assert js.startswith('{\n  "sla_verdict": "No target meets the SLA')
    html = compare(paths, sla, "html")[0]
    at = html.index("No target meets the SLA")
    assert at < html.index('id="verdict"') < html.index('id="recommendations"')
    # A release diff says it before the diff too: no measured batch-1 p50 is 0 ms.
    zero = tmp_path / "zero.toml"
    zero.write_text("[sla]\nlatency_ms = 0\n")
    diff = cli("compare", rel.old, rel.new, "--sla", zero, cwd=rel.root)
    lines = [ln for ln in diff.stdout.splitlines() if ln.strip()]
    assert lines[0].startswith("# Release comparison") and "No target meets the SLA" in lines[1]
    # One target meets it: nothing is said.
    sla.write_text("[sla]\nlatency_ms = 3\n")
    assert sum(v <= 3 for v in p50.values()) == 1
    assert "No target meets" not in compare(paths, sla, "md")[0]
    assert json.loads(compare(paths, sla, "json")[0])["sla_verdict"] is None


def test_unstable_and_busy_host_numbers_are_marked(rel: Releases, tmp_path: Path) -> None:
    report = load(bundle(rel.old))
    shaky = _edit(report, "cpu-openvino", p50=0.5, p95=0.7, tput=3000, stable=False, noisy=True)
    calm = _edit(report, "edge-ort", p50=0.9, p95=1.2, tput=1000)
    bench = shaky["benchmark"]
    assert bench["batches"][0]["stable"] is False and bench["host_state"]["noisy"] is True
    mark = "(unstable, busy host)"
    sla = sla_file(tmp_path, "[sla]\nlatency_ms = 100\nthroughput_sps = 10\n")
    paths = _write(tmp_path, shaky, calm)
    md = compare(paths, sla, "md")[0]
    table = [ln for ln in md.splitlines() if " | passed | " in ln]
    rows = {ln.split(" | ")[0][2:]: ln for ln in table}
    esc = mark.replace("(", "\\(").replace(")", "\\)")
    assert f"| 0.500 {esc} | 0.700 {esc} | 3,000 \\(batch " in rows["cpu-openvino"]
    assert f"\\) {esc} |" in rows["cpu-openvino"]  # after the throughput's batch size
    assert "unstable" not in rows["edge-ort"] and "busy host" not in rows["edge-ort"]
    card = next(ln for ln in md.splitlines() if ln.startswith("| cpu-openvino | met"))
    assert card.count(esc) == 2  # latency_ms and throughput_sps
    data = json.loads(compare(paths, sla, "json")[0])
    row = next(r for r in data["rows"] if r["target"] == "cpu-openvino")
    assert row["latency_stable"] is False and row["noisy_host"] is True
    rt = data["recommendations"][0]
    assert rt["target"] == "cpu-openvino" and f"{mark}, p50 0.500 ms" in rt["why"][1]
    html = compare(paths, sla, "html")[0]
    assert f"<td>0.500 {mark}</td>" in html and f"<td>0.700 {mark}</td>" in html
    plots = html[html.index('class="figs"') :]  # the latency bars and throughput curves
    assert plots.count(f"cpu-openvino {mark}") == 2 and "edge-ort (" not in plots
    # A release diff's latency flag marks the shaky side (NEW here).
    before = _edit(report, "cpu-openvino", p50=0.2, p95=0.3)
    after = copy.deepcopy(shaky)
    after["model"]["version"] = "9.0.0"
    (old,), (new,) = _write(tmp_path / "old", before), _write(tmp_path / "new", after)
    flags = json.loads(compare([old, new], None, "json")[0])["diff"]["flags"]
    assert f"cpu-openvino: latency regression: batch-1 p50 0.200 ms → 0.500 ms {mark}" in flags[0]


def test_flipped_bundle_counts_its_flips(
    rel: Releases, cli: Callable[..., Result], tmp_path: Path
) -> None:
    flipped, _ = make_flipped(bundle(rel.old), tmp_path / "b" / TARGET)
    shutil.copy(bundle(rel.old).with_name(f"{TARGET}.tar.gz"), tmp_path / "b")
    r = cli("compare", bundle(rel.old), flipped, cwd=rel.root)
    assert r.code == 0, r.stderr
    assert "| flips vs reference | 0 | 3 | \\+3 |" in r.stdout
    assert "sensitivity regression" in r.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sla]\nlatency_ms = nan\n", "[sla].latency_ms = nan must be a non-negative number"),
        ("[sla]\nlatency_ms = true\n", "[sla].latency_ms = True must be a non-negative number"),
        ("[sla]\nlatency_ms = '3'\n", "[sla].latency_ms = '3' must be a non-negative number"),
        ("sla = 3\n", "sla must be a table ([sla])"),
        ("regression = 3\n", "regression must be a table ([regression])"),
        ("[regression]\nlatency_increase = -0.1\n", "[regression].latency_increase = -0.1 must"),
        ("[sla.cpu-onnxruntime]\nlatncy_ms = 1\n", "unknown SLA metric 'latncy_ms'"),
        ("[sla.cpu-onnxruntime]\nsensitivity = 95\n", "[sla.cpu-onnxruntime].sensitivity is a"),
        ("[regression]\n", "sets no threshold"),
    ],
)
def test_sla_values_are_strict_non_negative_numbers(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(UserError) as err:
        load_sla(sla_file(tmp_path, text))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_example_sla_file_loads_as_written() -> None:
    path = Path(__file__).resolve().parents[1] / "packager" / "example" / "sla.toml"
    sla = load_sla(path)
    assert sla.base == tomllib.loads(path.read_text())["sla"]  # ints kept as equal floats
    assert sla.tolerances.sensitivity_drop == 0.005 and sla.tolerances.latency_increase == 0.10
