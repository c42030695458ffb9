"""Subprocess entry point: `python -m packager.worker job.json` (see runner.run_worker)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from packager.bench import measure
from packager.registry import get
from packager.validate import predict_all


def main(spec_path: str) -> None:
    job = json.loads(Path(spec_path).read_text())
    work = Path(job["workdir"])
    x = np.load(work / "x.npy", allow_pickle=False)
    target = get(job["target"])
    runner = target.runner(Path(job["bundle"]), job["options"], kind=job.get("kind", "main"))
    result: dict = {}
    if job["job"] == "predict":
        with runner:
            scores = predict_all(runner, x, job["batch_size"], job.get("fixed_batch"))
            result["runtime"] = runner.info()
        np.save(work / "scores.npy", scores, allow_pickle=False)
        result["arrays"] = ["scores"]
    elif job["job"] == "bench":
        b = job["bench"]
        result = measure(
            runner, x, b["batch_sizes"], b["warmup"], b["seconds"], b["min_iterations"]
        )
    (work / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
