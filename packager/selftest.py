"""The golden set each bundle carries for its arrival self-test (the replay itself ships in the
bundle as selftest.py): deterministic inputs, the target runtime's outputs on them, and a
tolerance measured on the build host rather than guessed.

Inputs: seeded synthetic images in the model's input space, blends of two of them placed just
either side of the decision threshold (where a numerics change flips a decision first), and,
only where [data] shareable = true, the validation images nearest the threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from packager.errors import PackagerError
from packager.preprocess import Preprocess
from packager.runner import Runner
from packager.shipped import selftest as shipped
from packager.shipped.predict import infer_all, probabilities
from packager.shipped.selftest import GOLDEN, GOLDEN_META, SCHEMA_VERSION

# Smallest tolerance per precision: run-to-run spread on one host is often exactly zero, but
# another CPU's kernels (AVX2 vs AVX-512, VNNI or not) legitimately move the last digits.
FLOORS = {"fp32": 1e-4, "fp16": 1e-3, "int8": 5e-3, "bf16": 2e-2}
PROXY_FLOOR = 1e-2  # golden outputs from a proxy: the target's own runtime is compared with them
GOLDEN_BATCH = 8
NEAR_MARGINS = (3.0, 10.0)  # near-threshold cases sit this many tolerance floors from it
SEARCH_ROUNDS, SEARCH_POINTS = 5, 9


def floor_for(precision: str, proxy: bool) -> float:
    base = next((v for k, v in FLOORS.items() if precision.startswith(k)), FLOORS["int8"])
    return max(base, PROXY_FLOOR) if proxy else base


def synthetic_images(size: int, channels: int, n: int, seed: int = 0) -> np.ndarray:
    """Seeded uint8 images: flat fields, gradients, smooth blobs and white noise in turn."""
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if channels == 3 else (size, size)
    out = np.empty((n, *shape), np.uint8)
    ramp = np.linspace(0.0, 1.0, size)
    for i in range(n):
        kind = i % 4
        if kind == 0:
            img = np.full(shape, rng.integers(0, 256), np.float64)
        elif kind == 1:
            angle = rng.uniform(0, np.pi)
            field = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
            img = 255 * (field - field.min()) / max(np.ptp(field), 1e-9)
            img = np.repeat(img[..., None], 3, axis=2) if channels == 3 else img
        elif kind == 2:
            coarse = rng.integers(0, 256, (rng.integers(3, 9),) * 2 + shape[2:], dtype=np.uint8)
            img = np.asarray(
                Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), np.float64
            )
        else:
            img = rng.integers(0, 256, shape).astype(np.float64)
        out[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def _blend(a: np.ndarray, b: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    w = alphas.reshape(-1, *([1] * a.ndim)).astype(np.float32)
    return ((1 - w) * a.astype(np.float32) + w * b.astype(np.float32)).astype(a.dtype)


def near_threshold(
    score: Any, x: np.ndarray, p: np.ndarray, threshold: float, goals: list[float]
) -> np.ndarray:
    """For each goal probability, a blend of a below- and an above-threshold input whose
    positive-class probability is close to it (a grid search on the blend weight, refined)."""
    below, above = np.argsort(p)[: len(goals)], np.argsort(p)[::-1][: len(goals)]
    below, above = below[p[below] < threshold], above[p[above] >= threshold]
    if not len(below) or not len(above):
        return x[:0]
    found = []
    for i, goal in enumerate(goals):
        a, b = x[below[i % len(below)]], x[above[i % len(above)]]
        lo, hi, best, best_gap = 0.0, 1.0, a, np.inf
        for _ in range(SEARCH_ROUNDS):
            alphas = np.linspace(lo, hi, SEARCH_POINTS)
            probs = score(_blend(a, b, alphas))
            gaps = np.abs(probs - goal)
            j = int(np.argmin(gaps))
            if gaps[j] < best_gap:
                best, best_gap = _blend(a, b, alphas[j : j + 1])[0], gaps[j]
            crossing = np.flatnonzero(np.diff(np.sign(probs - goal)))
            k = int(crossing[0]) if len(crossing) else max(0, min(j, SEARCH_POINTS - 2))
            lo, hi = alphas[k], alphas[k + 1]
        found.append(best)
    return np.stack(found)


def record(runner: Runner, x: np.ndarray, samples: np.ndarray, spec: dict[str, Any]) -> dict:
    """In the worker, on the target's runtime: the golden inputs, their probabilities at
    GOLDEN_BATCH (twice) and at batch 1, and the tolerance those runs imply."""
    fixed, kind, pos = spec["fixed_batch"], spec["output"], spec["positive_index"]

    def probs_of(inputs: np.ndarray, batch: int = GOLDEN_BATCH) -> np.ndarray:
        return probabilities(infer_all(runner, inputs, batch, fixed), kind)

    threshold, floor = spec["threshold"], spec["floor"]
    p = probs_of(x)[:, pos]
    goals = [
        min(max(threshold + sign * m * floor, 1e-6), 1 - 1e-6)
        for m in NEAR_MARGINS
        for sign in (-1, 1)
    ][: spec["near_threshold"]]
    near = near_threshold(lambda z: probs_of(z)[:, pos], x, p, threshold, goals)
    inputs = np.concatenate([x, near, samples.astype(x.dtype)])
    kinds = ["synthetic"] * len(x) + ["near-threshold"] * len(near) + ["validation"] * len(samples)
    golden, again, single = probs_of(inputs), probs_of(inputs), probs_of(inputs, 1)
    repeat = float(np.abs(golden - again).max())
    batch_effect = float(np.abs(golden - single).max())
    return {
        "x": inputs,
        "probs": golden,
        "kinds": np.array(kinds),
        "repeat_max_abs_diff": repeat,
        "batch1_max_abs_diff": batch_effect,
        "tolerance": max(floor, 2 * max(repeat, batch_effect)),
    }


def samples_near_threshold(
    x: np.ndarray, probs: np.ndarray, positive: int, threshold: float, n: int
) -> np.ndarray:
    """The n validation inputs whose positive-class probability is nearest the threshold."""
    order = np.argsort(np.abs(probs[:, positive] - threshold), kind="stable")
    return x[np.sort(order[:n])]


def write_golden(bdir: Path, result: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """selftest.npz (inputs, golden probabilities, case kinds) and selftest.json (tolerance and
    how it was measured); returns the summary that goes into report.json."""
    np.savez(bdir / GOLDEN, x=result["x"], probs=result["probs"], kinds=result["kinds"])
    kinds = [str(k) for k in result["kinds"]]
    summary = {
        "schema_version": SCHEMA_VERSION,
        **meta,
        "batch_size": GOLDEN_BATCH,
        "tolerance": result["tolerance"],
        "measured": {
            "repeat_max_abs_diff": result["repeat_max_abs_diff"],
            "batch1_max_abs_diff": result["batch1_max_abs_diff"],
        },
        "cases": {k: kinds.count(k) for k in ("synthetic", "near-threshold", "validation")},
    }
    from packager import documents  # here: the worker imports this module, and needs no pydantic

    return documents.write(bdir / GOLDEN_META, documents.SelftestSummary, summary)


def synthetic_inputs(pre: Preprocess, n: int) -> np.ndarray:
    return pre(synthetic_images(pre.size, pre.channels, n))


def arrival(
    path: Path, record: Path | None, max_gb: float | None, pubkey: Path | None = None
) -> tuple[int, str, dict]:
    """`packager selftest BUNDLE`: packager's own check of the bundle first (packager.trust:
    files, signature, code hashes, config), then, only if it passes, the bundle's own
    `predict.py --self-test` in a fresh interpreter (a tarball is extracted safely first).
    Returns (exit code, summary line, the acceptance record, which states what the verdict rests
    on: the signature checked with `pubkey`, or the manifest sha256 to compare with the
    release's)."""
    import subprocess
    import sys
    import tempfile

    from packager.bundle import safe_extract
    from packager.errors import UserError
    from packager.trust import check_bundle

    with tempfile.TemporaryDirectory(prefix="packager-selftest-") as tmp:
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
            bundle = safe_extract(path, Path(tmp), max_gb)
            default = path.with_name(path.name.removesuffix(".gz").removesuffix(".tar"))
        elif path.is_dir():
            bundle, default = path, path.resolve()  # `packager selftest .` names its folder
        else:
            raise UserError(f"{path} is neither a bundle directory nor a .tar.gz; pass one")
        rec = (record or default.with_name(default.name + ".acceptance.json")).resolve()
        checked = check_bundle(bundle, pubkey)
        first = {
            "name": "integrity",
            "status": "passed" if checked.ok else "failed",
            "checked_by": "packager",
            "problems": checked.problems,
        }
        if not checked.ok:  # no file of the bundle runs: the record is packager's alone
            result = shipped.new_record(bundle, checked.manifest, [first], checked.integrity())
        else:
            # -P (Python >= 3.11): the bundle folder is not put on sys.path even before
            # predict.py's first line takes it off.
            safe = ["-P"] if sys.version_info >= (3, 11) else []
            cmd = [sys.executable, *safe, str(bundle / "predict.py"), "--self-test"]
            rec.unlink(missing_ok=True)  # an earlier run's record is not this run's
            proc = subprocess.run([*cmd, "--record", str(rec)], capture_output=True, text=True)
            if not rec.exists():
                lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines() or ["no output"]
                line = lines[-1].removeprefix("error: ")
                if proc.returncode == 2:
                    raise UserError(line)
                raise PackagerError(f"the self-test ended with exit code {proc.returncode}: {line}")
            result = read_record(rec)
            result["checks"].insert(0, first)
            result["integrity"] = checked.integrity()
    from packager import documents

    rec.write_text(documents.checked_text(documents.Acceptance, result))
    code = {"accepted": 0, "rejected": 1}.get(result["verdict"], 3)
    return code, shipped.summary_line(result, rec), result


def read_record(path: Path) -> dict[str, Any]:
    """An acceptance record, checked against packager.documents.Acceptance: one that does not
    match was not written by a bundle of this packager version (a one-line error)."""
    from packager import documents

    return documents.load(
        path,
        documents.Acceptance,
        "it is not a packager acceptance record: run the self-test of a bundle built by this "
        "packager version",
    )
