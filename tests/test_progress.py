"""Progress modes (issue 29): plain lines with elapsed time and i/N where stderr is no terminal
(CI logs), GitHub Actions groups, counted steps, --quiet, and stdout kept clean for --json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from packager.core.progress import Progress

TARGET = "cpu-onnxruntime"


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {
        k: v for k, v in os.environ.items() if k not in ("PACKAGER_PROGRESS", "GITHUB_ACTIONS")
    }
    return subprocess.run(
        [sys.executable, "-m", "packager.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**environ, **env},
        timeout=600,
    )


def test_plain_is_the_default_off_a_terminal_with_groups_on_github(project) -> None:
    root = project()
    r = run(["build", "-t", TARGET, "--no-bench", "--json"], root, GITHUB_ACTIONS="true")
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)  # stdout holds the JSON document only
    lines = r.stderr.splitlines()
    steps = [ln for ln in lines if f"[{TARGET} 1/1] converting" in ln]
    assert len(steps) == 2 and steps[1].endswith("s") and "done in" in steps[1]
    assert all(re.match(r"\[ *\d+\.\ds\] ", ln) for ln in lines if not ln.startswith("::"))
    assert lines.count(f"::group::{TARGET} (1/1)") == 1 and lines.count("::endgroup::") == 1
    assert lines.index(f"::group::{TARGET} (1/1)") < lines.index(steps[0])

    # --quiet wins over $PACKAGER_PROGRESS; the up-to-date run is enough to show it
    quiet = run(["build", "-t", TARGET, "--no-bench", "--quiet"], root, PACKAGER_PROGRESS="plain")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_site_acceptance_counts_its_images(
    reference_bundle: Path, data_path: Path, tmp_path: Path
) -> None:
    import numpy as np

    r = run(
        [
            "validate",
            str(reference_bundle),
            "--data",
            str(data_path),
            "--split",
            "val",
            "--out",
            "site",
        ],
        tmp_path,
        PACKAGER_PROGRESS="plain",
    )
    assert r.returncode in (0, 1), r.stderr
    with np.load(data_path) as d:
        n = len(d["val_labels"])
    assert f": 0/{n} ..." in r.stderr and f": {n}/{n} done in" in r.stderr


def test_a_counted_step_prints_every_tenth(capsys: pytest.CaptureFixture[str]) -> None:
    p = Progress("plain")
    with p.counted("t", "images", 100) as advance:
        for done in range(1, 101):
            advance(done)
    lines = capsys.readouterr().err.splitlines()
    shown = [int(m.group(1)) for ln in lines if (m := re.search(r": (\d+)/100$", ln))]
    assert shown == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert lines[0].endswith("[t] images: 0/100 ...") and "100/100 done in" in lines[-1]
    with Progress("none").counted("t", "x", 5) as advance:
        advance(5)
    assert capsys.readouterr().err == ""


def test_rich_shows_the_steps_and_the_counts(capsys: pytest.CaptureFixture[str]) -> None:
    p = Progress("rich")  # forced: stderr is no terminal here
    with p.target("cpu-openvino", 2, 3), p.step("cpu-openvino", "converting"):
        pass
    with p.counted("cpu-openvino", "images", 4) as advance:
        advance(4)
    err = capsys.readouterr().err
    assert "[cpu-openvino 2/3] converting: done in" in err
    assert "[cpu-openvino] images: 4/4 done in" in err
