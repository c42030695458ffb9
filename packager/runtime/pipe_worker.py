"""Streaming inference subprocess: `python -m packager.runtime.pipe_worker job.json`.

Reads input chunks from stdin and writes each chunk's scores to stdout as they are computed
(frames: see packager.runtime.stream), so the parent decodes the next chunks while this one infers.
The runtime gets a fresh process exactly as in packager.runtime.worker."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from packager.runtime.runner import ModuleRunner
from packager.runtime.stream import peak_rss_mb, read_frame, write_frame
from packager.shipped.predict import infer_all


def main(spec_path: str) -> None:
    job = json.loads(Path(spec_path).read_text())
    # The protocol owns the real stdout; anything a runtime prints goes to stderr instead (for
    # the process's life, keeping fd 1 for the frames: not packager.core.quiet's scoped guard).
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    bundle = Path(job["bundle"])  # its own runtime.py, as in packager.runtime.worker
    runner = ModuleRunner(bundle, bundle, job["options"], kind=job.get("kind", "main"))
    with runner:
        while isinstance(x := read_frame(inp), np.ndarray):
            write_frame(out, infer_all(runner, x, job["batch_size"], job.get("fixed_batch")))
        write_frame(out, None, runner.info() | {"worker_peak_rss_mb": round(peak_rss_mb(), 1)})
    out.close()


if __name__ == "__main__":
    main(sys.argv[1])
