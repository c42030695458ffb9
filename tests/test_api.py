"""The Python API (packager.api, reached as packager.build etc.): the same bundles as the CLI,
typed results, and the CLI's one-line errors as typed exceptions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import packager
from packager.core.documents import Report
from packager.core.errors import GateFailed, UserError

TARGET = "cpu-onnxruntime"


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_api_and_cli_build_the_same_bundle(project, cli, tmp_path: Path) -> None:
    root = project()
    # no cache: a reused step is named in the report, and this compares two full builds
    r = cli("build", "-t", TARGET, "--no-bench", "--no-cache", "--out", tmp_path / "cli", cwd=root)
    assert r.code == 0, r.stderr
    results = packager.build(
        root / "packager.toml", targets=[TARGET], out=tmp_path / "api", bench=False, cache=False
    )
    results.raise_for_status()
    assert results.exit_code == 0
    [one] = results.results
    assert one.status == "passed" and Path(one.bundle).is_dir()
    report = results.reports()[TARGET]
    assert isinstance(report, Report) and report.status == "passed"
    by_cli = tree(tmp_path / "cli" / "tiny-1.0.0" / TARGET)
    by_api = tree(tmp_path / "api" / "tiny-1.0.0" / TARGET)
    assert by_api == by_cli  # byte for byte, every file

    # the same bundle checks out through the API too
    assert packager.verify(tmp_path / "api" / "tiny-1.0.0" / f"{TARGET}.tar.gz").ok
    record = packager.selftest(tmp_path / "api" / "tiny-1.0.0" / TARGET)
    assert record.verdict == "accepted"


def test_api_errors_are_the_cli_lines(project, cli, tmp_path: Path) -> None:
    root = project()
    with pytest.raises(UserError) as caught:
        packager.build(root / "packager.toml", targets=["cpu-openvno"], out=tmp_path)
    r = cli("build", "-t", "cpu-openvno", "--out", tmp_path, cwd=root)
    assert r.code == 2 and str(caught.value) in r.stderr
    toml = root / "packager.toml"
    toml.write_text(toml.read_text().replace("threshold = 0.2", "threshold = 0.95"))
    results = packager.build(toml, targets=[TARGET], out=tmp_path / "gate", bench=False)
    assert results.exit_code == 1
    with pytest.raises(GateFailed, match="min_sensitivity"):
        results.raise_for_status()
