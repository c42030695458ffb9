#!/usr/bin/env python3
"""Classify chest images with this bundle, or prove on arrival that this host reproduces the outputs
the bundle was validated with.

    python predict.py IMAGE [IMAGE ...]             # one JSON line per image
    python predict.py --self-test [--record PATH]    # golden set on this host + acceptance record

runtime.py (load, infer), preprocess.py + preprocess.json are the exact code and parameters that
produced this bundle's validation numbers (report.json records their sha256); runtime.json holds
the threshold, labels and pinned precision. Needs only what requirements.txt lists.

Exit codes: 0 ok · 1 the self-test found outputs that differ · 2 bad usage or input ·
3 this host lacks the runtime, or cannot run it at the precision the bundle was validated at.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class Refused(Exception):
    """A one-line refusal with its exit code (no traceback: the message names the fix)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def import_runtime(code: Path) -> Any:
    """Import `code/runtime.py`; its sibling modules (ort_session.py, preprocess.py) resolve from
    the same folder."""
    path = code / "runtime.py"
    if not path.is_file():
        raise Refused(f"{code} has no runtime.py; is it a packager bundle?", EXIT_USAGE)
    spec = importlib.util.spec_from_file_location("bundle_runtime", path)
    if spec is None or spec.loader is None:
        raise Refused(f"cannot import {path}", EXIT_USAGE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in runtime.py look their module up there
    # The folder is on the path only while runtime.py imports: left there, a bundle's folders
    # (triton/, ...) would shadow installed packages of the same name in a host process.
    added = str(code) not in sys.path
    if added:
        sys.path.insert(0, str(code))
    try:
        spec.loader.exec_module(module)
    finally:
        if added:
            sys.path.remove(str(code))
    return module


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise Refused(
            f"{path.parent} has no {path.name}; is it a packager bundle?", EXIT_USAGE
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Refused(f"{path} is not valid JSON ({exc})", EXIT_USAGE) from None


def open_runtime(bundle: Path, kind: str = "main") -> tuple[Any, dict[str, Any]]:
    """The bundle's runtime, loaded; a missing runtime library or precision exits 3."""
    config = read_json(bundle / "runtime.json")
    module = import_runtime(bundle)
    try:
        runtime = module.open_runtime(bundle, config["runner_options"], kind)
        runtime.load()
    except (module.Unavailable, ImportError) as exc:
        raise Refused(f"this host cannot run the bundle: {exc}", EXIT_UNAVAILABLE) from None
    return runtime, config


def probabilities(scores: np.ndarray, kind: str) -> np.ndarray:
    """(N, C) logits or probabilities -> float64 probabilities."""
    s = np.asarray(scores, np.float64).reshape(len(scores), -1)
    if kind == "probabilities":
        return s
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def batches(
    x: np.ndarray, batch_size: int, fixed_batch: int | None
) -> Iterator[tuple[np.ndarray, int]]:
    """`x` in batches, each with its count of real rows; a fixed-batch model gets its own batch
    size, the last one padded by repeating its final row."""
    bs = fixed_batch or batch_size
    for i in range(0, len(x), bs):
        chunk = x[i : i + bs]
        n = len(chunk)
        if fixed_batch and n < fixed_batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed_batch - n, axis=0)])
        yield chunk, n


def infer_all(runtime: Any, x: np.ndarray, batch_size: int, fixed_batch: int | None) -> np.ndarray:
    """Scores for every row of `x` in batches (see `batches`)."""
    out = [
        np.asarray(runtime.infer(chunk)).reshape(len(chunk), -1)[:n]
        for chunk, n in batches(x, batch_size, fixed_batch)
    ]
    return np.concatenate(out).astype(np.float32)


def classify(paths: list[str], kind: str = "main") -> int:
    from preprocess import Preprocess

    runtime, config = open_runtime(HERE, kind)
    pre = Preprocess.from_json(HERE / "preprocess.json")
    labels, positive = config["labels"], config["positive"]
    pos = labels.index(positive)
    try:
        for path in paths:
            try:
                image = pre.load(path)  # DICOM too, with the validated window
            except (OSError, ValueError) as exc:
                raise Refused(f"{path}: not a readable image ({exc})", EXIT_USAGE) from None
            scores = infer_all(runtime, pre(image[None]), 1, config["fixed_batch"])
            p = probabilities(scores, config["output"])[0]
            decision = positive if p[pos] >= config["threshold"] else "not " + positive
            print(
                json.dumps(
                    {
                        "image": path,
                        "probabilities": dict(zip(labels, map(float, p), strict=True)),
                        "decision": decision,
                        "threshold": config["threshold"],
                    }
                )
            )
    finally:
        runtime.close()
    return EXIT_OK


def formats_read() -> str:
    """The file formats preprocess.json declares, for --help."""
    try:
        formats = json.loads((HERE / "preprocess.json").read_text())["formats"]
    except (OSError, ValueError, KeyError, TypeError):
        return "the formats preprocess.json lists (unreadable here)"
    return ", ".join(str(f).upper() for f in formats)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "images",
        nargs="*",
        help=f"image files to classify: this bundle reads {formats_read()} (preprocess.json "
        "formats, each replayed by --self-test); other formats are refused",
    )
    parser.add_argument("--self-test", action="store_true", help="replay the golden set here")
    parser.add_argument("--record", type=Path, help="acceptance record path (self-test)")
    parser.add_argument(
        "--kind",
        default="main",
        help="runtime kind (the build's proxy where the target's own "
        "runtime cannot run); default: the bundle's runtime",
    )
    args = parser.parse_args(argv)
    try:
        if args.self_test:
            from selftest import self_test

            return self_test(HERE, args.record, args.kind)
        if not args.images:
            print(__doc__, file=sys.stderr)
            return EXIT_USAGE
        return classify(args.images, args.kind)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
