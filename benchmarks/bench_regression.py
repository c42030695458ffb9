#!/usr/bin/env python3
"""Is NEW slower than OLD? Two bundles of the same model benchmarked in interleaved rounds on
this host, with the ratio's interval.

    python benchmarks/bench_regression.py OLD_BUNDLE NEW_BUNDLE [--rounds 9] [--batch 1]
                                          [--seconds 0.5]

Each round runs `packager bench` on OLD then NEW (the order alternates every round, so a
drift of the host hits both alike), at one batch size. Per round: NEW/OLD of the batch's p50
latency and of its throughput. Printed: the median ratio and a distribution-free 95%
interval of the median (order statistics: no assumption about the distribution), plus how
many runs were on a busy host (host_state.noisy). A ratio
whose interval excludes 1 is a change this host can see; one that includes 1 is within noise.
Numbers are printed, never asserted (they come from this machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any


def bench(bundle: Path, batch: int, seconds: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "packager.cli", "bench", str(bundle), "--json"]
    cmd += ["--batch-sizes", str(batch), "--seconds", str(seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"packager bench {bundle} failed: {proc.stderr.strip()[-400:]}")
    return json.loads(proc.stdout)


def interval(ratios: list[float]) -> tuple[float, float] | None:
    """Distribution-free 95% interval of the median (order statistics, binomial coverage);
    None when there are too few rounds for one (fewer than 6)."""
    from scipy.stats import binom

    x, n = sorted(ratios), len(ratios)
    k = max((k for k in range(1, n // 2 + 1) if binom.cdf(k - 1, n, 0.5) <= 0.025), default=0)
    return (x[k - 1], x[n - k]) if k else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=0.5)
    args = ap.parse_args()
    latency, throughput, noisy = [], [], 0
    for i in range(args.rounds):
        pair = (args.old, args.new) if i % 2 == 0 else (args.new, args.old)
        got = {p: bench(p, args.batch, args.seconds) for p in pair}
        old, new = (got[p]["batches"][0] for p in (args.old, args.new))
        latency.append(new["latency_ms"]["p50"] / old["latency_ms"]["p50"])
        throughput.append(new["throughput_sps"] / old["throughput_sps"])
        noisy += sum(bool(got[p]["host_state"]["noisy"]) for p in pair)
        print(
            f"round {i + 1}: p50 OLD {old['latency_ms']['p50']:.4f} ms NEW "
            f"{new['latency_ms']['p50']:.4f} ms; throughput OLD {old['throughput_sps']:,.0f} "
            f"NEW {new['throughput_sps']:,.0f}/s",
            flush=True,
        )
    for name, ratios in (("p50 latency", latency), ("throughput", throughput)):
        ci = interval(ratios)
        head = f"NEW/OLD {name} at batch {args.batch}: median {statistics.median(ratios):.3f}"
        if ci is None:
            print(f"{head} ({args.rounds} rounds: too few for a 95% interval, run 6 or more)")
            continue
        verdict = "within noise" if ci[0] <= 1 <= ci[1] else "a change this host can see"
        print(f"{head} (95% CI {ci[0]:.3f}-{ci[1]:.3f}, {args.rounds} rounds): {verdict}")
    print(f"benchmarks on a busy host: {noisy} of {2 * args.rounds}")


if __name__ == "__main__":
    main()
