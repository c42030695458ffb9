"""The HTML reports in a real headless Chromium (Debian's package, driven by Playwright): they
render, log no console error, fetch nothing, and every plot and thumbnail is visible.
Screenshots are kept under test-artifacts/ (gitignored)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from packager.reports.compare import write_comparison
from packager.reports.render import render_reports
from tests.conftest import _run, must_have
from tests.test_report import TARGET, build_bundle, make_flipped, validation_images

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("PACKAGER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser() -> Any:
    if not Path(CHROMIUM).is_file():
        must_have(
            f"no Chromium at {CHROMIUM}: run scripts/install-browser.sh (Debian's chromium "
            "package) or set PACKAGER_CHROMIUM"
        )
    try:
        from playwright import sync_api
    except ImportError:
        must_have("playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI runs the tests as root, where Chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def check_page(browser: Any, html: Path, shot: str) -> Any:
    """Open `html`; assert no console error, no page error, no request beyond the file itself
    and data: URIs; keep a full-page screenshot. Returns the open page."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on(
        "console",
        lambda m: (
            problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning")
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on(
        "request",
        lambda r: (
            None if r.url.startswith(("file:", "data:")) else problems.append(f"fetched {r.url}")
        ),
    )
    page.goto(html.as_uri(), wait_until="load")
    assert problems == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
    assert (ARTIFACTS / shot).stat().st_size > 10_000
    return page


def visible_plots(page: Any) -> dict[str, tuple[float, float]]:
    """data-plot name -> rendered (width, height) of every plot that is visible on the page."""
    out = {}
    for svg in page.locator("svg.plot").all():
        box = svg.bounding_box()
        assert svg.is_visible() and box is not None
        out[svg.get_attribute("data-plot")] = (box["width"], box["height"])
        # Painted, not an empty frame: the pixels on screen hold axes, marks and labels.
        pixels = np.asarray(Image.open(io.BytesIO(svg.screenshot())).convert("RGB"))
        colours = np.unique(pixels.reshape(-1, 3), axis=0)
        assert len(colours) > 20, svg.get_attribute("data-plot")
    return out


# Subgroups for the sign-off page: two sites by image order and a small third one; a model card,
# the threshold's rationale and a build date (SOURCE_DATE_EPOCH) for its header.
GROUPS = '[data.groups]\nsite = "site.txt"\n[gates]\nmin_subgroup_sensitivity = 0.9\n'
CARD = {
    "intended_use": "Triage of frontal chest X-rays for a radiologist's review",
    "indications": ["children aged 1 to 5"],
    "contraindications": ["lateral views"],
}
RATIONALE = "the highest threshold with a val sensitivity lower bound above the gate"
EPOCH, BUILT = 1_767_225_600, "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_path: Path) -> Path:
    cwd = tmp_path_factory.mktemp("browser")
    site = np.array(["A", "B"])[np.arange(624) % 2].astype(object)
    site[:20] = "C"  # about 13 positives: too small to judge
    (cwd / "site.txt").write_text("\n".join(site) + "\n")
    card = "[model.card]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in CARD.items())
    labels = f"threshold_rationale = {json.dumps(RATIONALE)}\n"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
        bundle = build_bundle(cwd, tiny_model, data_path, extra=GROUPS + card, labels=labels)
    return bundle.parents[1]


def test_bundle_report_renders_with_visible_plots(browser: Any, dist: Path) -> None:
    page = check_page(browser, dist / f"tiny-1.0.0/{TARGET}/report.html", f"report-{TARGET}.png")
    plots = visible_plots(page)
    assert sorted(plots) == ["confusion", "latency", "reliability", "roc", "sweep"]
    assert all(w > 200 and h > 150 for w, h in plots.values()), plots
    assert page.locator("h1").inner_text().startswith(f"tiny 1.0.0 · {TARGET}")
    page.close()


def test_flipped_thumbnails_load(browser: Any, dist: Path, data_path: Path, tmp_path: Path) -> None:
    bundle, report = make_flipped(dist / f"tiny-1.0.0/{TARGET}", tmp_path / TARGET, n_flips=5)
    render_reports(bundle, report, validation_images(data_path))
    page = check_page(browser, bundle / "report.html", "report-flipped.png")
    imgs = page.locator(".flip img").all()
    assert len(imgs) == 5
    for img in imgs:
        assert img.is_visible()
        assert img.evaluate("i => i.complete && i.naturalWidth") >= 28
    page.close()


def test_comparison_renders_with_verdict_and_plots(
    browser: Any, dist: Path, tmp_path: Path
) -> None:
    sla = tmp_path / "sla.toml"
    sla.write_text("[sla]\nlatency_ms = 3\nmemory_mb = 10000\nsensitivity = 0.98\ngflops = 0.4\n")
    _, html = write_comparison(dist, sla)
    page = check_page(browser, html, "comparison.png")
    assert page.locator("#verdict h2").inner_text() == f"Ship to a CPU workstation: {TARGET}"
    assert sorted(visible_plots(page)) == ["latency-bars", "sensitivity", "throughput"]
    assert page.locator("#sla .badge.missed").count() == 0
    page.close()


def pdf_pages(pdf: Path) -> list[str]:
    """Each page's text, read back by poppler's pdftotext."""
    text = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    return text.split("\f")


def test_signoff_prints_on_at_most_two_pdf_pages(dist: Path, tmp_path: Path) -> None:
    """Chromium's own print path (--print-to-pdf), read back with poppler: the first two A4
    pages hold the whole sign-off (what the model is for, build date, operating point with its
    rationale, every gate by name, subgroups, paired test, the change summary, calibration,
    fragility, what was not validated, the approver block), and the rest of the report starts
    after it. No badge contradicts the text: a gate whose claim the data cannot support prints
    "pass on the point estimate only", never a plain pass."""
    tools = {t: shutil.which(t) for t in ("pdftotext", "pdftoppm")}
    if not Path(CHROMIUM).is_file() or not all(tools.values()):
        must_have(
            "needs Chromium and poppler-utils (pdftotext, pdftoppm): run scripts/install-browser.sh"
        )
    bundle = dist / f"tiny-1.0.0/{TARGET}"
    pdf = tmp_path / "report.pdf"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-pdf-header-footer",
            f"--print-to-pdf={pdf}",
            (bundle / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=180,
        check=True,
    )
    assert pdf.read_bytes()[:5] == b"%PDF-"
    pages = pdf_pages(pdf)
    ends = next(i for i, page in enumerate(pages) if "Approval" in page)
    assert ends <= 1, f"the sign-off runs to page {ends + 1}"
    assert "At a glance" in "".join(pages[ends + 1 :])
    signoff = " ".join(" ".join(pages[: ends + 1]).split())  # words, whatever the line breaks
    report = json.loads((bundle / "report.json").read_text())
    checks = report["gates"]["checks"]
    assert any(c["name"] == "min_subgroup_sensitivity[site=A]" for c in checks)
    threshold = report["clinical"]["threshold"]
    for text in [
        "Sign-off",
        BUILT,
        CARD["intended_use"],
        *CARD["indications"],
        *CARD["contraindications"],
        f"≥ {threshold:.4g}: {RATIONALE}",
        "Gates",
        *(c["name"] for c in checks),
        "Subgroups",
        "Paired comparison with the reference",
        "Against the reference:",
        "Calibration of p(pneumonia)",
        "Fragility of the operating point",
        "Not validated",
        "name role date signature",
    ]:
        assert text in signoff, text
    if not report["clinical"]["flipped"]:  # the reference target: nothing differs
        assert f"every decision of {TARGET} equals the reference's" in signoff
    claims = report["clinical"]["evidence"]["paired"]["claims"]
    unsupported = [cl["gate"] for cl in claims if not cl["supported"]]
    assert unsupported, "the tiny model's set should be too small to support a claim"
    lines = " ".join(pages[: ends + 1]).splitlines()
    for gate in unsupported:
        row = next(ln for ln in lines if ln.strip().startswith(gate + " "))
        assert "pass on the point estimate only" in row, row
    row_c = next(ln for ln in lines if "site = C" in ln)
    assert "too small to" in row_c, row_c
    ARTIFACTS.mkdir(exist_ok=True)
    prefix = ARTIFACTS / "report-signoff-page1"
    subprocess.run(
        [
            "pdftoppm",
            "-png",
            "-r",
            "80",
            "-f",
            "1",
            "-l",
            "1",
            "-singlefile",
            str(pdf),
            str(prefix),
        ],
        check=True,
    )
    pixels = np.asarray(Image.open(prefix.with_suffix(".png")).convert("RGB")).astype(int)
    assert pixels.shape[0] > pixels.shape[1] > 500  # a portrait page
    # The verdict badges print in colour: pass green (#1d7a3a), point-estimate-only amber
    # (#8a5a00), one per gate line.
    green = (np.abs(pixels - (0x1D, 0x7A, 0x3A)).sum(axis=2) < 40).sum()
    amber = (np.abs(pixels - (0x8A, 0x5A, 0x00)).sum(axis=2) < 40).sum()
    assert amber > 200 * len(unsupported), amber
    assert green + amber > 200 * len(checks), (green, amber)


# The badge colours of templates/report/style.css, as the browser computes them.
GREEN, RED, AMBER = "rgb(29, 122, 58)", "rgb(179, 38, 30)", "rgb(138, 90, 0)"
COLOUR = {"pass": GREEN, "fail": RED, "undefined": RED, "insufficient evidence": AMBER}


def test_site_report_shows_its_verdict_and_badges_green_only_for_a_pass(
    browser: Any, dist: Path, data_path: Path, tmp_path: Path
) -> None:
    """A site acceptance with a passing, a failing and a too-small subgroup, in Chromium: the
    verdict on top is the report's, every gate line (overall and per subgroup) shows its verdict
    in its colour, and only a pass is green."""
    from tests.test_trust_site import mixed_groups, site

    with np.load(data_path) as z:
        images, labels = z["test_images"], z["test_labels"].reshape(-1)
    site_labels, group = mixed_groups(labels)
    data = site(
        tmp_path / "site", images, site_labels, np.arange(len(labels)), {"ward": lambda k: group[k]}
    )
    out = tmp_path / "out"
    bundle = dist / f"tiny-1.0.0/{TARGET}"
    r = _run(
        [
            "validate",
            str(bundle),
            "--data",
            str(data),
            "--out",
            str(out),
            "--json",
            "--group-by",
            "ward",
        ],
        tmp_path,
    )
    assert r.code == 1, r.stderr
    report = json.loads(Path(r.json["files"]["json"]).read_text())
    page = check_page(browser, Path(r.json["files"]["html"]), "site-validation.png")
    top = page.locator("#verdict .badge")
    assert top.inner_text() == report["verdict"] == "fail"
    assert report["reason"] in page.locator("#verdict").inner_text()

    def colour(badge: Any) -> str:
        return badge.evaluate("b => getComputedStyle(b).backgroundColor")

    assert colour(top) == RED
    lines = report["gates"]["checks"] + [
        g for row in report["subgroups"]["ward"].values() for g in row["gates"]
    ]
    for g in lines:
        badge = page.locator(f'tr[data-gate="{g["name"]}"] .badge')
        assert badge.inner_text() == g["verdict"], g["name"]
        assert colour(badge) == COLOUR[g["verdict"]], g["name"]
    assert {g["verdict"] for g in lines} >= {"pass", "fail", "insufficient evidence"}
    badges = page.locator(".badge").all()
    assert len(badges) == 1 + len(lines) + len(report["subgroups"]["ward"])
    for badge in badges:  # green only for a pass, and every pass green
        assert (colour(badge) == GREEN) == (badge.inner_text() == "pass"), badge.inner_text()
    metrics = page.locator("#metrics").inner_text()
    for name in ("sensitivity", "specificity"):
        lo, hi = report["rates"][name]["ci95"]
        assert f"95% CI {100 * lo:.2f}%–{100 * hi:.2f}%" in metrics, name
    assert page.locator("#labels-from").inner_text().startswith("labels.csv, found in the data")
    fp = report["errors"]["false_positives"]
    assert page.locator("#false-positives").inner_text().startswith(", ".join(map(str, fp[:10])))
    page.close()
