"""Subprocess entry point: `python -m packager.runtime.worker job.json` (see runner.run_worker)."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import numpy as np

from packager.core.errors import Unavailable
from packager.runtime.bench import measure
from packager.runtime.runner import ModuleRunner

# packager.shipped.predict.infer_all is runtime.validate.predict_all itself, imported from where
# it lives: runtime.validate would bring config, gates and target (pydantic, onnx) into every
# worker, about 0.15 s of each worker's start-up, for nothing it uses.
from packager.shipped.predict import infer_all as predict_all


def main(spec_path: str) -> None:
    job = json.loads(Path(spec_path).read_text())
    work = Path(job["workdir"])
    x = np.load(work / "x.npy", allow_pickle=False)
    if job["job"] == "bench_rounds":
        (work / "result.json").write_text(json.dumps(_bench_rounds(job, x)))
        return
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
        from packager.runtime.golden import record

        samples, raw = np.load(work / "samples.npy"), np.load(work / "raw.npy")
        with runner:
            golden = record(runner, x, samples, raw, job["spec"])
            result["runtime"] = runner.info()
        keys = ("x", "probs", "kinds", "raw_probs", "raw_chosen")
        for key in keys:
            np.save(work / f"golden_{key}.npy", golden.pop(key), allow_pickle=False)
        result |= golden | {"arrays": [f"golden_{key}" for key in keys]}
    elif job["job"] == "openloop":
        from packager.runtime.openloop import best_batcher

        o = job["open_loop"]
        with runner:
            result = best_batcher(
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
    elif job["job"] == "profile":
        with runner:
            raw = runner.profile(x, job["calls"])
            result["runtime"] = runner.info()
        if raw is not None:
            (work / "profile.json").write_text(json.dumps(raw.pop("raw")))
        result["profile"] = raw
    elif job["job"] == "bench":
        result = _measure(runner, x, job["bench"])
    return result


def _measure(runner: ModuleRunner, x: np.ndarray, b: dict) -> dict:
    """packager.runtime.bench.measure with a job's [bench] spec."""
    return measure(
        runner,
        x,
        b["batch_sizes"],
        b["warmup"],
        b["seconds"],
        b["min_iterations"],
        b.get("stability", 0.10),
        b.get("max_seconds"),
    )


def _bench_rounds(job: dict, x: np.ndarray) -> dict:
    """`measure` on each of several bundles, in `rounds` interleaved rounds (every second round
    in reverse order), one fresh runner per bundle and round, each from its own bundle's
    runtime.py. A bundle that fails is reported with the reason a worker of its own would give,
    and left out of the later rounds; the others go on."""
    b = job["bench"]
    entries = job["entries"]
    runs: list[dict] = []
    failed: set[str] = set()
    for i in range(job["rounds"]):
        for e in entries if i % 2 == 0 else list(reversed(entries)):
            if e["label"] in failed:
                continue
            bundle = Path(e["bundle"])
            runner = None
            try:
                runner = ModuleRunner(bundle, bundle, e["options"])
                out = _measure(runner, x, b)
            except Unavailable as exc:
                failed.add(e["label"])
                runs.append({"label": e["label"], "error": str(exc).strip()})
                continue
            except Exception as exc:  # as runner.run_worker words a worker that raised
                failed.add(e["label"])
                lines = "".join(traceback.format_exception(exc)).strip().splitlines()
                tail = lines[-1] if lines else "no output"
                runs.append(
                    {
                        "label": e["label"],
                        "error": f"bench on {job['target']} failed in its subprocess "
                        f"(exit 1): {tail}",
                    }
                )
                continue
            finally:
                if runner is not None:
                    runner.close()
            runs.append({"label": e["label"], "result": out})
    return {"runs": runs}


if __name__ == "__main__":
    main(sys.argv[1])
