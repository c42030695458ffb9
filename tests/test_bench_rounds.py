"""The precision search's short benchmarks in one worker (stages.bench_rounds): each bundle's own
runtime.py, the interleaved order, and failures worded and isolated as a worker per bundle and
round words and isolates them (that path, the fallback, is what it is compared against)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from packager.builder import stages
from packager.builder.stages.bench import _bench_rounds_apart

RUNTIME = """
import os
from pathlib import Path

import numpy as np


class Unavailable(Exception):
    pass


class Fake:
    def __init__(self, bundle, options):
        self.bundle, self.options = Path(bundle), options

    def load(self):
        pass

    def infer(self, x):
        how = (self.bundle / "how.txt").read_text().strip()
        if how == "raise":
            raise RuntimeError("boom in " + self.bundle.name)
        if how == "crash":
            os._exit(9)
        return np.full((len(x), 2), float(self.options["k"]), dtype=np.float32)

    def close(self):
        pass

    def info(self):
        return {"runtime": "fake", "bundle": self.bundle.name, "module": __name__}


def open_runtime(bundle, options, kind="main"):
    if (Path(bundle) / "how.txt").read_text().strip() == "unavailable":
        raise Unavailable("no fake runtime on this host")
    return Fake(bundle, options)
"""

SPEC = {"batch_sizes": [1, 2], "warmup": 1, "seconds": 0.01, "min_iterations": 2}
FAKE = SimpleNamespace(name="fake")


def _bundles(root: Path, hows: dict[str, str]) -> list[tuple[str, Path, dict[str, Any]]]:
    entries = []
    for k, (label, how) in enumerate(hows.items()):
        folder = root / label
        folder.mkdir()
        (folder / "runtime.py").write_text(RUNTIME)
        (folder / "how.txt").write_text(how)
        entries.append((label, folder, {"k": k}))
    return entries


def test_one_worker_runs_every_bundle_in_interleaved_rounds_and_isolates_failures(
    tmp_path: Path,
) -> None:
    entries = _bundles(tmp_path, {"a": "ok", "bad": "raise", "gone": "unavailable", "b": "ok"})
    x = np.zeros((2, 3), dtype=np.float32)
    runs = stages.bench_rounds(FAKE, entries, SPEC, x, 3, 60)  # type: ignore[arg-type]
    # Round 1 in order, round 2 reversed, round 3 in order; a failed bundle is not run again.
    assert [label for label, _, _ in runs] == ["a", "bad", "gone", "b", "b", "a", "a", "b"]
    ok = [(label, out) for label, out, error in runs if error is None]
    assert all(out is not None for _, out in ok)
    # Each result came from its own bundle's runtime.py, loaded under its own module name.
    for label, out in ok:
        assert out["runtime"]["bundle"] == label
        assert [b["batch_size"] for b in out["batches"]] == [1, 2]
    assert len({out["runtime"]["module"] for _, out in ok}) == 2
    # The failures are worded as a worker of their own words them.
    errors = {label: error for label, out, error in runs if out is None}
    apart = _bench_rounds_apart(FAKE, entries[1:3], SPEC, x, 3, 60)  # type: ignore[arg-type]
    assert errors == {label: error for label, _, error in apart}
    assert errors["gone"] == "no fake runtime on this host"
    assert errors["bad"] == (
        "bench on fake failed in its subprocess (exit 1): RuntimeError: boom in bad"
    )


def test_a_crash_of_the_one_worker_falls_back_to_a_worker_per_bundle_and_round(
    tmp_path: Path,
) -> None:
    entries = _bundles(tmp_path, {"crash": "crash", "a": "ok"})
    x = np.zeros((2, 3), dtype=np.float32)
    runs = stages.bench_rounds(FAKE, entries, SPEC, x, 2, 60)  # type: ignore[arg-type]
    assert [(label, out is None) for label, out, _ in runs] == [
        ("crash", True),
        ("a", False),
        ("a", False),
    ]
    assert runs[0][2] == "bench on fake failed in its subprocess (exit 9): no output"
