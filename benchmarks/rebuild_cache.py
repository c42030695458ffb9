#!/usr/bin/env python3
"""What the build cache saves on a rebuild (issue 29), in one run.

    python benchmarks/rebuild_cache.py [--model model.onnx] [--target cpu-openvino] [--rounds 2]

Per round, in a fresh cache: a first build (`build -t TARGET --int8`, benchmarks on, stored
in the cache whatever the host's state), then the same build again (`up to date`), then one gate
changed (`--force`: the conversion is reused and validation runs again) with [bench] reuse =
"quiet" (the default: the benchmark is reused only when it was measured on a quiet host with
every window settled) and with reuse = "always". Prints each rebuild's wall time as a share of the first build's (medians over
rounds; goals: up to date <= 15%, one gate changed <= 60%) and whether the benchmark was
reused. Model: --model, else the trained demo model in the packager cache (`packager demo`),
else the untrained example ResNet-18 (same cost, meaningless metrics: gates loosened).
Numbers come from this machine and are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
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
    toml_text,
    untrained_model,
)
from packager.example.data import default_candidates  # noqa: E402


def build(config: Path, out: Path, cache: Path, target: str, *flags: str) -> tuple[float, dict]:
    """(wall seconds, report.json or the result line when nothing was rebuilt)."""
    cmd = [sys.executable, "-m", "packager.cli", "build", "--config", str(config), "--out"]
    cmd += [str(out), "--json", "-t", target, "--int8", *flags]
    env = os.environ | {"PACKAGER_CACHE": str(cache), "PACKAGER_PROGRESS": "none"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        sys.exit(f"packager build failed (exit {proc.returncode}): {proc.stderr.strip()}")
    [result] = json.loads(proc.stdout)["results"]
    if result["reason"] == "up to date":
        return wall, {"up_to_date": True}
    return wall, json.loads((Path(result["bundle"]) / "report.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="ONNX model (default: demo model, else untrained)")
    ap.add_argument("--data", type=Path, help="PneumoniaMNIST npz (default: ../shared/data)")
    ap.add_argument("--target", default="cpu-openvino")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    data = args.data or next((p for p in default_candidates() if p.is_file()), None)
    if data is None or not data.is_file():
        sys.exit("PneumoniaMNIST not found; pass --data PATH")
    work = Path(tempfile.mkdtemp(prefix="rebuild-cache-"))
    cfg: dict[str, Any] = tomllib.loads(EXAMPLE_TOML.read_text())
    model = args.model or demo_model()
    if model is None:
        model = untrained_model(work)
        cfg["gates"] = {"min_sensitivity": 0.0, "max_sensitivity_drop": 1.0}
        print("model: no trained demo model cached (run `packager demo`): untrained ResNet-18")
    print(f"model: {model}\ntarget: {args.target} --int8, work dir: {work}\n")
    cfg["model"]["path"] = str(model.resolve())
    cfg.setdefault("data", {})["path"] = str(data.resolve())
    # the first build stores its benchmark however busy the host: "quiet" then decides on it
    cfg.setdefault("bench", {})["reuse"] = "always"

    shares: dict[str, list[float]] = {"up to date": [], "gate, quiet": [], "gate, always": []}
    reused: dict[str, list[bool]] = {k: [] for k in shares}
    firsts = []
    for i in range(args.rounds):
        cache, out, config = work / f"cache{i}", work / f"out{i}", work / f"round{i}.toml"
        config.write_text(toml_text(cfg))
        first, _ = build(config, out, cache, args.target)
        firsts.append(first)
        wall, r = build(config, out, cache, args.target)
        shares["up to date"].append(wall / first)
        reused["up to date"].append(bool(r.get("up_to_date")))
        for n, rule in enumerate(("quiet", "always")):
            changed = json.loads(json.dumps(cfg))
            changed.setdefault("gates", {})["min_specificity"] = 0.01 * (n + 1)
            changed.setdefault("bench", {})["reuse"] = rule
            config.write_text(toml_text(changed))
            wall, r = build(config, out, cache, args.target, "--force")
            shares[f"gate, {rule}"].append(wall / first)
            reused[f"gate, {rule}"].append(bool((r.get("benchmark") or {}).get("reused")))
        print(f"round {i + 1}: first build {first:.1f} s")

    print(f"\nfirst build: median {statistics.median(firsts):.1f} s over {args.rounds} rounds")
    goals = {"up to date": 0.15, "gate, quiet": 0.60, "gate, always": 0.60}
    for name, values in shares.items():
        share = statistics.median(values)
        print(
            f"{name:13} {100 * share:5.1f}% of the first build (goal <= {100 * goals[name]:.0f}%; "
            f"rounds {', '.join(f'{100 * v:.1f}%' for v in values)}); "
            f"{'up to date' if name == 'up to date' else 'benchmark reused'} in "
            f"{sum(reused[name])} of {len(values)}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
