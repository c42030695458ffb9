#!/usr/bin/env python3
"""Precision search cost and outcome, per target, in one run.

    python benchmarks/precision_search.py [--model model.onnx] [--data pneumoniamnist.npz]

1. Cost: wall time of `packager build --precision auto` against a single fixed INT8 build
   (`packager build --int8`) of the same target, same config and [bench] settings, interleaved
   over --rounds rounds (auto, INT8, INT8, auto, ...); the median ratio is printed (goal <= 2.5).
2. Outcome: every fixed choice the search considers is built on its own (`--no-bench`), then the
   auto winner and each fixed bundle are re-benchmarked with `packager bench` in interleaved
   rounds; the winner's batch-1 p50 and best throughput are printed against each, with whether
   that fixed choice passed every gate.

Model: --model, else the trained demo model in the packager cache (`packager demo` makes it),
else the tiny test classifier of tests/models.py (real conv features, a head fitted on the
PneumoniaMNIST train split; threshold 0.2, its operating point). The run says which.
Numbers come from this machine and are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomllib

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.openvino_vs_reference import (  # noqa: E402
    EXAMPLE_TOML,
    demo_model,
    packager_bench,
    toml_text,
)
from packager.example.data import default_candidates  # noqa: E402

OPTION = {"cpu-openvino": "precision", "edge-ort": "quantize"}


def tiny_model(dest: Path, data: Path) -> Path:
    from tests.models import make_classifier

    return make_classifier(dest / "tiny.onnx", str(data))


def build(config: Path, out: Path, target: str, *flags: str) -> tuple[float, dict[str, Any]]:
    """(wall seconds, the target's result) of one `packager build` in a subprocess."""
    cmd = [sys.executable, "-m", "packager.cli", "build", "--config", str(config), "--out"]
    cmd += [str(out), "--force", "--json", "-t", target, *flags]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        sys.exit(f"packager build failed (exit {proc.returncode}): {proc.stderr.strip()}")
    [result] = json.loads(proc.stdout)["results"]
    return wall, result


def write_config(base: dict[str, Any], path: Path, target: str, options: dict[str, Any]) -> Path:
    cfg = json.loads(json.dumps(base))
    targets = cfg.setdefault("targets", {})
    targets[target] = {**targets.get(target, {}), **options}
    path.write_text(toml_text(cfg))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="ONNX model (default: demo model, else tiny)")
    ap.add_argument("--data", type=Path, help="PneumoniaMNIST npz (default: ../shared/data)")
    ap.add_argument("--targets", default="cpu-openvino,edge-ort")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved auto / INT8 build pairs")
    ap.add_argument("--bench-rounds", type=int, default=5, help="interleaved re-benchmarks")
    ap.add_argument("--seconds", type=float, default=0.5, help="per batch size, re-benchmarks")
    ap.add_argument("--cost-only", action="store_true", help="only the wall-time ratio (part 1)")
    ap.add_argument(
        "--bench-seconds", type=float, help="[bench] seconds of the full benchmarks (a loaded host)"
    )
    args = ap.parse_args()

    data = args.data or next((p for p in default_candidates() if p.is_file()), None)
    if data is None or not data.is_file():
        sys.exit("PneumoniaMNIST not found; pass --data PATH")
    work = Path(tempfile.mkdtemp(prefix="precision-search-"))
    model = args.model or demo_model()
    if model is not None:
        beside = model.parent / "packager.toml"
        cfg = tomllib.loads((beside if beside.is_file() else EXAMPLE_TOML).read_text())
        print(f"model: {model} (trained demo model)")
    else:
        model = tiny_model(work, data)
        cfg = {"model": {"name": "tiny", "version": "1.0.0"}, "labels": {"threshold": 0.2}}
        print("model: no trained demo model cached (run `packager demo`): the tiny test")
        print("classifier of tests/models.py, 32x32 RGB, threshold 0.2")
    cfg["model"]["path"] = str(model.resolve())
    cfg.setdefault("data", {})["path"] = str(data.resolve())
    bench = {**{"batch_sizes": [1, 8, 16, 32, 64], "seconds": 2.0}, **cfg.get("bench", {})}
    if args.bench_seconds is not None:
        bench["seconds"] = args.bench_seconds
    cfg["bench"] = bench
    print(f"[bench] for full benchmarks: batch sizes {bench['batch_sizes']}, {bench['seconds']} s")
    print(f"work dir: {work}\n")

    from packager.core.registry import get

    for target in args.targets.split(","):
        t = get(target)
        opt = OPTION[target]
        auto_cfg = write_config(cfg, work / f"{target}-auto.toml", target, {opt: "auto"})
        # the fixed INT8 build: --int8 on the target's own defaults (what a release would run)
        int8_cfg = write_config(cfg, work / f"{target}-int8.toml", target, {})
        walls: dict[str, list[float]] = {"auto": [], "int8": []}
        winner: dict[str, Any] = {}
        for i in range(args.rounds):
            order = ["auto", "int8"] if i % 2 == 0 else ["int8", "auto"]
            for kind in order:
                if kind == "auto":
                    wall, res = build(auto_cfg, work / "auto", target)
                    winner = res
                else:
                    wall, _ = build(int8_cfg, work / "int8", target, "--int8")
                walls[kind].append(wall)
        ratios = [a / b for a, b in zip(walls["auto"], walls["int8"], strict=True)]
        print(f"== {target}")
        print(
            f"wall time: auto {statistics.median(walls['auto']):.1f} s, single INT8 build "
            f"{statistics.median(walls['int8']):.1f} s; ratio auto / INT8 = "
            f"{statistics.median(ratios):.2f} (median of {len(ratios)}; goal <= 2.5)"
        )
        if not winner.get("bundle") or winner["status"] not in ("passed", "not-validated"):
            print(f"auto did not publish: {winner.get('reason')}\n")
            continue
        report = json.loads((Path(winner["bundle"]) / "report.json").read_text())
        search = report["precision_search"]
        print(f"auto winner: {search['winner']} (objective {search['objective']})")
        if args.cost_only:
            print()
            continue

        bundles: dict[str, Path] = {"auto": Path(winner["bundle"])}
        passed: dict[str, str] = {"auto": report["status"]}
        options = {lab: ov for lab, ov, skip in t.search_candidates(t.Options()) if not skip}
        for label, overrides in options.items():
            fixed = write_config(cfg, work / f"{target}-{label}.toml", target, overrides)
            _, res = build(fixed, work / f"fixed-{label}", target, "--no-bench")
            if res.get("bundle"):
                bundles[label], passed[label] = Path(res["bundle"]), res["status"]
            else:
                print(f"  fixed {label}: not built ({res['status']}: {res['reason']})")
        sizes = sorted({min(bench["batch_sizes"]), max(bench["batch_sizes"])})
        p50: dict[str, list[float]] = {k: [] for k in bundles}
        sps: dict[str, list[float]] = {k: [] for k in bundles}
        for i in range(args.bench_rounds):
            names = list(bundles) if i % 2 == 0 else list(reversed(bundles))
            for name in names:
                rows = packager_bench(bundles[name], sizes, args.seconds)
                p50[name].append(rows[min(sizes)]["latency_ms"]["p50"])
                sps[name].append(max(r["throughput_sps"] for r in rows.values()))
        med = {k: (statistics.median(p50[k]), statistics.median(sps[k])) for k in bundles}
        wp, ws = med["auto"]
        print(
            f"re-benchmarked {args.bench_rounds} interleaved rounds, batch sizes {sizes}, "
            f"{args.seconds} s each (medians):"
        )
        print(
            f"  {'bundle':26} {'gates':14} {'b1 p50 ms':>10} {'best sps':>10} "
            f"{'winner p50 / it':>16} {'winner sps / it':>16}"
        )
        for name, (lp, tp) in med.items():
            label = f"auto ({search['winner']})" if name == "auto" else f"fixed {name}"
            print(
                f"  {label:26} {passed[name]:14} {lp:10.4f} {tp:10.0f} {wp / lp:16.2f} "
                f"{ws / tp:16.2f}"
            )
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
