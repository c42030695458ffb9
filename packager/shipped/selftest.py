"""Arrival self-test: check every file against manifest.json, replay the golden set recorded at
build time on this host's runtime, and write an acceptance record. Shipped verbatim; standard
library and numpy only (plus the bundle's own runtime.py). Run it as
`python predict.py --self-test` or `packager selftest BUNDLE`."""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from predict import (
    EXIT_MISMATCH,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Refused,
    infer_all,
    open_runtime,
    probabilities,
    read_json,
)

SCHEMA_VERSION = 1
GOLDEN, GOLDEN_META = "selftest.npz", "selftest.json"
# The raw image files in selftest.npz: their bytes end to end, where each ends, file name, case
# kind and golden probabilities. They go through the bundle's preprocess.py like any image.
RAW = ("raw_bytes", "raw_ends", "raw_names", "raw_kinds", "raw_probs")
# Written after the manifest, so it cannot list them.
UNLISTED = {"manifest.json", "manifest.sig", "model.sig"}
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "neon",
    "asimd",
)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def cpu_model_and_flags() -> tuple[str, frozenset[str]]:
    """CPU name and ISA flags: /proc/cpuinfo on Linux, sysctl on macOS."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        if sys.platform == "darwin":
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True
            )
            model = out.stdout.strip() or model
    return model, frozenset(flags)


def host_fingerprint(runtime_info: dict[str, Any] | None) -> dict[str, Any]:
    model, flags = cpu_model_and_flags()
    info = runtime_info or {}
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "runtime": {k: info.get(k) for k in ("runtime", "version", "device")},
        "gpu": info.get("gpu"),
    }


def check_manifest(bundle: Path) -> dict[str, Any]:
    """Every file listed with its sha256, nothing missing, nothing added."""
    listed = read_json(bundle / "manifest.json").get("files", {})
    actual = {
        p.relative_to(bundle).as_posix(): p
        for p in sorted(bundle.rglob("*"))
        if p.is_file() and p.relative_to(bundle).as_posix() not in UNLISTED
    }
    problems = [f"missing: {rel}" for rel in sorted(set(listed) - set(actual))]
    problems += [
        f"changed: {rel}"
        for rel, meta in sorted(listed.items())
        if rel in actual and file_sha256(actual[rel]) != meta.get("sha256")
    ]
    problems += [f"added: {rel}" for rel in sorted(set(actual) - set(listed))]
    return {
        "name": "manifest",
        "status": "failed" if problems else "passed",
        "files": len(listed),
        "problems": problems,
    }


def shipped_preprocess(bundle: Path) -> Any:
    """The bundle's preprocess.py, loaded by file path under a private name, with its
    preprocess.json: exactly what `predict.py IMAGE` classifies with."""
    path = bundle / "preprocess.py"
    spec = importlib.util.spec_from_file_location("_bundle_preprocess", path)
    if spec is None or spec.loader is None:
        raise Refused(f"cannot import {path}", EXIT_USAGE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module.Preprocess.from_json(bundle / "preprocess.json")


def raw_files(data: np.ndarray, ends: np.ndarray) -> list[bytes]:
    """The files stored end to end in `data` (uint8), split at `ends`."""
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    return [data[a:b].tobytes() for a, b in zip(starts, ends, strict=True)]


def decode_raw(
    pre: Any, names: np.ndarray, files: list[bytes]
) -> tuple[list[np.ndarray | None], list[str]]:
    """Each file through pre.load and pre(): the model input (1, ...), or None and the reason."""
    tensors: list[np.ndarray | None] = []
    errors: list[str] = []
    for name, data in zip(names, files, strict=True):
        try:
            tensors.append(pre(pre.load(str(name), data)[None]))
            errors.append("")
        except (OSError, ValueError) as exc:  # the preprocessing's ImageError is a ValueError
            tensors.append(None)
            errors.append(" ".join(str(exc).split())[:300])
    return tensors, errors


def replay(bundle: Path, runtime: Any, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The golden set on this host: the raw image files through the shipped preprocessing, then
    every input through the runtime. Probabilities within the recorded tolerance, and, for every
    case farther than the tolerance from the threshold it was recorded at, the decision at
    runtime.json's threshold equal to the recorded one."""
    meta = read_json(bundle / GOLDEN_META)
    with np.load(bundle / GOLDEN, allow_pickle=False) as g:
        if not set(RAW) <= set(g.files):
            raise Refused(f"{GOLDEN} has no raw image cases; rebuild the bundle", EXIT_USAGE)
        x, golden, kinds = g["x"], g["probs"], g["kinds"]
        raw = {k: g[k] for k in RAW}
    n = len(raw["raw_names"])
    ends = raw["raw_ends"]
    if not (
        len(golden) == len(kinds) == len(x)
        and len(raw["raw_kinds"]) == len(raw["raw_probs"]) == len(ends) == n
        and (np.diff(ends, prepend=0) >= 0).all()
        and (n == 0 or ends[-1] == len(raw["raw_bytes"]))
    ):
        raise Refused(f"{GOLDEN}: its arrays do not fit together; rebuild the bundle", EXIT_USAGE)
    pre = shipped_preprocess(bundle)
    tensors, errors = decode_raw(
        pre, raw["raw_names"], raw_files(raw["raw_bytes"], raw["raw_ends"])
    )
    readable = [j for j, t in enumerate(tensors) if t is not None]
    rows = np.concatenate([np.arange(len(x)), len(x) + np.array(readable, np.int64)])
    inputs = np.concatenate([x, *(tensors[j] for j in readable)]).astype(x.dtype)
    golden = np.concatenate([golden, raw["raw_probs"]])[rows]
    kinds = np.concatenate([kinds, raw["raw_kinds"]])[rows]
    scores = infer_all(runtime, inputs, meta["batch_size"], config["fixed_batch"])
    got = probabilities(scores, config["output"])
    tol, pos = meta["tolerance"], meta["positive_index"]
    recorded, thr = meta["threshold"], config["threshold"]
    diff = np.abs(got - golden).max(axis=1)
    worst = int(np.argmax(diff))
    failing = rows[diff > tol]
    decided = np.abs(golden[:, pos] - recorded) > tol  # cases the tolerance cannot carry across
    flips = rows[decided & ((got[:, pos] >= thr) != (golden[:, pos] >= recorded))]
    unreadable = [
        {"case": len(x) + j, "kind": str(raw["raw_kinds"][j]), "error": e}
        for j, e in enumerate(errors)
        if e
    ]
    return [
        {
            "name": "preprocessing",
            "status": "failed" if unreadable else "passed",
            "cases": len(tensors),
            "formats": list(pre.formats),
            "unreadable": unreadable,
        },
        {
            "name": "probabilities",
            "status": "failed" if len(failing) else "passed",
            "cases": len(rows),
            "failing": len(failing),
            "failing_cases": [int(i) for i in failing],
            "tolerance": tol,
            "max_abs_diff": float(diff[worst]),
            "worst": {
                "case": int(rows[worst]),
                "kind": str(kinds[worst]),
                "golden": float(golden[worst, pos]),
                "got": float(got[worst, pos]),
            },
        },
        {
            "name": "decisions",
            "status": "failed" if len(flips) else "passed",
            "cases": int(decided.sum()),
            "within_tolerance_of_threshold": int((~decided).sum()),
            "differing_cases": [int(i) for i in flips],
        },
    ]


def _summary(record: dict[str, Any]) -> str:
    checks = {c["name"]: c for c in record["checks"]}
    if record["verdict"] == "accepted":
        p, r = checks["probabilities"], checks["preprocessing"]
        return (
            f"self-test passed: {p['cases']} golden cases ({r['cases']} image files through "
            f"preprocess.py: {', '.join(r['formats'])}), max |dp| {p['max_abs_diff']:.2e} "
            f"(tolerance {p['tolerance']:.1e}), decisions identical"
        )
    if checks["manifest"]["status"] == "failed":
        return "self-test FAILED: the bundle differs from its manifest: " + ", ".join(
            checks["manifest"]["problems"][:5]
        )
    if record["verdict"] == "not-run":
        return f"self-test not run: {checks['runtime']['reason']}"
    p, d, r = checks["probabilities"], checks["decisions"], checks["preprocessing"]
    w = p["worst"]
    unreadable = (
        f"{len(r['unreadable'])} of {r['cases']} image files unreadable through preprocess.py "
        f"({r['unreadable'][0]['kind']}: {r['unreadable'][0]['error']}); "
        if r["unreadable"]
        else ""
    )
    return (
        f"self-test FAILED: {unreadable}"
        f"{p['failing']} of {p['cases']} cases differ beyond the tolerance "
        f"{p['tolerance']:.1e} and {len(d['differing_cases'])} decisions differ; worst case "
        f"#{w['case']} ({w['kind']}): p = {w['got']:.6f} here, {w['golden']:.6f} when validated "
        f"(|dp| {p['max_abs_diff']:.2e})"
    )


def self_test(bundle: Path, record_path: Path | None = None, kind: str = "main") -> int:
    bundle = bundle.resolve()
    manifest = read_json(bundle / "manifest.json")
    if not (bundle / GOLDEN).is_file():
        raise Refused(f"{bundle} has no {GOLDEN}; rebuild it with packager build", EXIT_USAGE)
    checks = [check_manifest(bundle)]
    runtime_info, code = None, EXIT_OK
    if checks[0]["status"] == "failed":
        code = EXIT_MISMATCH
    else:
        try:
            runtime, config = open_runtime(bundle, kind)
        except Refused as exc:
            if exc.code != EXIT_UNAVAILABLE:
                raise
            checks.append({"name": "runtime", "status": "not-run", "reason": str(exc)})
            code = EXIT_UNAVAILABLE
        else:
            try:
                runtime_info = runtime.info()
                checks.append({"name": "runtime", "status": "passed", "kind": kind})
                checks += replay(bundle, runtime, config)
            finally:
                runtime.close()
            if any(c["status"] == "failed" for c in checks):
                code = EXIT_MISMATCH
    verdict = {EXIT_OK: "accepted", EXIT_MISMATCH: "rejected"}.get(code, "not-run")
    record = {
        "schema_version": SCHEMA_VERSION,
        "record": "packager acceptance",
        "bundle": {
            "name": manifest.get("name"),
            "version": manifest.get("version"),
            "target": manifest.get("target"),
            "precision": manifest.get("precision"),
            "manifest_sha256": file_sha256(bundle / "manifest.json"),
        },
        "host": host_fingerprint(runtime_info),
        "runtime": runtime_info,
        "checks": checks,
        "verdict": verdict,
        "checked_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = record_path or bundle.with_name(bundle.name + ".acceptance.json")
    try:
        path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise Refused(
            f"cannot write the acceptance record {path} ({exc}); pass --record PATH", EXIT_USAGE
        ) from None
    print(_summary(record) + f"; record: {path}")
    return code
