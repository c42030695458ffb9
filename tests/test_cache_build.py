"""The build cache through real builds (issue 29): unchanged inputs are up to date, a changed
gate re-validates on the cached conversion, a corrupt entry is rebuilt, and concurrent builds
share one cache. Each test uses its own empty cache (tests/conftest.py own_build_cache)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Result

TARGET = "cpu-onnxruntime"
BUNDLE = Path("dist/tiny-1.0.0") / TARGET


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def report(root: Path) -> dict:
    return json.loads((root / BUNDLE / "report.json").read_text())


def entries(kind: str) -> list[Path]:
    """The cache's entries of `kind`, read off the folder layout (not through packager)."""
    base = Path(os.environ["PACKAGER_CACHE"]) / kind
    return (
        sorted(p for p in base.iterdir() if (p / "index.json").is_file()) if base.exists() else []
    )


def build(cli, root: Path, *extra: str) -> Result:
    r = cli("build", "-t", TARGET, "--no-bench", "--json", *extra, cwd=root)
    assert r.code == 0, r.stderr
    return r


def test_one_project_rebuilt_through_the_cache(project, cli) -> None:
    """One project's builds in turn (each step starts from the last one's cache): unchanged
    inputs, --force, a changed gate, --no-cache, a corrupt entry, a changed model card."""
    root = project()
    first = build(cli, root)
    model = sha(root / BUNDLE / "model.onnx")
    clinical = report(root)["clinical"]
    assert len(entries("conversion")) == 1 and len(entries("validation")) == 1
    assert "reused" not in json.dumps(report(root)["steps"])

    # the same inputs: up to date, nothing rebuilt
    again = build(cli, root)
    assert again.json["results"][0]["reason"] == "up to date"
    assert again.json["results"][0]["status"] == first.json["results"][0]["status"]

    # --force with the same inputs: conversion and validation both come from the cache, and the
    # numbers are the first build's
    build(cli, root, "--force")
    r = report(root)
    assert "reused from" in r["steps"][0]["reason"]
    assert any(n.startswith("Validation reused from cache") for n in r["notes"])
    assert r["clinical"] == clinical and sha(root / BUNDLE / "model.onnx") == model

    # one gate changed: re-validated on the cached conversion (a second validation entry)
    with (root / "packager.toml").open("a") as f:
        f.write("\n[gates]\nmin_specificity = 0.0\n")
    build(cli, root, "--force")
    r = report(root)
    assert "reused from" in r["steps"][0]["reason"]
    assert not any(n.startswith("Validation reused") for n in r["notes"])
    assert any(c["name"] == "min_specificity" for c in r["gates"]["checks"])
    assert len(entries("conversion")) == 1 and len(entries("validation")) == 2
    assert r["clinical"]["sensitivity"] == clinical["sensitivity"]

    # --no-cache: neither reused nor stored
    build(cli, root, "--force", "--no-cache")
    assert "reused" not in report(root)["steps"][0]["reason"]
    assert len(entries("conversion")) == 1

    # a corrupt entry is a miss and rebuilt
    [entry] = entries("conversion")
    stored = entry / "files" / "model.onnx"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    r = build(cli, root, "--force")
    assert "corrupt" in r.stderr and entry.name in r.stderr
    assert "reused" not in report(root)["steps"][0]["reason"]  # converted again
    assert sha(root / BUNDLE / "model.onnx") == model  # never the corrupt bytes
    [again] = entries("conversion")
    index = json.loads((again / "index.json").read_text())
    for name, f in index["files"].items():  # the rebuilt entry is whole again
        assert hashlib.sha256((again / "files" / name).read_bytes()).hexdigest() == f["sha256"]

    # Only measurements come from the cache: a changed [model.card] (no input of validation)
    # reuses the validation, and the report carries the new card, not the cached one.
    with (root / "packager.toml").open("a") as f:
        f.write('\n[model.card]\nintended_use = "second reader only"\n')
    build(cli, root, "--force")
    r = report(root)
    assert any(n.startswith("Validation reused from cache") for n in r["notes"])
    assert r["model"]["card"]["intended_use"] == "second reader only"


def test_two_concurrent_builds_share_the_cache(project, tmp_path: Path) -> None:
    root = project()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "packager.cli",
                "build",
                "-t",
                TARGET,
                "--no-bench",
                "--out",
                str(tmp_path / f"out{i}"),
            ],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    models = {sha(tmp_path / f"out{i}" / "tiny-1.0.0" / TARGET / "model.onnx") for i in range(2)}
    assert len(models) == 1
    [entry] = entries("conversion")
    index = json.loads((entry / "index.json").read_text())
    for name, f in index["files"].items():
        assert hashlib.sha256((entry / "files" / name).read_bytes()).hexdigest() == f["sha256"]
    leftovers = [
        p.name for p in Path(os.environ["PACKAGER_CACHE"]).iterdir() if p.name.startswith(".tmp-")
    ]
    assert leftovers == []


def bench_build(cli, root: Path, *extra: str) -> dict:
    r = cli("build", "-t", TARGET, "--json", "--force", *extra, cwd=root)
    assert r.code == 0, r.stderr
    return report(root)


def test_a_benchmark_is_reused_for_the_same_bundle_and_settings(project, cli) -> None:
    """A changed gate re-validates but reuses the benchmark of the same files and [bench]
    (reuse = "always": this busy test host never gives a quiet one); "never" measures again."""
    root = project('reuse = "always"\n')  # DEFAULT_TOML ends inside [bench]
    first = bench_build(cli, root)["benchmark"]
    assert first["status"] == "ok" and first.get("reused") is None
    assert len(entries("benchmark")) == 1
    profile = sha(root / BUNDLE / "profile.json")

    with (root / "packager.toml").open("a") as f:
        f.write("\n[gates]\nmin_specificity = 0.0\n")
    r = bench_build(cli, root)
    assert not any(n.startswith("Validation reused") for n in r["notes"])  # re-validated
    bench = r["benchmark"]
    [entry] = entries("benchmark")
    assert bench["reused"].startswith(f"cache {entry.name}, measured ")
    # the very measurements of the first build, the profile's raw file with them
    assert bench["batches"] == first["batches"] and bench["host_state"] == first["host_state"]
    assert sha(root / BUNDLE / "profile.json") == profile
    step = next(s for s in r["steps"] if s["name"] == "benchmark")
    assert step["reason"].startswith("reused from cache")
    assert "reused from the build cache" in (root / BUNDLE / "report.html").read_text()

    text = (root / "packager.toml").read_text().replace('reuse = "always"', 'reuse = "never"')
    (root / "packager.toml").write_text(text)
    again = bench_build(cli, root)["benchmark"]
    assert again.get("reused") is None and again["batches"] != first["batches"]
    assert len(entries("benchmark")) == 1  # "never" stores nothing either
