"""The parts of packager/reports/evidence.py around the paired comparison, against hand counts
and plain numpy (issue 28, mutation testing): calibration (ECE and Brier recomputed with loops,
the bins checked against scikit-learn's own output on its bin edges), fragility on scores placed
exactly on the shifted thresholds, the positive column as metrics.clinical reads it (float32,
NaN, ±Inf), the self-test tolerance's sentence, and the per-image group labels read from small
hand-made .npy and text files into for_data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from packager.core.config import GatesConfig, parse_config
from packager.core.data import Dataset
from packager.core.errors import UserError
from packager.core.metrics import clinical
from packager.reports.evidence import (
    calibration,
    evidence,
    evidence_checks,
    for_data,
    fragility,
    load_groups,
    tolerance_reach,
)

# ---- calibration ---------------------------------------------------------------------------

# (p, label): no score on an inner bin edge; -0.2 and 1.3 are read as 0 and 1
SCORES = [
    (-0.2, 0),
    (0.0, 0),
    (0.05, 1),
    (0.25, 0),
    (0.27, 1),
    (0.33, 1),
    (0.55, 0),
    (0.72, 0),
    (0.95, 1),
    (1.0, 1),
    (1.3, 1),
]


def test_calibration_equals_a_plain_recount() -> None:
    p = np.array([s for s, _ in SCORES])
    y = np.array([label for _, label in SCORES], dtype=bool)
    bins: dict[int, list[tuple[float, int]]] = {}
    for s, label in SCORES:
        q = min(max(s, 0.0), 1.0)
        bins.setdefault(min(int(q * 10), 9), []).append((q, label))
    n = len(SCORES)
    pred = [sum(q for q, _ in b) / len(b) for _, b in sorted(bins.items())]
    true = [sum(lab for _, lab in b) / len(b) for _, b in sorted(bins.items())]
    count = [len(b) for _, b in sorted(bins.items())]
    assert count == [3, 2, 1, 1, 1, 3]  # bins 0, 2, 3, 5, 7, 9
    ece = sum(c / n * abs(t - q) for c, t, q in zip(count, true, pred, strict=True))
    brier = sum((min(max(s, 0.0), 1.0) - label) ** 2 for s, label in SCORES) / n
    got = calibration(y, p)
    assert list(got) == ["ece", "brier", "curve"]
    assert (got["ece"], got["brier"]) == pytest.approx((ece, brier), rel=1e-12)
    assert list(got["curve"]) == ["prob_pred", "prob_true", "count"]
    assert got["curve"]["prob_pred"] == pytest.approx(pred, rel=1e-12)
    assert got["curve"]["prob_true"] == pytest.approx(true, rel=1e-12)
    assert got["curve"]["count"] == count


def test_calibration_counts_fall_in_scikit_learns_bins_on_their_edges() -> None:
    # every score on an inner edge of np.linspace(0, 1, 11): the counts must weight
    # scikit-learn's per-bin means back to the totals, whichever side an edge belongs to
    p = np.concatenate([np.linspace(0, 1, 11)[1:-1], [0.0, 0.35, 1.0]])
    y = (np.arange(len(p)) % 3 == 0).astype(bool)
    curve = calibration(y, p)["curve"]
    count = np.array(curve["count"])
    assert count.sum() == len(p)
    assert float(count @ curve["prob_pred"]) == pytest.approx(p.sum(), rel=1e-12)
    assert float(count @ curve["prob_true"]) == pytest.approx(y.sum(), rel=1e-12)


# ---- fragility -----------------------------------------------------------------------------

T = 0.125  # 0.125 - 0.05 is exactly 0.075 in floats: a score exactly 0.05 from the threshold
POSITIVES = [T - 0.05, 0.12, 0.13, 0.3, 0.0]
NEGATIVES = [T - 0.05, 0.124, 0.05, 0.9, 0.16, 0.001]


def _fragile() -> tuple[np.ndarray, np.ndarray]:
    y = np.array([True] * len(POSITIVES) + [False] * len(NEGATIVES))
    return y, np.array(POSITIVES + NEGATIVES)


def _margin(m: float, within: tuple[int, int], sens: tuple[float, float], spec: Any) -> dict:
    return {
        "margin": m,
        "positives_within": within[0],
        "negatives_within": within[1],
        "sensitivity_minus": sens[0],
        "specificity_minus": spec[0],
        "sensitivity_plus": sens[1],
        "specificity_plus": spec[1],
    }


def test_fragility_equals_hand_counts_with_scores_on_the_shifted_thresholds() -> None:
    assert abs(T - 0.05 - T) == 0.05
    y, p = _fragile()
    # counted by hand from the two lists above (p >= t is positive, at any shifted t)
    assert fragility(y, p, T) == {
        "threshold": T,
        "margins": [
            _margin(0.01, (2, 1), (3 / 5, 1 / 5), (3 / 6, 4 / 6)),
            _margin(0.02, (2, 1), (3 / 5, 1 / 5), (3 / 6, 4 / 6)),
            # the positive at exactly t - 0.05 counts as found, the negative there as wrong
            _margin(0.05, (3, 3), (4 / 5, 1 / 5), (2 / 6, 5 / 6)),
        ],
    }


def test_fragility_of_one_class_leaves_the_other_undefined() -> None:
    y, p = _fragile()
    only_pos, only_neg = fragility(y[y], p[y], T), fragility(y[~y], p[~y], T)
    for rows, undefined, defined in (
        (only_pos["margins"], "specificity", "sensitivity"),
        (only_neg["margins"], "sensitivity", "specificity"),
    ):
        for row in rows:
            assert row[f"{undefined}_minus"] is None and row[f"{undefined}_plus"] is None
            assert row[f"{defined}_minus"] is not None and row[f"{defined}_plus"] is not None


# ---- the positive column as metrics.clinical reads it ----------------------------------------


def test_float32_and_non_finite_scores_are_read_as_the_clinical_metrics_read_them() -> None:
    # class 0 is the positive one; threshold 0.7, and float32(0.7) lies just below 0.7
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    p = np.array([0.7, np.inf, -np.inf, 0.9, 0.8, 1.0, np.nan, 0.0, 0.3, 0.75], np.float32)
    probs = np.stack([p, np.float32(0.5) * np.ones_like(p)], axis=1)
    ref = np.stack([np.where(labels == 0, 0.9, 0.1), np.full(10, 0.5)], axis=1)
    clean = p.astype(np.float64)
    clean[[1, 2, 6]] = [1.0, 0.0, 0.0]  # +Inf, -Inf, NaN by hand
    gates = GatesConfig(min_auc=0.5, max_auc_drop=0.2, decide_on="ci")
    ev = evidence(labels, probs, ref, 0.7, 0, None, gates)
    assert ev == evidence(labels, np.stack([clean, clean], axis=1), ref, 0.7, 0, None, gates)
    # the target finds positives 1, 3, 4 (not float32(0.7), not -Inf) and wrongly calls
    # negatives 5 and 9 (not NaN): as metrics.clinical counts them
    c = clinical(probs, labels, 0, 0.7, reference=ref)
    assert (c.confusion["tp"], c.confusion["fp"]) == (3, 2)
    pos, neg = ev["paired"]["positives"], ev["paired"]["negatives"]
    assert (pos["both_right"], pos["reference_right_target_wrong"]) == (3, 2)
    assert (neg["both_right"], neg["reference_right_target_wrong"]) == (3, 2)


# ---- the self-test tolerance on the sign-off -------------------------------------------------


def _reach(tolerance: Any, within: tuple[int, int] | None = None) -> dict[str, Any] | None:
    y, p = _fragile()
    return tolerance_reach(fragility(y, p, T)["margins"], tolerance, within)


@pytest.mark.parametrize("tolerance", [True, "0.03", None])
def test_a_tolerance_that_is_not_a_number_is_not_stated(tolerance: Any) -> None:
    assert _reach(tolerance) is None


def test_the_tolerance_below_the_narrowest_margin() -> None:
    text = "the measured numerics tolerance (0.005) is below the narrowest margin (±0.01)"
    assert _reach(0.005) == {
        "value": 0.005,
        "within_tolerance": None,
        "reaches": None,
        "cases": 0,
        "text": text,
    }
    assert _reach(0.005, (1, 2)) == {
        "value": 0.005,
        "within_tolerance": {"positives": 1, "negatives": 2},
        "reaches": None,
        "cases": 0,
        "text": text + "; 1 positives and 2 negatives lie within ±0.005 of the threshold",
    }


@pytest.mark.parametrize(
    ("tolerance", "reaches", "counts"),
    [(0.01, 0.01, (2, 1)), (0.03, 0.02, (2, 1)), (1, 0.05, (3, 3))],
    ids=["exactly-the-narrowest", "between", "an-int-past-the-widest"],
)
def test_the_tolerance_reaching_margins(
    tolerance: float, reaches: float, counts: tuple[int, int]
) -> None:
    text = (
        f"the measured numerics tolerance ({tolerance:.2g}) reaches cases within ±{reaches:g} "
        f"of the threshold: {counts[0]} positives and {counts[1]} negatives could flip on "
        "another host"
    )
    got = _reach(tolerance)
    assert got == {
        "value": float(tolerance),
        "within_tolerance": None,
        "reaches": reaches,
        "cases": sum(counts),
        "text": text,
    }
    assert isinstance(got["value"], float)
    exact = _reach(tolerance, (4, 0))
    assert exact is not None and exact["within_tolerance"] == {"positives": 4, "negatives": 0}
    assert exact["text"] == (
        text + f"; 4 positives and 0 negatives lie within ±{tolerance:.2g} of the threshold"
    )


# ---- group labels from files and metadata ----------------------------------------------------


def _refused(files: dict[str, str], n: int = 4, **kw: Any) -> str:
    with pytest.raises(UserError) as e:
        load_groups(files, kw.get("columns", []), kw.get("metadata"), "test", n)
    return str(e.value)


def test_group_labels_from_npy_and_text_files(tmp_path: Path) -> None:
    np.save(tmp_path / "sex_test.npy", np.array([["F"], ["M"], ["F"], ["M"]]))  # (N, 1)
    np.save(tmp_path / "band.npy", np.array([1, 2, 2, 3]))
    # a header line, a blank label in the middle, labels padded, trailing blank lines
    (tmp_path / "site_test.txt").write_text("site\nA\n B \n\nA\n  \n\n", encoding="utf-8")
    (tmp_path / "scanner.csv").write_text("x\ny\nx\nz", encoding="utf-8")  # no header
    files = {
        "sex": str(tmp_path / "sex_{split}.npy"),
        "band": str(tmp_path / "band.npy"),
        "site": str(tmp_path / "site_{split}.txt"),
        "scanner": str(tmp_path / "scanner.csv"),
    }
    meta = {"ward": np.array([["w1"], ["w2"], ["w1"], [None]], dtype=object)}
    got = load_groups(files, ["ward"], meta, "test", 4)
    assert list(got) == ["sex", "band", "site", "scanner", "ward"]
    assert got["sex"].tolist() == ["F", "M", "F", "M"]
    assert got["band"].tolist() == [1, 2, 2, 3]
    assert got["site"].tolist() == ["A", "B", "", "A"]
    assert got["scanner"].tolist() == ["x", "y", "x", "z"]
    assert got["ward"].tolist() == ["w1", "w2", "w1", None]


def test_group_files_that_cannot_serve_are_one_line_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.txt"
    assert _refused({"site": str(missing)}) == (
        f"[data.groups] site = '{missing}' does not exist; fix the path"
    )
    assert _refused({"site": str(tmp_path)}).endswith("does not exist; fix the path")
    np.save(tmp_path / "wide.npy", np.zeros((4, 2)))
    assert _refused({"site": str(tmp_path / "wide.npy")}) == (
        "[data.groups] site: wide.npy has shape (4, 2); expected one label per image (N,)"
    )
    np.save(tmp_path / "objects.npy", np.array([{}, {}, {}, {}], dtype=object))
    (tmp_path / "broken.npy").write_bytes(b"not a numpy file")
    for name in ("objects.npy", "broken.npy"):
        text = _refused({"site\n": str(tmp_path / name)})
        assert text.startswith(f"[data.groups] site\\n: {name} is not a readable .npy (")
        assert text.endswith("); save one label per image with np.save")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1") * 4)
    text = _refused({"site": str(tmp_path / "latin1.txt")})
    assert text.startswith("[data.groups] site: cannot read latin1.txt (") and "utf-8" in text
    (tmp_path / "short.txt").write_text("A\nB\nA\n", encoding="utf-8")
    assert _refused({"site": str(tmp_path / "short.txt")}) == (
        "[data.groups] site: short.txt holds 3 labels for 4 images; give one label per image "
        "of the validation split, in its order"
    )
    np.save(tmp_path / "long.npy", np.arange(5))
    assert "long.npy holds 5 labels for 4 images" in _refused({"site": str(tmp_path / "long.npy")})


def test_group_by_names_a_column_the_dataset_has() -> None:
    meta = {"sex": np.array(["F", "M"]), "site": np.array(["A", "B"])}
    assert _refused({}, 2, columns=["age\n"], metadata=meta) == (
        "[data] group_by names column 'age\\n' but the dataset has the columns ['sex', 'site']"
    )
    for none in (None, {}):
        assert _refused({}, 2, columns=["age"], metadata=none) == (
            "[data] group_by names column 'age' but the dataset has no metadata columns; use "
            "[data.groups]"
        )


def test_more_than_fifty_categories_is_an_identifier(tmp_path: Path) -> None:
    # the missing ones (None, NaN, blank) are one category: 49 values and them make 50, 50 make 51
    missing = [None, float("nan"), " "]
    column = np.array([f"v{i}" for i in range(49)] + missing, dtype=object)
    assert load_groups({}, ["g"], {"g": column}, "test", 52)["g"] is not None
    column = np.array([f"v{i}" for i in range(50)] + missing, dtype=object)
    assert _refused({}, 53, columns=["g\n"], metadata={"g\n": column}) == (
        "group 'g\\n' has 51 distinct values; a subgroup column holds a few categories (site, "
        "sex, age band), at most 50, not identifiers"
    )
    (tmp_path / "ids.txt").write_text("\n".join(f"id{i}" for i in range(51)), encoding="utf-8")
    assert "has 51 distinct values" in _refused({"id": str(tmp_path / "ids.txt")}, 51)


def test_for_data_uses_the_configs_groups_unless_given(tmp_path: Path) -> None:
    (tmp_path / "site_val.txt").write_text("A\nA\nB\nB\nA\nB\n", encoding="utf-8")
    cfg = parse_config(
        {
            "data": {"groups": {"site": "site_{split}.txt"}, "group_by": ["sex"]},
            "labels": {"names": ["pneumonia", "normal"], "positive": "pneumonia"}
            | {"threshold": 0.3},
            "gates": {"min_subgroup_sensitivity": 0.5, "min_subgroup_positives": 1},
        },
        tmp_path,
    )
    labels = np.array([0, 0, 0, 0, 1, 1])  # class 0 (pneumonia) is the positive one
    p = np.array([0.35, 0.2, 0.9, 0.31, 0.1, 0.4])  # >= 0.3: found
    probs = np.stack([p, 1 - p], axis=1)
    sex = np.array(["F", "M", "F", "M", "F", "M"], dtype=object)
    ds = Dataset(np.zeros((6, 2, 2), np.uint8), labels, "val", "", {"sex": sex})
    ref = np.stack([1 - p, p], axis=1)  # the reference: the other column
    ev, checks = for_data(cfg, ds, probs, ref)
    groups = {"site": np.array(list("AABBAB"), dtype=object), "sex": sex}
    assert ev == evidence(labels, probs, ref, 0.3, 0, groups, cfg.gates)
    assert ev["paired"]["positives"]["n"] == 4
    # A: 2 positives, 1 found; B: 2, both; F: 2, both; M: 2, 1 found (0.2 < 0.3)
    assert [(c.name, c.value, c.passed) for c in checks] == [
        ("min_subgroup_sensitivity[site=A]", 0.5, True),
        ("min_subgroup_sensitivity[site=B]", 1.0, True),
        ("min_subgroup_sensitivity[sex=F]", 1.0, True),
        ("min_subgroup_sensitivity[sex=M]", 0.5, True),
    ]
    assert [c.to_dict() for c in checks] == [c.to_dict() for c in evidence_checks(ev)]
    (tmp_path / "site_val.txt").unlink()  # given groups: the config's file is not read
    ev, checks = for_data(cfg, ds, probs, None, groups={})
    assert (ev["subgroups"], checks) == ([], [])
