"""On CI (CI=true) a missing dataset stops the suite in one line naming where the data must
be; elsewhere the tests that need it skip with the same reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def pytest_run(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_needs_data.py"
    test.write_text("def test_needs_data(data_path):\n    assert data_path.is_file()\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env |= {"PACKAGER_TEST_DATA": str(tmp_path / "missing.npz"), "PYTHONPATH": str(REPO)}
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        # the project's conftest as a plugin, for a test file outside tests/
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "-p", "tests.conftest", str(test)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip


def test_missing_data_fails_on_ci_and_skips_elsewhere(tmp_path: Path) -> None:
    ci = pytest_run(tmp_path, ci=True)
    assert ci.returncode != 0, ci.stdout
    assert f"put pneumoniamnist.npz at {tmp_path / 'missing.npz'}" in ci.stdout + ci.stderr
    local = pytest_run(tmp_path, ci=False)
    assert local.returncode == 0, local.stdout + local.stderr
    assert "1 skipped" in local.stdout and "PneumoniaMNIST not found" in local.stdout
