"""Reproducibility of every target this host builds: two `build --all --no-bench` runs from
different working directories, time zones and umasks give byte-identical tarballs; a different
SOURCE_DATE_EPOCH (honoured for the tarball's timestamps, README "Bundles") changes only those
timestamps."""

from __future__ import annotations

import json
import struct
import tarfile
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_DIST_ENV, Result, run_with

EPOCH = DEFAULT_DIST_ENV["epoch"]
# Targets whose rebuild is known to differ, with why; a strict list: once one rebuilds
# identically the test fails until it is removed here.
KNOWN = {
    "edge-ort": "model.ort differs between two identical builds (ONNX Runtime's ORT-format "
    "serialisation order), so the README's byte-identical claim does not hold for it yet",
}


def build(
    project: Path, out: Path, cwd: Path, tz: str, umask: int, epoch: int, *targets: str
) -> Result:
    which = [a for t in targets for a in ("--target", t)] or ["--all"]
    args = ["build", *which, "--no-bench", "--no-cache", "--json", "-q"]  # each from scratch
    return run_with(
        [*args, "--config", str(project / "packager.toml"), "--out", str(out)],
        cwd,
        tz,
        umask,
        epoch,
    )


def as_earlier(data: bytes, later: int) -> bytes:
    """`data` with the build time `later` written as EPOCH, in the forms a file may use."""
    from datetime import datetime, timezone

    for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S+00:00", "%Y-%m-%dT%H:%M:%S.000Z"):
        a, b = (datetime.fromtimestamp(t, timezone.utc).strftime(fmt) for t in (later, EPOCH))
        data = data.replace(a.encode(), b.encode())
    return data.replace(str(later).encode(), str(EPOCH).encode())


def sbom_without_time(data: bytes) -> dict:
    """The SBOM with the hashes of the files that record the build time (report.json and the
    reports rendered from it) left out, and the serial number derived from those hashes."""
    doc = json.loads(data)
    doc.pop("serialNumber")
    for comp in doc["components"]:
        if comp.get("name", "").startswith("report."):
            comp.pop("hashes")
    return doc


def members(tar_gz: Path) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(tar_gz, "r:gz") as t:
        return {m.name: (m, t.extractfile(m).read() if m.isfile() else b"") for m in t}


def differing(a: Path, b: Path) -> list[str]:
    """Names of the members whose metadata or content differ (for the failure message)."""
    ma, mb = members(a), members(b)
    out = sorted(set(ma) ^ set(mb))
    for name in sorted(set(ma) & set(mb)):
        (ia, da), (ib, db) = ma[name], mb[name]
        if da != db or ia.get_info() != ib.get_info():
            out.append(name)
    return out


def test_every_target_rebuilds_byte_identical_whatever_the_host_settings(
    default_dist: tuple[Path, Result],
) -> None:
    """The session's `build --all --no-bench` (UTC, umask 022, from its project folder) again
    from another folder, in another time zone, with umask 077: the same bytes."""
    first, a = default_dist
    assert a.code in (0, 1), a.stderr
    again = first / "rebuild"
    b = build(first, again, first / "elsewhere", "Pacific/Chatham", 0o077, EPOCH)
    assert b.code in (0, 1), b.stderr
    results = {r["target"]: r["status"] for r in json.loads(a.stdout)["results"]}
    assert results == {r["target"]: r["status"] for r in json.loads(b.stdout)["results"]}
    published = sorted(t for t, s in results.items() if s in ("passed", "not-validated"))
    assert len(published) >= 2, results
    differ = {}
    for target in published:
        ta = first / "dist" / "tiny-1.0.0" / f"{target}.tar.gz"
        tb = again / "tiny-1.0.0" / f"{target}.tar.gz"
        if ta.read_bytes() != tb.read_bytes():
            differ[target] = differing(ta, tb)
    assert {t: d for t, d in differ.items() if t not in KNOWN} == {}
    # A KNOWN target may also come out identical: edge-ort's serialisation order differs only
    # in some runs (seen both ways on one host), so a match proves no fix and fails nothing.
    if differ:
        pytest.xfail("; ".join(f"{t}: {KNOWN[t]} (differs: {differ[t]})" for t in differ))


def test_source_date_epoch_sets_only_the_timestamps(default_dist: tuple[Path, Result]) -> None:
    first, a = default_dist
    target = "cpu-onnxruntime"
    later = EPOCH + 86_400 * 365
    r = build(first, first / "later", first, "UTC", 0o022, later, target)
    assert r.code == 0, r.stderr
    t1 = first / "dist" / "tiny-1.0.0" / f"{target}.tar.gz"
    t2 = first / "later" / "tiny-1.0.0" / f"{target}.tar.gz"
    assert t1.read_bytes() != t2.read_bytes()
    m1, m2 = members(t1), members(t2)
    assert sorted(m1) == sorted(m2)
    for name, (info, data) in m2.items():
        assert m1[name][0].mtime == EPOCH and info.mtime == later, name  # SOURCE_DATE_EPOCH
        # The same bytes as the earlier build, once the build time is written as the earlier
        # one (the SBOM and report.json record it). The SBOM lists report.json/md/html's hashes,
        # and the manifest and the provenance list the SBOM's, so those differ as they do;
        # everything else must be identical.
        if name.endswith("/sbom.cdx.json"):
            assert sbom_without_time(as_earlier(data, later)) == sbom_without_time(m1[name][1])
        elif not name.endswith(("/manifest.json", ".intoto.json")):
            assert as_earlier(data, later) == m1[name][1], name
    assert struct.unpack("<I", t2.read_bytes()[4:8])[0] == later  # gzip header MTIME
