"""Site acceptance that cannot pass on no evidence (issue 24 items 7 and 9): the gates decide on
the 95% interval, an empty denominator is `undefined`, the drop gate measures against the
build-time reference in report.json, only named metadata columns are read, identifier-like
columns are refused, and the site .md is inert Markdown.

The site data is the real PneumoniaMNIST test split written as PNG files with a labels.csv; every
number is recounted from the build's own validation.npz probabilities (the same pixels) with
numpy and statsmodels."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from statsmodels.stats.proportion import proportion_confint

from tests.conftest import DEFAULT_TOML, Result, _run, assert_user_error

BUNDLE = Path("dist/tiny-1.0.0/cpu-onnxruntime")
STEM = "site-validation-tiny-1.0.0-cpu-onnxruntime"
THRESHOLD = 0.2  # DEFAULT_TOML's
# Identifying values a careless export puts next to the labels: none may reach a report.
LEAKS = {
    "PatientsName": "Doe^Jane",
    "date_of_birth": "19700101",
    "MRN_number": "MRN998877",
    "nhs_number": "9434765919",
    "surname": "Zyxwvut",
}


@pytest.fixture(scope="module")
def test_split(data_path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data_path) as z:
        return z["test_images"], z["test_labels"].reshape(-1).astype(np.int64)


@pytest.fixture(scope="module")
def bundles(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model: Path,
    data_path: Path,
    reference_bundle: Path,
) -> dict[str, Path]:
    """Two cpu-onnxruntime bundles of the tiny model: the default gates (min_sensitivity 0.98,
    max_sensitivity_drop 0.005; the session's reference_bundle, read-only) and loose ones a
    624-image site can support."""
    root = tmp_path_factory.mktemp("loose")
    loose = "[gates]\nmin_sensitivity = 0.9\nmax_sensitivity_drop = 0.05\n"
    (root / "packager.toml").write_text(
        DEFAULT_TOML.format(model=tiny_model, data=data_path) + loose
    )
    r = _run(["build", "-t", "cpu-onnxruntime", "--no-bench", "-q"], root)
    assert r.code == 0, r.stderr
    return {"default": reference_bundle, "loose": root / BUNDLE}


def site(
    root: Path, images: np.ndarray, labels: np.ndarray, idx: np.ndarray, columns: dict | None = None
) -> Path:
    """PNG files of images[idx] with a labels.csv: path,label, then `columns` (name -> value
    per row index k, or one value for every row)."""
    root.mkdir(parents=True)
    columns = columns or {}
    rows = [",".join(["path", "label", *columns])]
    for k, i in enumerate(idx):
        Image.fromarray(images[i]).save(root / f"{k:04d}.png")
        values = [v(k) if callable(v) else v for v in columns.values()]
        rows.append(",".join([f"{k:04d}.png", str(labels[i]), *values]))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def validate(bundle: Path, data: Path, out: Path, *more: object) -> tuple[Result, dict]:
    r = _run(
        ["validate", str(bundle), "--data", str(data), "--out", str(out), *map(str, more)],
        out.parent,
    )
    found = sorted(out.glob(f"{STEM}-*.json"))  # one run per fresh --out: its time in the name
    report = json.loads(found[-1].read_text()) if found else {}
    return r, report


def written(out: Path, ext: str) -> Path:
    """The one site report file of this extension a run wrote into a fresh --out."""
    (path,) = out.glob(f"{STEM}-*.{ext}")
    return path


def build_probs(bundle: Path) -> np.ndarray:
    """p(pneumonia) the build itself computed on the test split (the same pixels as the PNGs)."""
    with np.load(bundle / "validation.npz") as v:
        return v["probs"][:, 1].astype(np.float64)


def gate(report: dict, name: str) -> dict:
    return next(c for c in report["gates"]["checks"] if c["name"] == name)


def test_one_positive_image_is_insufficient_evidence(
    bundles: dict[str, Path], test_split, tmp_path: Path
) -> None:
    images, labels = test_split
    first = np.flatnonzero(labels == 1)[:1]
    r, report = validate(
        bundles["default"], site(tmp_path / "one", images, labels, first), tmp_path / "out"
    )
    assert r.code == 1, r.stderr  # was exit 0, "passed" on a CI of 0.21-1.00
    assert report["verdict"] == "insufficient evidence" and report["status"] == "failed"
    assert r.stdout.startswith("site validation of cpu-onnxruntime: insufficient evidence")
    sens = gate(report, "min_sensitivity")
    assert sens["verdict"] == "insufficient evidence" and sens["passed"] is False
    assert sens["decided_on"] == "95% lower bound" and sens["value"] == 1.0
    assert sens["ci95"] == pytest.approx(proportion_confint(1, 1, method="wilson"), abs=1e-12)
    # One image, no negatives: specificity is undefined, never a number.
    assert report["rates"]["specificity"]["value"] is None
    assert "undefined (no negatives)" in written(tmp_path / "out", "md").read_text()


def test_no_positives_is_undefined_and_fails_closed(
    bundles: dict[str, Path], test_split, tmp_path: Path
) -> None:
    images, labels = test_split
    negatives = np.flatnonzero(labels == 0)[:50]
    data = site(tmp_path / "neg", images, labels, negatives)
    r, report = validate(bundles["default"], data, tmp_path / "out")
    assert r.code == 1, r.stderr
    sens = gate(report, "min_sensitivity")
    assert sens["verdict"] == "undefined" and sens["value"] is None and not sens["passed"]
    assert report["verdict"] == "undefined" and report["rates"]["sensitivity"]["value"] is None
    assert "min_sensitivity = 0.0" not in r.stdout + r.stderr  # what it printed before
    assert "sensitivity undefined" in r.stdout
    # Specificity with its Wilson interval, recounted from the build's own probabilities.
    kept = build_probs(bundles["default"])[negatives] < THRESHOLD
    spec = report["rates"]["specificity"]
    assert spec["hits"] == int(kept.sum()) and spec["n"] == 50
    assert spec["value"] == pytest.approx(kept.mean())
    assert spec["ci95"] == pytest.approx(
        proportion_confint(int(kept.sum()), 50, method="wilson"), abs=1e-12
    )


def _newcombe(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 - p2 (Stat Med 1998;17:873, method 10), from
    statsmodels' Wilson limits of each proportion."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = proportion_confint(x1, n1, method="wilson")
    l2, u2 = proportion_confint(x2, n2, method="wilson")
    d = p1 - p2
    return d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def test_the_whole_test_split_passes_loose_gates_and_not_the_default_ones(
    bundles: dict[str, Path], test_split, tmp_path: Path
) -> None:
    images, labels = test_split
    data = site(tmp_path / "all", images, labels, np.arange(len(labels)))
    y = labels == 1
    for name, code, verdict in (
        ("default", 1, "insufficient evidence"),
        ("loose", 0, "pass"),
    ):
        r, report = validate(bundles[name], data, tmp_path / f"out-{name}")
        assert r.code == code, r.stderr
        assert report["verdict"] == verdict
        assert report["status"] == ("passed" if verdict == "pass" else "failed")
        decided = build_probs(bundles[name]) >= THRESHOLD
        tp = int((decided & y).sum())
        build = json.loads((bundles[name] / "report.json").read_text())["clinical"]
        ref_tp = round(build["reference_sensitivity"] * build["positives"])
        sens, drop = gate(report, "min_sensitivity"), gate(report, "max_sensitivity_drop")
        assert sens["value"] == pytest.approx(tp / y.sum())
        assert sens["ci95"] == pytest.approx(
            proportion_confint(tp, int(y.sum()), method="wilson"), abs=1e-12
        )
        assert drop["decided_on"] == "95% upper bound"
        assert drop["value"] == pytest.approx(ref_tp / build["positives"] - tp / y.sum())
        assert drop["ci95"] == pytest.approx(
            _newcombe(ref_tp, build["positives"], tp, int(y.sum())), abs=1e-9
        )
        # Each line's verdict follows from its own interval and limit.
        assert (sens["verdict"] == "pass") == (sens["ci95"][0] >= sens["limit"])
        assert (drop["verdict"] == "pass") == (drop["ci95"][1] <= drop["limit"])
        assert all(c["passed"] == (c["verdict"] == "pass") for c in report["gates"]["checks"])
        tn = int((~decided & ~y).sum())
        assert report["rates"]["specificity"]["ci95"] == pytest.approx(
            proportion_confint(tn, int((~y).sum()), method="wilson"), abs=1e-12
        )


def test_a_bundle_without_a_reference_lists_the_drop_gate_as_not_applied() -> None:
    from packager.core.config import parse_config
    from packager.core.metrics import clinical
    from packager.hospital.site_gates import site_gates

    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    clin = clinical(probs, np.array([1, 0, 1]), 1, 0.5)
    cfg = parse_config({"gates": {"min_subgroup_sensitivity": 0.9}}, Path("."))
    build = {"positives": 390, "reference_sensitivity": None}
    checks, not_applied = site_gates(clin, cfg, build, grouped=False)
    assert [c["name"] for c in checks] == ["finite_outputs", "min_sensitivity"]
    assert [g["name"] for g in not_applied] == ["max_sensitivity_drop", "min_subgroup_sensitivity"]
    assert "no build-time reference" in not_applied[0]["reason"]
    assert not any(c["passed"] for c in checks if c["name"] == "min_sensitivity")  # 2 positives


def test_only_named_columns_are_read_and_nothing_else_is_written(
    bundles: dict[str, Path], test_split, tmp_path: Path
) -> None:
    images, labels = test_split
    columns = {"site": lambda k: "AB"[k % 2], **LEAKS}
    data = site(tmp_path / "leaky", images, labels, np.arange(40), columns)
    r, report = validate(bundles["default"], data, tmp_path / "out", "--group-by", "site")
    assert r.code == 1, r.stderr
    assert report["data"]["metadata_columns"] == ["site"]
    assert report["data"]["group_by"]["source"] == "--group-by"
    with np.load(written(tmp_path / "out", "npz")) as v:
        assert sorted(v.files) == ["labels", "meta_site", "probs", "row"]
        arrays = " ".join(str(v[k].tolist()) for k in v.files)
    for path in (tmp_path / "out").iterdir():
        text = path.read_bytes().decode("latin-1") if path.suffix != ".npz" else arrays
        for column, value in LEAKS.items():
            assert value not in text and column not in text, (path.name, column)
    assert set(report["subgroups"]["site"]) == {"A", "B"}
    a = report["subgroups"]["site"]["A"]
    in_a = np.arange(40) % 2 == 0
    y = labels[:40] == 1
    decided = build_probs(bundles["default"])[:40] >= THRESHOLD
    tp, pos = int((decided & y & in_a).sum()), int((y & in_a).sum())
    tn, neg = int((~decided & ~y & in_a).sum()), int((~y & in_a).sum())
    assert a["n"] == 20 and a["positives"] == pos
    assert a["sensitivity_ci95"] == pytest.approx(proportion_confint(tp, pos, method="wilson"))
    assert a["specificity_ci95"] == pytest.approx(proportion_confint(tn, neg, method="wilson"))


@pytest.mark.parametrize(
    "column",
    [
        *LEAKS,
        "PatientName",
        "patient_name",
        "PatientID",
        "MRN",
        "first_name",
        "DOB",
        "BirthDate",
        "AccessionNumber",
        "StudyDate",
        "address",
        "phone",
        "email",
        "SSN",
        "InstitutionName",
        "OtherPatientIDs",
    ],
)
def test_an_identifier_like_group_column_is_refused_without_its_values(
    column: str, bundles: dict[str, Path], test_split, tmp_path: Path
) -> None:
    images, labels = test_split
    data = site(tmp_path / "d", images, labels, np.arange(4), {column: "Secret^Value"})
    r, _ = validate(bundles["default"], data, tmp_path / "out", "--group-by", column)
    assert_user_error(r, column, "patient identifier")
    assert "Secret" not in r.stdout + r.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_identifier_matcher_covers_annex_e_and_keeps_de_identified_groups() -> None:
    """Independent of the matcher's own list: DICOM's dictionary names the keywords of some
    PS3.15 Table E.1-1 tags, each also in its "Patient's Name" spelling."""
    from pydicom.datadict import dictionary_description, keyword_for_tag

    from packager.core.identifiers import identifier_reason

    annex_e_tags = [0x00100010, 0x00100020, 0x00100030, 0x00080050, 0x00080020, 0x00080090]
    for tag in annex_e_tags:
        assert identifier_reason(keyword_for_tag(tag)), keyword_for_tag(tag)
        assert identifier_reason(dictionary_description(tag)), dictionary_description(tag)
    for ok in ("site", "sex", "age_band", "manufacturer", "view", "PatientSex", "PatientAge"):
        assert identifier_reason(ok) is None, ok


def test_config_group_by_refuses_an_identifier(
    project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    root = project()
    toml = root / "packager.toml"
    toml.write_text(toml.read_text().replace("[data]\n", '[data]\ngroup_by = ["Patients_Name"]\n'))
    r = cli("build", "-t", "cpu-onnxruntime", "--no-bench", cwd=root)
    assert_user_error(r, "Patients_Name", "patient identifier")
    assert not (root / "dist").exists()


def test_site_markdown_is_inert(bundles: dict[str, Path], test_split, tmp_path: Path) -> None:
    from markdown_it import MarkdownIt

    images, labels = test_split
    hostile = {0: "<script>alert(1)</script>", 1: "[x](javascript:alert(1))", 2: "<img src=x>"}
    data = site(tmp_path / "h", images, labels, np.arange(30), {"site": lambda k: hostile[k % 3]})
    r, report = validate(bundles["default"], data, tmp_path / "out", "--group-by", "site")
    assert r.code == 1, r.stderr
    assert set(report["subgroups"]["site"]) == set(hostile.values())  # the JSON keeps the data
    text = written(tmp_path / "out", "md").read_text()
    page = MarkdownIt("commonmark").enable("table").render(text)
    assert "<script" not in page and "<img" not in page and "href" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown as text
    assert "[x](javascript:alert(1))" in page


@pytest.mark.parametrize("case", ["free-text column", "missing column", "class folders"])
def test_a_group_column_that_cannot_be_a_subgroup_is_refused_before_anything_is_written(
    case: str, bundles: dict[str, Path], test_split, tmp_path: Path
) -> None:
    images, labels = test_split
    if case == "class folders":
        data = tmp_path / "d"
        for k in range(6):
            (data / ("normal", "pneumonia")[labels[k]]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[k]).save(data / ("normal", "pneumonia")[labels[k]] / f"{k}.png")
        words = ("need a labels.csv", "site")
    elif case == "missing column":
        data = site(tmp_path / "d", images, labels, np.arange(6), {"view": "PA"})
        words = ("'site' is not in its header", "path, label, view")
    else:  # 60 distinct values: one per image, an identifier in all but name
        data = site(tmp_path / "d", images, labels, np.arange(60), {"site": lambda k: f"s{k}"})
        words = ("60 distinct values", "not identifiers")
    r, _ = validate(bundles["default"], data, tmp_path / "out", "--group-by", "site")
    assert_user_error(r, *words)
    assert not (tmp_path / "out").exists()


# ---- subgroup gates, where the labels came from, errors by row (issue 25 item 6) ----------


def mixed_groups(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The whole test split in four subgroups, labels swapped in C and D (the model misses most
    of their "positives"): C (the first 12 images: 3 positives, 2 found, fewer than
    min_subgroup_positives: too few to fail), D (the next 100) and A / B (the rest,
    alternating). Returns (site labels, group)."""
    site_labels = labels.copy()
    site_labels[:112] = 1 - site_labels[:112]
    k = np.arange(len(labels))
    group = np.where(k < 12, "C", np.where(k < 112, "D", np.where(k % 2 == 0, "A", "B")))
    return site_labels, group


def expected_verdict(point: float, ci: tuple[float, float], limit: float, upper: bool) -> str:
    """The site semantics, restated: pass on the 95% bound, fail on the point estimate."""
    if (ci[1] <= limit + 1e-12) if upper else (ci[0] >= limit):
        return "pass"
    if (point > limit + 1e-12) if upper else (point < limit):
        return "fail"
    return "insufficient evidence"


def test_subgroup_intervals_and_gates_recount_with_statsmodels(
    bundles: dict[str, Path], test_split, tmp_path: Path
) -> None:
    images, labels = test_split
    site_labels, group = mixed_groups(labels)
    idx = np.arange(len(labels))
    data = site(tmp_path / "g", images, site_labels, idx, {"site": lambda k: group[k]})
    r, report = validate(bundles["loose"], data, tmp_path / "out", "--group-by", "site")
    assert r.code == 1, r.stderr
    decided = build_probs(bundles["loose"]) >= THRESHOLD
    y = site_labels == 1
    build = json.loads((bundles["loose"] / "report.json").read_text())["clinical"]
    ref_tp, ref_n = round(build["reference_sensitivity"] * build["positives"]), build["positives"]
    rows = report["subgroups"]["site"]
    assert sorted(rows) == ["A", "B", "C", "D"]
    seen = set()
    for value, row in rows.items():
        m = group == value
        tp, pos = int((decided & y & m).sum()), int((y & m).sum())
        tn, neg = int((~decided & ~y & m).sum()), int((~y & m).sum())
        assert (row["n"], row["positives"], row["negatives"]) == (int(m.sum()), pos, neg)
        sens_ci = proportion_confint(tp, pos, method="wilson")
        assert row["sensitivity"] == pytest.approx(tp / pos)
        assert row["sensitivity_ci95"] == pytest.approx(sens_ci, abs=1e-12)
        assert row["specificity"] == pytest.approx(tn / neg)
        assert row["specificity_ci95"] == pytest.approx(
            proportion_confint(tn, neg, method="wilson"), abs=1e-12
        )
        lines = {g["name"]: g for g in row["gates"]}
        sens, drop = (
            lines[f"min_sensitivity[site={value}]"],
            lines[f"max_sensitivity_drop[site={value}]"],
        )
        drop_ci = _newcombe(ref_tp, ref_n, tp, pos)
        assert sens["ci95"] == pytest.approx(sens_ci, abs=1e-12) and sens["limit"] == 0.9
        assert drop["value"] == pytest.approx(ref_tp / ref_n - tp / pos, abs=1e-6)  # 6 places
        assert drop["ci95"] == pytest.approx(drop_ci, abs=1e-9) and drop["limit"] == 0.05
        if pos < 20:  # min_subgroup_positives: too few to judge, whatever the numbers say
            want = ["insufficient evidence"] * 2
        else:
            want = [
                expected_verdict(tp / pos, sens_ci, 0.9, upper=False),
                expected_verdict(ref_tp / ref_n - tp / pos, drop_ci, 0.05, upper=True),
            ]
        assert [sens["verdict"], drop["verdict"]] == want, value
        assert all(g["passed"] == (g["verdict"] == "pass") for g in (sens, drop))
        severity = ["fail", "insufficient evidence", "undefined", "pass"]
        assert row["verdict"] == min(want, key=severity.index)
        seen.add(row["verdict"])
    assert seen == {"pass", "fail", "insufficient evidence"}  # every kind is exercised
    assert rows["C"]["verdict"] == "insufficient evidence" and rows["D"]["verdict"] == "fail"
    assert rows["C"]["positives"] < 20 and rows["C"]["sensitivity"] < 0.9  # a fail if judged
    # The overall gates pass or not on their own; the failing subgroup fails the site.
    assert report["verdict"] == "fail" and "site=D fail" in report["reason"]
    assert not report["gates"]["passed"]
    assert report["gates"]["not_applied"] == []


def plain_csv_rows(path: Path) -> list[list[str]]:
    """labels.csv's data rows as a spreadsheet shows them: header dropped, blank lines skipped."""
    lines = path.read_text().splitlines()[1:]
    return [line.split(",") for line in lines if line.strip()]


@pytest.mark.parametrize("layout", ["labels.csv", "class folders", "npz"])
def test_false_positives_and_negatives_are_listed_by_row_index(
    layout: str, bundles: dict[str, Path], test_split, data_path: Path, tmp_path: Path
) -> None:
    images, labels = test_split
    probs = build_probs(bundles["default"])
    truth: list[int] = []  # per row of the source, in the source's own order
    score: list[float] = []
    if layout == "labels.csv":
        # 150 test images listed in a shuffled order, with train rows and blank lines between.
        data = tmp_path / "d"
        data.mkdir()
        order = np.random.default_rng(7).permutation(150)
        text = ["path,label,split"]
        for n, i in enumerate(order):
            Image.fromarray(images[i]).save(data / f"{i:04d}.png")
            text.append(f"{i:04d}.png,{labels[i]},test")
            if n % 7 == 0:
                text += ["", f"{i:04d}.png,{labels[i]},train"]
        (data / "site.csv").write_text("\n".join(text) + "\n")
        args: tuple = ("--labels", data / "site.csv")
        for path, label, split in plain_csv_rows(data / "site.csv"):
            truth.append(int(label) if split == "test" else -1)
            score.append(probs[int(path[:4])] if split == "test" else np.nan)
    elif layout == "class folders":
        data = tmp_path / "d"
        for i in range(40):
            (data / ("normal", "pneumonia")[labels[i]]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(data / ("normal", "pneumonia")[labels[i]] / f"{i}.png")
        args = ()
        for cls in sorted(p.name for p in data.iterdir()):
            for name in sorted(p.name for p in (data / cls).iterdir()):
                truth.append(("normal", "pneumonia").index(cls))
                score.append(probs[int(name.split(".")[0])])
    else:
        data, args = data_path, ("--split", "test")
        truth, score = labels.tolist(), probs.tolist()
    r, report = validate(bundles["default"], data, tmp_path / "out", *args)
    assert r.code == 1, r.stderr
    fp, fn, listed = [], [], []
    for row in range(len(truth)):  # a plain loop over the source's rows
        if truth[row] < 0:
            continue  # another split's row
        listed.append(row)
        if truth[row] == 0 and score[row] >= THRESHOLD:
            fp.append(row)
        if truth[row] == 1 and score[row] < THRESHOLD:
            fn.append(row)
    assert report["errors"] == {"false_positives": fp, "false_negatives": fn}
    assert len(fp) == report["clinical"]["confusion"]["fp"] > 0
    with np.load(written(tmp_path / "out", "npz")) as v:
        assert v["row"].tolist() == listed
    source = {"labels.csv": "--labels", "class folders": "class folders", "npz": "npz"}[layout]
    assert report["data"]["labels"]["source"] == source
    md = written(tmp_path / "out", "md").read_text().replace("\\", "")  # Markdown escapes
    page = unescape(written(tmp_path / "out", "html").read_text())
    for text in (md, page):
        assert report["data"]["labels"]["statement"].split(" (")[0] in text
        assert ", ".join(map(str, fp[:20])) in text and ", ".join(map(str, fn[:20])) in text
    if layout == "labels.csv":
        assert report["data"]["labels"]["file"] == "site.csv"
        assert "site.csv, passed with --labels" in report["data"]["labels"]["statement"]
        for f in data.glob("*.png"):  # rows only: no image path reaches a report
            assert f.name not in md + page
