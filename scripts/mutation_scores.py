#!/usr/bin/env python3
"""The score of each mutated module from mutmut's own records (mutants/**/*.py.meta), as
docs/mutation.md tables them: reached (some selected test ran against it), killed (a test failed,
or the tests timed out), survived, no test reaches it, and not run (outside a filtered run). `make mutate` prints it after `mutmut results`,
which lists survivors only; mutmut has no per-module summary of its own.

    python scripts/mutation_scores.py [MUTANTS_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mutmut.stats import status_by_exit_code


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "mutants")
    metas = sorted(root.rglob("*.py.meta"))
    if not metas:
        print(f"no mutmut records under {root}/: run `make mutate` first", file=sys.stderr)
        return 2
    print(
        f"{'module':40} {'reached':>8} {'killed':>7} {'survived':>8} {'no test':>7} {'not run':>7} score"
    )
    for meta in metas:
        codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        status = [status_by_exit_code[c] for c in codes]
        killed = sum(s in ("killed", "timeout", "caught by type check") for s in status)
        survived = status.count("survived")
        reached = killed + survived
        untested, not_run = status.count("no tests"), status.count("not checked")
        module = meta.relative_to(root).as_posix().removesuffix(".meta")
        score = f"{100 * killed / reached:.1f}%" if reached else "-"
        print(f"{module:40} {reached:8} {killed:7} {survived:8} {untested:7} {not_run:7} {score}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
