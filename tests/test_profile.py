"""Per-operator profiles (packager/runtime/profile.py): each ONNX Runtime / OpenVINO bundle carries its
runtime's raw profile, and the report's top 5 is recounted from that raw file (ONNX Runtime's
Chrome trace; OpenVINO's performance counters) independently of packager's reduction."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from packager.core import registry
from tests.conftest import Result, bundle_dir

TARGETS = ["cpu-onnxruntime", "cpu-openvino", "edge-ort"]


@pytest.fixture(scope="module")
def built(benched_build: Callable[[str], tuple[Path, Result]]) -> dict[str, Path]:
    """target -> the project folder of the session's benchmarked build of it
    (conftest.benched_build, read-only), for each target that benchmarks on this host."""
    out = {}
    for target in TARGETS:
        if registry.get(target).availability().bench.ok:
            root, r = benched_build(target)
            assert r.code == 0, r.stderr
            out[target] = root
    return out


def profile_of(built: dict[str, Path], target: str) -> tuple[dict, object]:
    if not registry.get(target).availability().bench.ok:
        pytest.skip(f"not validated: {target} cannot benchmark on this host")
    bundle = bundle_dir(built[target], target)
    report = json.loads((bundle / "report.json").read_text())
    prof = report["benchmark"]["profile"]
    assert prof["status"] == "ok", prof
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert prof["file"] in manifest["files"]  # shipped, and covered by the manifest
    return prof, json.loads((bundle / prof["file"]).read_text())


@pytest.mark.parametrize("target", ["cpu-onnxruntime", "edge-ort"])
def test_onnxruntime_top_five_recounted_from_its_trace(built: dict[str, Path], target: str) -> None:
    prof, trace = profile_of(built, target)
    per_node: dict[str, float] = defaultdict(float)
    for ev in trace:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            per_node[ev["name"].removesuffix("_kernel_time")] += ev["dur"]
    total = sum(per_node.values())
    want = sorted(per_node.items(), key=lambda kv: -kv[1])[:5]
    got = prof["top"]
    assert [op["name"] for op in got] == [name for name, _ in want]
    for op, (_, us) in zip(got, want, strict=True):
        assert op["ms_per_call"] == pytest.approx(us / prof["calls"] / 1e3)
        assert op["share"] == pytest.approx(us / total)
    assert prof["total_ms_per_call"] == pytest.approx(total / prof["calls"] / 1e3)


def test_openvino_top_five_are_its_performance_counters(built: dict[str, Path]) -> None:
    """The raw file holds the last call's counters (benchmark_app -pc's table): the top five
    are executed nodes of it, in order of their summed time, with its layer types."""
    prof, counters = profile_of(built, "cpu-openvino")
    executed = {c["node_name"]: c for c in counters if c["status"].endswith("EXECUTED")}
    assert len(prof["top"]) == min(5, prof["nodes"])
    for op in prof["top"]:
        assert op["name"] in executed and op["type"] == executed[op["name"]]["node_type"]
    times = [op["ms_per_call"] for op in prof["top"]]
    assert times == sorted(times, reverse=True) and sum(op["share"] for op in prof["top"]) <= 1


def test_compare_shows_the_top_operators_side_by_side(
    built: dict[str, Path], cli: Callable[..., Result], tmp_path: Path
) -> None:
    r = cli("compare", *[bundle_dir(root, t) for t, root in built.items()], cwd=tmp_path)
    assert r.code == 0, r.stderr
    table = r.stdout.split("Most expensive operators at batch 1")[1].split("\n\n")[1]
    rows = {ln.split("|")[1].strip(): ln for ln in table.splitlines()[2:]}
    assert set(rows) == set(built), rows
    for target in rows:
        prof, _ = profile_of(built, target)
        cells = [c.strip() for c in rows[target].split("|")[2:7]]
        assert cells[0].startswith(prof["top"][0]["type"]), cells
