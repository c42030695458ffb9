"""Progress lines on stderr for long steps; silent when stderr is not a TTY or with --quiet."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Progress:
    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def say(self, msg: str) -> None:
        if self.enabled:
            print(msg, file=sys.stderr, flush=True)

    @contextmanager
    def step(self, scope: str, what: str) -> Iterator[None]:
        self.say(f"[{scope}] {what} ...")
        start = time.perf_counter()
        yield
        self.say(f"[{scope}] {what}: done in {time.perf_counter() - start:.1f}s")
