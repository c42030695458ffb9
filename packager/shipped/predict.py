#!/usr/bin/env python3
"""Classify chest images with this bundle, or prove on arrival that this host reproduces the outputs
the bundle was validated with.

    python predict.py IMAGE [IMAGE ...]             # one JSON line per image
    python predict.py --self-test [--record PATH]    # golden set on this host + acceptance record

The self-test is this bundle's code checking itself: its line and record state what the verdict
rests on (the manifest sha256, to compare with the one the release published). For a check
independent of the bundle's code, run `packager selftest BUNDLE --pubkey KEY.pub` first.

runtime.py (load, infer), preprocess.py + preprocess.json are the exact code and parameters that
produced this bundle's validation numbers (report.json records their sha256); runtime.json holds
the threshold, labels and pinned precision. Needs only what requirements.txt lists.

Exit codes: 0 ok · 1 the self-test rejected the bundle (a file or outputs differ) · 2 bad usage ·
or input · 3 this host lacks the runtime, or cannot run it at the precision the bundle was
validated at.
"""

import sys

# Python put this script's folder first on sys.path, so any file dropped beside predict.py
# (numpy.py, argparse.py, ...) would shadow the standard library and installed packages and run
# on import. It goes before the first import; the bundle's own modules are loaded by path below.
# (No `from __future__` here: that statement is itself an import from the script's folder.)
if __name__ == "__main__" and not (getattr(sys.flags, "safe_path", 0) or sys.flags.isolated):
    del sys.path[0]
# Importing the bundle's modules would write __pycache__/ into the bundle, which its own
# manifest check then reports as an added file: a bundle is read, never written.
sys.dont_write_bytecode = True

import argparse  # noqa: E402 - after the line above, on purpose
import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class Refused(Exception):
    """A one-line refusal with its exit code (no traceback: the message names the fix)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# Shipped modules a runtime.py imports by bare name (`from ort_session import OrtSession`).
RUNTIME_SIBLINGS = ("ort_session",)


def load_module(
    folder: Path, name: str, siblings: dict[str, ModuleType] | None = None
) -> ModuleType:
    """`folder/name.py`, executed under a private module name. The folder never goes on
    sys.path, so nothing else in it is ever imported: the only bare names the module can import
    from the bundle are those in `siblings` (modules already loaded by path), bound while it
    executes."""
    path = folder / f"{name}.py"
    if not path.is_file():
        raise Refused(f"{folder} has no {name}.py; is it a packager bundle?", EXIT_USAGE)
    tag = hashlib.sha256(str(folder.resolve()).encode(errors="replace")).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(f"_packager_bundle_{tag}_{name}", path)
    if spec is None or spec.loader is None:
        raise Refused(f"cannot import {path}", EXIT_USAGE)
    module = importlib.util.module_from_spec(spec)
    siblings = siblings or {}
    saved = {n: sys.modules.get(n) for n in siblings}
    sys.modules[spec.name] = module  # dataclasses look their module up there
    sys.modules.update(siblings)
    writes, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in bundles
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    finally:
        sys.dont_write_bytecode = writes
        for n, before in saved.items():
            if before is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = before
    return module


def import_runtime(code: Path) -> ModuleType:
    """`code/runtime.py`, with the shipped siblings it imports (ort_session.py) from the same
    folder, each loaded by path (see `load_module`)."""
    if not (code / "runtime.py").is_file():
        raise Refused(f"{code} has no runtime.py; is it a packager bundle?", EXIT_USAGE)
    siblings = {n: load_module(code, n) for n in RUNTIME_SIBLINGS if (code / f"{n}.py").is_file()}
    return load_module(code, "runtime", siblings)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from the bundle; anything else is a one-line refusal (exit 2)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise Refused(
            f"{path.parent} has no {path.name}; is it a packager bundle?", EXIT_USAGE
        ) from None
    except (ValueError, RecursionError) as exc:  # also not UTF-8, or nested past the parser
        raise Refused(f"{path} is not valid JSON ({type(exc).__name__})", EXIT_USAGE) from None
    if not isinstance(data, dict):
        raise Refused(f"{path} is not a JSON object; is it a packager bundle?", EXIT_USAGE)
    return data


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
    """(N, C) scores -> float64 probabilities: as they are, a softmax over the classes of
    "logits", or a sigmoid of each of "sigmoid-logits" (a multi-label model's findings)."""
    s = np.asarray(scores, np.float64).reshape(len(scores), -1)
    if kind == "probabilities":
        return s
    if kind == "sigmoid-logits":
        with np.errstate(over="ignore"):  # exp overflow is a probability of 0, as it should be
            return 1.0 / (1.0 + np.exp(-s))
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


def decide(p: np.ndarray, config: dict[str, Any]) -> dict[str, Any]:
    """One image's decision at runtime.json's threshold: the positive class or not, or for a
    multi-label model the findings present (each at its own threshold)."""
    labels = config["labels"]
    if config.get("task") == "multilabel":
        each = config["thresholds"]
        present = [n for i, n in enumerate(labels) if p[i] >= each[n]]
        return {"findings": present, "thresholds": each}
    positive = config["positive"]
    decision = positive if p[labels.index(positive)] >= config["threshold"] else "not " + positive
    return {"decision": decision, "threshold": config["threshold"]}


def classify(paths: list[str], kind: str = "main") -> int:
    pre = load_module(HERE, "preprocess").Preprocess.from_json(HERE / "preprocess.json")
    runtime, config = open_runtime(HERE, kind)
    labels = config["labels"]
    try:
        for path in paths:
            try:
                image = pre.load(path)  # DICOM too, with the validated window
            except (OSError, ValueError) as exc:
                raise Refused(f"{path}: not a readable image ({exc})", EXIT_USAGE) from None
            scores = infer_all(runtime, pre(image[None]), 1, config["fixed_batch"])
            p = probabilities(scores, config["output"])[0]
            line = {"image": path, "probabilities": dict(zip(labels, map(float, p), strict=True))}
            print(json.dumps(line | decide(p, config)))
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
            siblings = {
                "predict": sys.modules[__name__],
                "integrity": load_module(HERE, "integrity"),
            }
            return load_module(HERE, "selftest", siblings).self_test(HERE, args.record, args.kind)
        if not args.images:
            print(__doc__, file=sys.stderr)
            return EXIT_USAGE
        return classify(args.images, args.kind)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
