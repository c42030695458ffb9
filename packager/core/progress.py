"""Progress on stderr for long steps (stdout stays for results and --json), in one of four modes
(`--progress`, or $PACKAGER_PROGRESS):

- rich: on a terminal, a spinner per step with its elapsed time, and a bar with counts and ETA
  where the step knows its total (images in site acceptance);
- plain: one flushed line per step start and end, with the run's elapsed time and the target's
  i/N, and every 10% of a counted step; inside GitHub Actions each target is a `::group::`;
- none: nothing (--quiet);
- auto (the default): rich on a terminal, plain otherwise, so a CI log shows every step."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

MODES = ("auto", "rich", "plain", "none")
ENV = "PACKAGER_PROGRESS"


def resolve(mode: str | bool | None) -> str:
    """The mode in effect: True is plain, False none, None the environment's (or auto); auto is
    rich on a terminal with rich installed, plain otherwise."""
    if mode is True:
        return "plain"
    if mode is False:
        return "none"
    if mode is None:
        mode = os.environ.get(ENV, "auto") or "auto"
    if mode not in MODES:
        from packager.core.errors import UserError

        raise UserError(f"progress mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "auto":
        return "rich" if sys.stderr.isatty() and _has_rich() else "plain"
    return mode


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


class Progress:
    def __init__(self, mode: str | bool | None = None) -> None:
        self.mode = resolve(mode)
        self.enabled = self.mode != "none"
        self.start = time.perf_counter()
        self.github = os.environ.get("GITHUB_ACTIONS") == "true" and self.mode == "plain"
        self.counts: dict[str, str] = {}  # scope -> "i/N" of the run's targets
        self.console: Any = None
        if self.mode == "rich":
            from rich.console import Console

            self.console = Console(stderr=True, soft_wrap=True)

    def _scope(self, scope: str) -> str:
        n = self.counts.get(scope)
        return f"[{scope} {n}]" if n else f"[{scope}]"

    def say(self, msg: str) -> None:
        if self.mode == "plain":
            print(f"{self._elapsed()} {msg}", file=sys.stderr, flush=True)
        elif self.mode == "rich":
            self.console.print(msg, markup=False, highlight=False)

    def _elapsed(self) -> str:
        return f"[{time.perf_counter() - self.start:7.1f}s]"

    @contextmanager
    def step(self, scope: str, what: str) -> Iterator[None]:
        head = f"{self._scope(scope)} {what}"
        start = time.perf_counter()
        if self.mode == "rich":
            with self.console.status(f"{head} ...", spinner="dots"):
                yield
        else:
            self.say(f"{head} ...")
            yield
        self.say(f"{head}: done in {time.perf_counter() - start:.1f}s")

    @contextmanager
    def target(self, name: str, i: int, n: int) -> Iterator[None]:
        """One target of the run: its steps show i/N; a GitHub Actions log group."""
        self.counts[name] = f"{i}/{n}"
        if self.github:
            print(f"::group::{name} ({i}/{n})", file=sys.stderr, flush=True)
        try:
            yield
        finally:
            self.counts.pop(name, None)
            if self.github:
                print("::endgroup::", file=sys.stderr, flush=True)

    @contextmanager
    def counted(self, scope: str, what: str, total: int) -> Iterator[Callable[[int], None]]:
        """A step over `total` items; the caller reports how many are done so far."""
        head = f"{self._scope(scope)} {what}"
        start = time.perf_counter()
        if self.mode == "rich":
            from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            with Bar(
                f"{head}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            ) as bar:
                task = bar.add_task(head, total=total)
                yield lambda done: bar.update(task, completed=done)
        elif self.mode == "plain":
            self.say(f"{head}: 0/{total} ...")
            shown = [0]

            def advance(done: int) -> None:
                tenth = done * 10 // max(total, 1)
                if tenth > shown[0] and done < total:
                    shown[0] = tenth
                    self.say(f"{head}: {done}/{total}")

            yield advance
        else:
            yield lambda done: None
        self.say(f"{head}: {total}/{total} done in {time.perf_counter() - start:.1f}s")
