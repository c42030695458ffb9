"""A virtual clock for the open-loop server (packager/runtime/openloop.py), and the same server
written independently as a queue (Lindley's recursion with the batcher's rule spelled out), for
tests/test_open_loop.py and tests/test_trust_openloop.py."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np

TICK = 2.0**-30  # about a nanosecond: the virtual clock reads whole ticks, as perf_counter does


class VirtualClock:
    """Time that moves only when the loop sleeps or the 'runtime' works. It starts far from 0,
    as perf_counter does, so a loop that mixed up absolute and relative times would show. Like
    a real clock it reads whole ticks and a sleep never ends early: it ends on the first tick
    at or after its end, computed exactly (a float sum could fall just short, and the loop
    would wake before the arrival it waited for). Service times in binary fractions of a
    second (multiples of 2**-k) keep every reading exact."""

    def __init__(self, service: Callable[[int], float], start: float = 1024.0) -> None:
        self.now, self.service = start, service
        self.batches: list[int] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s >= 0, s
        self.now = math.ceil((Fraction(self.now) + Fraction(s)) / Fraction(TICK)) * TICK

    def infer(self, b: int) -> None:
        self.batches.append(b)
        self.now += self.service(b)


class VirtualRunner:
    """A runner object for openloop.search() on the virtual clock: each call takes the service
    time of its batch (as len(x) rows) and notes the input it got."""

    def __init__(self, service: Callable[[int], float]) -> None:
        self.vc = VirtualClock(service)
        self.inputs: list[np.ndarray] = []

    def infer(self, x: np.ndarray) -> None:
        self.inputs.append(x)
        self.vc.infer(len(x))


def simulate(
    schedule: list[float],
    service: Callable[[int], float],
    max_batch: int,
    delay: float,
    cutoff: float = float("inf"),
) -> tuple[list[float], list[int], int]:
    """The same server written as a queue: when free at `free`, the next batch starts at
    max(free, first arrival), waits until the batch is full or `delay` after its first
    arrival, and takes everyone who has arrived by then. A batch whose first request finds the
    server ready only after `cutoff` is not started: it and all later requests are dropped.
    Returns the served requests' latencies, the batch sizes and how many were dropped."""
    lat, batches, free, i = [], [], 0.0, 0
    while i < len(schedule):
        start = max(free, schedule[i])
        if start > cutoff:
            break
        last = min(i + max_batch, len(schedule)) - 1
        if schedule[last] > start:
            start = max(start, min(schedule[i] + delay, schedule[last]))
        j = i
        while j < len(schedule) and j - i < max_batch and schedule[j] <= start:
            j += 1
        free = start + service(j - i)
        lat += [free - schedule[k] for k in range(i, j)]
        batches.append(j - i)
        i = j
    return lat, batches, len(schedule) - i
