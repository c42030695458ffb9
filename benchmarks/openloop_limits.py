#!/usr/bin/env python3
"""Why a bundle's open-loop max_rate falls short of its closed-loop saturation on this host:
the runtime's own costs, measured, then fed to packager's serving loop on a virtual clock.

    python benchmarks/openloop_limits.py BUNDLE [--sla-ms 3] [--max-batch 16] [--seconds 2]

Run it on your own bundle (it loads the bundle's runtime.py in this process; `packager verify`
a bundle from elsewhere first). It measures, on the shipped runtime:
  hot     each batch size 1..max_batch called back to back (a closed loop's best case);
  mixed   the same calls in a random order of batch sizes, as a dynamic batcher forms them;
  idle    batch 1 after an exponential idle gap of --idle-ms on average (a quiet server).
Then packager's own serve() (packager/runtime/openloop.py) runs on a virtual clock whose calls
take those measured times, under three models of the runtime, and the real rate search runs on
the runtime itself. Each model's predicted max_rate against the measured one says how much of
the gap to saturation each cost explains. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from packager.runtime.bench import batch_of  # noqa: E402
from packager.runtime.openloop import meets, point, saturation, search, warm  # noqa: E402
from packager.runtime.runner import ModuleRunner  # noqa: E402

SHARES = [round(0.05 * k, 2) for k in range(1, 21)]


def timed(infer: Callable[[int], object], b: int) -> float:
    t0 = time.perf_counter()
    infer(b)
    return time.perf_counter() - t0


class Virtual:
    """A clock that advances only by sleeps and by calls drawn from measured times; `idle`
    is added to a call that starts after the server waited (its threads had gone to sleep)."""

    def __init__(self, times: dict[int, list[float]], idle: float, seed: int = 0) -> None:
        self.now, self.times, self.idle = 0.0, times, idle
        self.rng, self.waited = np.random.default_rng(seed), False

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        self.waited = True

    def infer(self, b: int) -> None:
        self.now += float(self.rng.choice(self.times[b])) + (self.idle if self.waited else 0.0)
        self.waited = False


def predicted(
    times: dict[int, list[float]], idle: float, sat: float, args: argparse.Namespace
) -> tuple[float | None, float | None]:
    """(max_rate, its p95 ms) the serving loop reaches on the virtual clock."""
    best: tuple[float | None, float | None] = (None, None)
    for share in SHARES:
        v = Virtual(times, idle)
        p = point(v.infer, share * sat, args.seconds * 5, args.max_batch, 0.0, 0, v.clock, v.sleep)
        if meets(p, args.sla_ms):
            best = (p["achieved_rate"], p["p95_ms"])
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--sla-ms", type=float, default=3.0)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=2.0, help="per measured rate")
    ap.add_argument("--calls", type=int, default=3000, help="calls in the mixed measurement")
    ap.add_argument("--idle-ms", type=float, default=4.0, help="mean idle gap before a call")
    args = ap.parse_args()
    spec = json.loads((args.bundle / "runtime.json").read_text())
    if spec.get("fixed_batch"):
        sys.exit("a fixed-batch bundle pads every call to one shape; nothing here applies")
    dims = [int(d) for d in spec["input"]["shape"][1:]]
    rng = np.random.default_rng(0)
    sample = rng.random([1, *dims]).astype(spec["input"]["dtype"])  # timing only: any values
    inputs = {b: batch_of(sample, b) for b in range(1, args.max_batch + 1)}
    runner = ModuleRunner(args.bundle, args.bundle, spec["runner_options"])
    sizes = list(range(1, args.max_batch + 1))
    with runner:

        def infer(b: int) -> object:
            return runner.infer(inputs[b])

        warm(infer, sizes)
        hot = {b: [timed(infer, b) for _ in range(max(20, 300 // b))] for b in sizes}
        mixed: dict[int, list[float]] = {b: [] for b in sizes}
        for b in rng.integers(1, args.max_batch + 1, args.calls):
            mixed[int(b)].append(timed(infer, int(b)))
        after_idle = []
        for _ in range(300):
            time.sleep(rng.exponential(args.idle_ms / 1e3))
            after_idle.append(timed(infer, 1))
        sat = saturation(infer, args.max_batch, 1.0)
        real = search(runner, sample, args.sla_ms, args.max_batch, 0.0, args.seconds)

    def ms(v: list[float]) -> str:
        return f"{np.median(v) * 1e3:.3f}"

    wake = float(np.median(after_idle) - np.median(hot[1]))
    print(
        f"{args.bundle} on {spec['target']}; SLA p95 <= {args.sla_ms} ms, max batch {args.max_batch}"
    )
    print("\nmedian call (ms)      " + " ".join(f"b{b:<6}" for b in (1, 2, 4, 8, args.max_batch)))
    for name, t in (("hot (same shape)", hot), ("mixed (random shapes)", mixed)):
        print(f"{name:22}" + " ".join(f"{ms(t[b]):7}" for b in (1, 2, 4, 8, args.max_batch)))
    print(f"batch 1 after ~{args.idle_ms:g} ms idle: {ms(after_idle)} ms (+{wake * 1e3:.3f} ms)")
    print(f"\nclosed-loop saturation at batch {args.max_batch}: {sat:.0f}/s")
    print(f"{'serving model':42} {'max_rate':>9} {'share':>6} {'p95 ms':>7}")
    rows = [
        ("virtual: hot calls only", hot, 0.0),
        ("virtual: shapes mixed", mixed, 0.0),
        ("virtual: shapes mixed + idle wake-up", mixed, wake),
    ]
    for name, times, idle in rows:
        rate, p95 = predicted(times, idle, sat, args)
        print(f"{name:42} {rate or 0:9.0f} {(rate or 0) / sat:6.2f} {p95 or float('nan'):7.2f}")
    rate, p95 = real["max_rate"], real["p95_ms_at_max_rate"]
    print(
        f"{'measured: packager bench --open-loop':42} {rate or 0:9.0f} {(rate or 0) / sat:6.2f} "
        f"{p95 or float('nan'):7.2f}"
    )


if __name__ == "__main__":
    main()
