"""Per-operator profiles: the runtime's own profiler (ONNX Runtime's trace, OpenVINO's
performance counters; runtime.py's profile()) at batch 1, reduced to the operators that cost
the most (batch 1, or a fixed-batch model's batch). The raw profile ships in the bundle as
profile.json."""

from __future__ import annotations

from typing import Any

TOP = 5
CALLS = 20
RAW = "profile.json"


def top_operators(
    result: dict[str, Any] | None, why_not: str = "", batch: int = 1
) -> dict[str, Any]:
    """The TOP nodes by time per call, each with its share of the profiled total."""
    if result is None:
        return {"status": "not-run", "reason": why_not or "this runtime.py has no profiler hook"}
    calls = result["calls"]
    nodes = [(str(n), str(t), float(us)) for n, t, us in result["nodes"]]
    total = sum(us for _, _, us in nodes) or 1.0
    top = sorted(nodes, key=lambda r: -r[2])[:TOP]
    return {
        "status": "ok",
        "calls": calls,
        "batch_size": batch,
        "nodes": len(nodes),
        "total_ms_per_call": total / calls / 1e3,
        "top": [
            {"name": n, "type": t, "ms_per_call": us / calls / 1e3, "share": us / total}
            for n, t, us in top
        ],
        "file": RAW,
    }
