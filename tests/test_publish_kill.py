"""Publishing is one atomic step: a build SIGKILLed at every step boundary of publish() leaves
wholly the old bundle or wholly the new one, folder and tarball alike."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from packager.builder.bundle import PUBLISH_STEPS
from tests.conftest import DEFAULT_TOML, copy_project

TARGET = "cpu-onnxruntime"
OLD, NEW = 0.2, 0.25  # thresholds: the two builds differ in runtime.json and every report


def _build(root: Path, threshold: float, env: dict[str, str] | None = None) -> int:
    text = (root / "packager.toml").read_text().split("[labels]")[0]
    rest = DEFAULT_TOML.split("[labels]")[1].replace("threshold = 0.2", f"threshold = {threshold}")
    (root / "packager.toml").write_text(text + "[labels]" + rest)
    proc = subprocess.run(
        [sys.executable, "-m", "packager.cli", "build", "-t", TARGET, "--no-bench", "--force"],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    return proc.returncode


@pytest.fixture(scope="module")
def old_dist(reference_project: Path) -> Path:
    """The old release: DEFAULT_TOML (threshold OLD) built without benchmarks, published (the
    session's reference_project, read-only: each test copies it)."""
    assert f"threshold = {OLD}\n" in (reference_project / "packager.toml").read_text()
    return reference_project


def _published_threshold(root: Path) -> float:
    """The threshold of what is published, after checking folder and tarball are one bundle."""
    bundle_root = root / "dist" / "tiny-1.0.0"
    folder, tar = bundle_root / TARGET, bundle_root / f"{TARGET}.tar.gz"
    assert folder.is_dir() and tar.is_file()
    from packager.builder.verify import verify

    assert verify(folder).ok
    with tarfile.open(tar) as t:
        member = t.extractfile(f"{TARGET}/manifest.json")
        assert member is not None
        in_tar = member.read()
    assert in_tar == (folder / "manifest.json").read_bytes()  # the same build
    return json.loads((folder / "runtime.json").read_text())["threshold"]


@pytest.mark.parametrize("step", PUBLISH_STEPS)
def test_sigkill_at_every_publish_step(old_dist: Path, step: str, tmp_path: Path) -> None:
    root = copy_project(old_dist, tmp_path / "project")
    mark = tmp_path / "reached"
    code = _build(root, NEW, {"PACKAGER_KILL_AT": step, "PACKAGER_KILL_MARK": str(mark)})
    assert code == -signal.SIGKILL, code
    assert mark.read_text() == step  # the boundary was really reached
    swapped = PUBLISH_STEPS.index(step) >= PUBLISH_STEPS.index("swapped")
    assert _published_threshold(root) == (NEW if swapped else OLD)
    # The next build publishes normally and clears what the killed one left behind.
    assert _build(root, NEW) == 0
    assert _published_threshold(root) == NEW
    generations = root / "dist/tiny-1.0.0/.generations" / TARGET
    assert sorted(p.name for p in generations.iterdir() if not p.is_symlink()) == [
        os.readlink(generations / "current")
    ]
    assert not any((root / "dist/.staging").iterdir())
