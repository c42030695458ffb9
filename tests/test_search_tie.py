"""Precision search ties (issue 26 item 5): a speed difference inside the round-to-round range
is no win; the tie goes to the smaller, then the more sensitive candidate, and is reported."""

from __future__ import annotations

from typing import Any

from packager.builder.search import TIE_RULE, decide


def row(label: str, p50: float, lo: float, hi: float, size: float, sens: float) -> dict[str, Any]:
    return {
        "label": label,
        "status": "passed",
        "proxy": None,
        "gates_ok": True,
        "latency_p50_ms": p50,
        "latency_p50_ms_range": [lo, hi],
        "throughput_sps": 1000 / p50,
        "throughput_sps_range": [1000 / hi, 1000 / lo],
        "size_mb": size,
        "sensitivity": sens,
    }


# The case: int8-ptq 0.526 ms against int8-accuracy-control 0.538 ms, inside the noise.
PTQ = row("int8-ptq", 0.526, 0.515, 0.541, 11.4, 0.985)
AC = row("int8-accuracy-control", 0.538, 0.530, 0.549, 11.9, 0.990)
FP32 = row("fp32", 1.786, 1.75, 1.82, 44.8, 0.992)


def test_overlapping_ranges_are_a_tie_for_the_smaller() -> None:
    winner, tie = decide([FP32, AC, PTQ], "latency")
    assert winner is PTQ  # the smaller of the two tied (11.4 < 11.9 MB), not "the faster"
    assert tie == {
        "candidates": ["int8-accuracy-control", "int8-ptq"],
        "rule": TIE_RULE,
        "fastest": "int8-ptq",
        "why": "their latency ranges over the interleaved rounds overlap",
    }


def test_a_tie_of_equal_size_goes_to_the_more_sensitive() -> None:
    a = row("a", 0.50, 0.49, 0.52, 10.0, 0.981)
    b = row("b", 0.51, 0.50, 0.53, 10.0, 0.995)
    winner, tie = decide([a, b], "latency")
    assert winner is b and tie is not None and tie["fastest"] == "a"


def test_a_clear_difference_wins_without_a_tie() -> None:
    fast = row("fast", 0.40, 0.39, 0.41, 20.0, 0.981)
    slow = row("slow", 0.50, 0.49, 0.52, 5.0, 0.995)  # smaller and more sensitive, but slower
    assert decide([slow, fast], "latency") == (fast, None)
    # throughput decides on its own ranges the same way
    assert decide([slow, fast], "throughput") == (fast, None)


def test_size_objective_needs_no_interval() -> None:
    winner, tie = decide([FP32, AC, PTQ], "size")
    assert winner is PTQ and tie is None
