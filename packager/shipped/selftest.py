"""Arrival self-test: check every file against manifest.json, replay the golden set recorded at
build time on this host's runtime, and write an acceptance record. Shipped verbatim; standard
library and numpy only (plus the bundle's own runtime.py). Run it as
`python predict.py --self-test` or `packager selftest BUNDLE`.

Run from the bundle, this is the bundle's code checking itself: a bundle whose code was replaced
can claim anything. The record says so (`integrity`): its basis is the manifest's sha256, to be
compared with the one the release published, unless packager checked the bundle first with its
own code (`packager selftest --pubkey KEY`: the signature)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from integrity import check, file_sha256
from predict import (
    EXIT_MISMATCH,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Refused,
    infer_all,
    load_module,
    open_runtime,
    probabilities,
    read_json,
)

SCHEMA_VERSION = 1
GOLDEN, GOLDEN_META = "selftest.npz", "selftest.json"
# The raw image files in selftest.npz: their bytes end to end, where each ends, file name, case
# kind and golden probabilities. They go through the bundle's preprocess.py like any image.
RAW = ("raw_bytes", "raw_ends", "raw_names", "raw_kinds", "raw_probs")
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


def check_manifest(bundle: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the manifest, or {} when unreadable; the check: every file listed with its sha256,
    nothing missing, nothing added: integrity.check)."""
    manifest, problems = check(bundle)
    return manifest, {
        "name": "manifest",
        "status": "failed" if problems else "passed",
        "files": len(manifest.get("files", {})),
        "problems": problems,
    }


def shipped_preprocess(bundle: Path) -> Any:
    """The bundle's preprocess.py, loaded by file path under a private name, with its
    preprocess.json: exactly what `predict.py IMAGE` classifies with."""
    return load_module(bundle, "preprocess").Preprocess.from_json(bundle / "preprocess.json")


def raw_files(data: np.ndarray, ends: np.ndarray) -> list[bytes]:
    """The files stored end to end in `data` (uint8), split at `ends`."""
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)[: len(ends)]
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


def integrity_basis(
    manifest_sha256: str | None, fingerprint: str | None = None, checked_by: str = "bundle"
) -> dict[str, Any]:
    """What the verdict rests on: a signature checked with a key, the manifest's sha256 (worth
    only as much as its comparison with the published one), or nothing (`unverified`)."""
    if fingerprint is not None:
        basis, statement = "signature", f"signature verified (key fingerprint {fingerprint})"
    elif manifest_sha256 is not None:
        basis = "manifest"
        statement = f"manifest sha256 {manifest_sha256}, compare with the release notes"
    else:
        basis, statement = "unverified", "unverified"
    return {"basis": basis, "statement": statement, "checked_by": checked_by}


def operating_points(
    meta: dict[str, Any], config: dict[str, Any]
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(the output columns decided on, their thresholds when the golden set was recorded, their
    thresholds in runtime.json now): the positive class, or every finding of a multi-label
    model, each at its own threshold."""
    multilabel = config.get("task") == "multilabel"
    if multilabel != ("thresholds" in meta) or multilabel == isinstance(
        meta.get("positive_index"), int
    ):
        raise Refused(
            "runtime.json and selftest.json disagree on whether the model is multi-label; "
            "rebuild the bundle",
            EXIT_USAGE,
        )
    if multilabel:
        names = list(config["labels"])
        recorded, now = meta.get("thresholds") or {}, config.get("thresholds") or {}
        if set(recorded) != set(names) or set(now) != set(names):
            raise Refused(
                "selftest.json and runtime.json must give a threshold for every finding; "
                "rebuild the bundle",
                EXIT_USAGE,
            )
        return (
            list(range(len(names))),
            np.array([recorded[n] for n in names], np.float64),
            np.array([now[n] for n in names], np.float64),
        )
    return (
        [meta["positive_index"]],
        np.array([meta["threshold"]], np.float64),
        np.array([config["threshold"]], np.float64),
    )


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
    if n == 0:  # the preprocessing would go untested: never a pass
        raise Refused(f"{GOLDEN} holds no raw image files; rebuild the bundle", EXIT_USAGE)
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
    tol = meta["tolerance"]
    cols, recorded, thr = operating_points(meta, config)
    diff = np.abs(got - golden).max(axis=1)
    worst = int(np.argmax(diff))
    failing = rows[diff > tol]
    # per decision (one, or one per finding): cases the tolerance cannot carry across
    decided = np.abs(golden[:, cols] - recorded) > tol
    flips = rows[(decided & ((got[:, cols] >= thr) != (golden[:, cols] >= recorded))).any(axis=1)]
    pos = cols[int(np.argmax(np.abs(got[worst, cols] - golden[worst, cols])))]
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
    if "integrity" in checks and checks["integrity"]["status"] == "failed":
        return "self-test FAILED: packager's check failed, so no bundle code ran: " + ", ".join(
            checks["integrity"]["problems"][:5]
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


def summary_line(record: dict[str, Any], path: Path) -> str:
    """The one line a self-test prints: the verdict, what it rests on, where the record is."""
    integrity = record["integrity"]
    by = "the bundle's own code" if integrity["checked_by"] == "bundle" else "packager"
    return (
        f"{_summary(record)}; integrity: {integrity['statement']} (checked by {by}); record: {path}"
    )


def new_record(
    bundle: Path,
    manifest: dict[str, Any],
    checks: list[dict[str, Any]],
    integrity: dict[str, Any],
    runtime_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An acceptance record; its verdict follows its checks."""
    statuses = {c["status"] for c in checks}
    verdict = (
        "rejected" if "failed" in statuses else "not-run" if "not-run" in statuses else "accepted"
    )
    mpath = bundle / "manifest.json"
    return {
        "schema_version": SCHEMA_VERSION,
        "record": "packager acceptance",
        "bundle": {
            "name": manifest.get("name"),
            "version": manifest.get("version"),
            "target": manifest.get("target"),
            "precision": manifest.get("precision"),
            "manifest_sha256": file_sha256(mpath) if mpath.is_file() else None,
        },
        "host": host_fingerprint(runtime_info),
        "runtime": runtime_info,
        "checks": checks,
        "verdict": verdict,
        "integrity": integrity,
        "checked_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_record(record: dict[str, Any], path: Path) -> None:
    try:
        path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise Refused(
            f"cannot write the acceptance record {path} ({exc}); pass --record PATH", EXIT_USAGE
        ) from None


def self_test(bundle: Path, record_path: Path | None = None, kind: str = "main") -> int:
    bundle = bundle.resolve()
    path = record_path or bundle.with_name(bundle.name + ".acceptance.json")
    manifest, first = check_manifest(bundle)  # first: a missing selftest.npz is a missing file
    checks = [first]
    runtime_info, code = None, EXIT_OK
    if first["status"] == "failed":
        code = EXIT_MISMATCH
    elif not (bundle / GOLDEN).is_file():  # and not listed: the manifest was rewritten without it
        raise Refused(f"{bundle} has no {GOLDEN}; rebuild it with packager build", EXIT_USAGE)
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
    sha = file_sha256(bundle / "manifest.json") if first["status"] == "passed" else None
    record = new_record(bundle, manifest, checks, integrity_basis(sha), runtime_info)
    write_record(record, path)
    print(summary_line(record, path))
    return code
