"""The paired comparison behind the sign-off (packager/reports/evidence.py) against an independent
implementation (issue 28 item 2): Newcombe's interval for a paired difference of proportions
(method 10 of Newcombe, Stat Med 1998;17:2635-50) written here from the paper's formulas on top
of statsmodels' Wilson interval, on symmetric and asymmetric count tables; the exact McNemar
p-value against scipy's binomial test; and the orientation of the drop interval through
evidence(): swapping the discordant counts must move the interval to the other side of zero."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest
from statsmodels.stats.proportion import proportion_confint

from packager.core.config import GatesConfig
from packager.reports.evidence import evidence, newcombe_paired


def newcombe_reference(a: int, b: int, c: int, d: int) -> tuple[float, float]:
    """Newcombe (1998) method 10 for theta = p1 - p2 of a paired table in the paper's letters:
    a = both successes, b = first only, c = second only, d = neither. Margins e = a+b, f = c+d
    (first), g = a+c, h = b+d (second); phi = (ad - bc) / sqrt(efgh), the numerator reduced
    to max(ad - bc - n/2, 0) when ad > bc, and phi = 0 when a margin is empty.
    L = theta - sqrt(dl1^2 - 2 phi dl1 du2 + du2^2), U = theta + sqrt(du1^2 - 2 phi du1 dl2 +
    dl2^2), with dl1 = p1 - l1, du1 = u1 - p1, dl2 = p2 - l2, du2 = u2 - p2 from the Wilson
    score limits (l1, u1) of p1 and (l2, u2) of p2."""
    n = a + b + c + d
    e, f, g, h = a + b, c + d, a + c, b + d
    p1, p2 = e / n, g / n
    l1, u1 = proportion_confint(e, n, alpha=0.05, method="wilson")
    l2, u2 = proportion_confint(g, n, alpha=0.05, method="wilson")
    numerator = a * d - b * c
    if numerator > 0:
        numerator = max(numerator - n / 2, 0.0)
    phi = 0.0 if 0 in (e, f, g, h) else numerator / math.sqrt(e * f * g * h)
    dl1, du1, dl2, du2 = p1 - l1, u1 - p1, p2 - l2, u2 - p2
    theta = p1 - p2
    lower = theta - math.sqrt(dl1**2 - 2 * phi * dl1 * du2 + du2**2)
    upper = theta + math.sqrt(du1**2 - 2 * phi * du1 * dl2 + dl2**2)
    return lower, upper


TABLES = [
    (59, 6, 16, 80),  # Cavo et al. 2012 (Fagerland, Lydersen & Laake 2017): -0.1186 to -0.0046
    (386, 0, 0, 4),  # no discordant pair
    (380, 9, 1, 0),  # asymmetric, no pair both wrong: ad < bc, negative phi
    (50, 12, 3, 35),  # asymmetric, strong agreement (phi reduced by n/2)
    (5, 1, 9, 2),  # small, target mostly better
    (2, 7, 1, 0),  # ad < bc: negative phi
    (10, 4, 4, 2),  # 0 < ad - bc <= n/2: phi reduced to 0
    (3, 1, 4, 3),  # n/3 < ad - bc = 5 <= n/2 = 5.5: still 0
    (0, 3, 0, 0),  # an empty margin (phi = 0)
    (1, 0, 0, 0),  # n = 1
    (300, 2, 9, 79),
]


@pytest.mark.parametrize("table", TABLES, ids=[str(t) for t in TABLES])
def test_newcombe_equals_the_reference(table: tuple[int, int, int, int]) -> None:
    assert newcombe_paired(*table) == pytest.approx(newcombe_reference(*table), abs=1e-12)


def test_no_pairs_give_the_whole_range() -> None:
    # nothing measured: every difference from -1 to 1 is possible, never a zero-width [0, 0]
    assert newcombe_paired(0, 0, 0, 0) == (-1.0, 1.0)


def test_reference_reproduces_the_published_example() -> None:
    lo, hi = newcombe_reference(59, 6, 16, 80)
    assert (round(lo, 4), round(hi, 4)) == (-0.1186, -0.0046)


@pytest.mark.parametrize("table", TABLES, ids=[str(t) for t in TABLES])
def test_swapped_discordant_counts_mirror_the_interval(table: tuple[int, int, int, int]) -> None:
    a, b, c, d = table
    lo, hi = newcombe_paired(a, b, c, d)
    slo, shi = newcombe_paired(a, c, b, d)
    assert (slo, shi) == pytest.approx((-hi, -lo), abs=1e-12)
    assert lo <= (b - c) / (a + b + c + d) <= hi


def _two(p: np.ndarray) -> np.ndarray:
    return np.stack([1 - p, p], axis=1)


def _paired_arrays(
    both: int, ref_only: int, tgt_only: int, neither: int, negatives: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and reference/target probabilities whose positives make the table (both right,
    reference right only, target right only, both wrong), and whose negatives `negatives`."""
    ref, tgt, y = [], [], []
    for label, counts in ((1, (both, ref_only, tgt_only, neither)), (0, negatives)):
        hit, miss = (0.9, 0.1) if label else (0.1, 0.9)  # right means the decision is the truth
        for (r, t), k in zip(
            ((hit, hit), (hit, miss), (miss, hit), (miss, miss)), counts, strict=True
        ):
            ref += [r] * k
            tgt += [t] * k
            y += [label] * k
    return np.array(y), _two(np.array(ref)), _two(np.array(tgt))


@pytest.mark.parametrize(
    ("positives", "negatives"),
    [
        ((80, 14, 2, 4), (60, 1, 7, 2)),
        ((80, 2, 14, 4), (60, 7, 1, 2)),
        ((30, 5, 0, 1), (9, 0, 0, 1)),
    ],
    ids=["target-worse", "target-better", "one-sided"],
)
def test_evidence_drop_interval_is_oriented_reference_minus_target(
    positives: tuple[int, int, int, int], negatives: tuple[int, int, int, int]
) -> None:
    y, ref, tgt = _paired_arrays(*positives, negatives)
    ev = evidence(y, tgt, ref, 0.5, 1, None, GatesConfig())["paired"]
    both, ref_only, tgt_only, neither = positives
    pos = ev["positives"]
    assert (
        pos["both_right"],
        pos["reference_right_target_wrong"],
        pos["reference_wrong_target_right"],
        pos["both_wrong"],
    ) == positives
    assert pos["n"] == sum(positives) and ev["negatives"]["n"] == sum(negatives)
    lo, hi = pos["drop_ci95"]
    # "drop": reference rate - target rate, so the reference is the first rater
    assert (lo, hi) == pytest.approx(newcombe_reference(*positives), abs=1e-12)
    assert ev["sensitivity_drop"] == pytest.approx((ref_only - tgt_only) / sum(positives))
    if ref_only > tgt_only:
        assert lo > 0, "the target misses more positives: the drop interval lies above zero"
    else:
        assert hi < 0
    assert ev["negatives"]["drop_ci95"] == pytest.approx(newcombe_reference(*negatives), abs=1e-12)
    for side, table in (("positives", positives), ("negatives", negatives)):
        b, c = table[1], table[2]
        expected = binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
        assert ev[side]["mcnemar_p"] == pytest.approx(expected, rel=1e-12)


def test_supported_claim_follows_the_interval_not_the_point() -> None:
    # 1000 positives, 4 lost and 1 gained: a point drop of 0.3 pts within a 0.5 pts gate,
    # but an upper limit above it: not supported. The same drop on 20000 positives is.
    gates = GatesConfig(min_sensitivity=0.9, max_sensitivity_drop=0.005)
    claims = {}
    for n in (1000, 20000):
        scale = n // 1000
        y, ref, tgt = _paired_arrays(900 * scale, 4 * scale, 1 * scale, 95 * scale, (50, 0, 0, 0))
        ev = evidence(y, tgt, ref, 0.5, 1, None, gates)["paired"]
        hi = newcombe_reference(900 * scale, 4 * scale, 1 * scale, 95 * scale)[1]
        claim = next(c for c in ev["claims"] if c["gate"] == "max_sensitivity_drop")
        claims[n] = claim["supported"]
        assert claim["supported"] is (hi <= 0.005)
        assert claim["text"].startswith("supported" if hi <= 0.005 else "too small to support")
    assert claims == {1000: False, 20000: True}


def test_a_score_exactly_on_the_threshold_decides_positive_in_both_runs() -> None:
    """Two positives: the reference scores both exactly 0.5, the target the first; at
    threshold 0.5 (p >= threshold) the reference finds both and the target one."""
    y = np.array([1, 1, 0])
    ref, tgt = _two(np.array([0.5, 0.5, 0.1])), _two(np.array([0.5, 0.4, 0.1]))
    pos = evidence(y, tgt, ref, 0.5, 1, None, GatesConfig())["paired"]["positives"]
    assert (pos["both_right"], pos["reference_right_target_wrong"]) == (1, 1)
    assert (pos["reference_wrong_target_right"], pos["both_wrong"]) == (0, 0)
