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
    open_runtime,
    probabilities,
    read_json,
)

SCHEMA_VERSION = 1
GOLDEN, GOLDEN_META = "selftest.npz", "selftest.json"
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


def replay(bundle: Path, runtime: Any, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The golden inputs on this host: probabilities within the recorded tolerance, and the
    same decision for every case farther than the tolerance from the threshold."""
    meta = read_json(bundle / GOLDEN_META)
    with np.load(bundle / GOLDEN, allow_pickle=False) as g:
        x, golden, kinds = g["x"], g["probs"], g["kinds"]
    scores = infer_all(runtime, x, meta["batch_size"], config["fixed_batch"])
    got = probabilities(scores, config["output"])
    tol, thr, pos = meta["tolerance"], config["threshold"], meta["positive_index"]
    diff = np.abs(got - golden).max(axis=1)
    worst = int(np.argmax(diff))
    failing = np.flatnonzero(diff > tol)
    decided = np.abs(golden[:, pos] - thr) > tol  # cases the tolerance cannot carry across
    flips = np.flatnonzero(decided & ((got[:, pos] >= thr) != (golden[:, pos] >= thr)))
    return [
        {
            "name": "probabilities",
            "status": "failed" if len(failing) else "passed",
            "cases": len(x),
            "failing": len(failing),
            "failing_cases": [int(i) for i in failing],
            "tolerance": tol,
            "max_abs_diff": float(diff[worst]),
            "worst": {
                "case": worst,
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
        p = checks["probabilities"]
        return (
            f"self-test passed: {p['cases']} golden cases, max |dp| {p['max_abs_diff']:.2e} "
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
    p, d = checks["probabilities"], checks["decisions"]
    w = p["worst"]
    return (
        f"self-test FAILED: {p['failing']} of {p['cases']} cases differ beyond the tolerance "
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
