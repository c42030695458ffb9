"""Subprocess entry point: `python -m packager.worker job.json` (see runner.run_worker)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from packager.bench import measure
from packager.errors import Unavailable
from packager.runner import ModuleRunner
from packager.validate import predict_all


def main(spec_path: str) -> None:
    job = json.loads(Path(spec_path).read_text())
    work = Path(job["workdir"])
    x = np.load(work / "x.npy", allow_pickle=False)
    bundle = Path(job["bundle"])
    code = Path(job.get("code") or bundle)
    try:
        runner = ModuleRunner(code, bundle, job["options"], kind=job.get("kind", "main"))
        result = _run(job, runner, work, x)
    except Unavailable as exc:  # the host lacks the runtime: a result, reported by the parent
        (work / "unavailable.txt").write_text(str(exc))
        return
    (work / "result.json").write_text(json.dumps(result))


def _run(job: dict, runner: ModuleRunner, work: Path, x: np.ndarray) -> dict:
    result: dict = {}
    if job["job"] == "predict":
        with runner:
            scores = predict_all(runner, x, job["batch_size"], job.get("fixed_batch"))
            result["runtime"] = runner.info()
        np.save(work / "scores.npy", scores, allow_pickle=False)
        result["arrays"] = ["scores"]
    elif job["job"] == "golden":
        from packager.selftest import record

        with runner:
            golden = record(runner, x, np.load(work / "samples.npy"), job["spec"])
            result["runtime"] = runner.info()
        for key in ("x", "probs", "kinds"):
            np.save(work / f"golden_{key}.npy", golden.pop(key), allow_pickle=False)
        result |= golden | {"arrays": ["golden_x", "golden_probs", "golden_kinds"]}
    elif job["job"] == "openloop":
        from packager.openloop import search

        o = job["open_loop"]
        with runner:
            result = search(
                runner,
                x,
                o["sla_ms"],
                o["max_batch"],
                o["max_delay_ms"],
                o["seconds"],
                o.get("rates"),
                job.get("fixed_batch"),
            )
            result["runtime"] = runner.info()
    elif job["job"] == "bench":
        b = job["bench"]
        result = measure(
            runner,
            x,
            b["batch_sizes"],
            b["warmup"],
            b["seconds"],
            b["min_iterations"],
            b.get("stability", 0.10),
            b.get("max_seconds"),
        )
    return result


if __name__ == "__main__":
    main(sys.argv[1])
