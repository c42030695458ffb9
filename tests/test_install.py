"""What an install puts on a machine: one import name, `packager`, and no packager <-> targets
cycle (packager/ reaches targets only through the `packager.targets` entry points)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    # A copy: building writes build/ and *.egg-info into the source folder.
    src = out / "src"
    skip = (".*", "build", "dist", "*.egg-info", "test-artifacts", "__pycache__")
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*skip))
    # No build isolation: the venv's setuptools is the one pyproject.toml asks for, and CI has
    # no network guarantee for a second download.
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w"]
        + [str(out), str(src)],
        capture_output=True,
        text=True,
        check=True,
    )
    [whl] = out.glob("packager-*.whl")
    return whl, run.stdout + run.stderr


def test_wheel_builds_without_setuptools_warnings(wheel: tuple[Path, str]) -> None:
    _, log = wheel
    warnings = [line for line in log.splitlines() if "Warning" in line or "absent from" in line]
    assert not warnings, "\n".join(warnings)


def test_wheel_in_fresh_venv_adds_one_import_name(wheel: tuple[Path, str], tmp_path: Path) -> None:
    whl, _ = wheel
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
        + ["--no-index", str(whl)],
        check=True,
    )
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    names = sorted(p.name for p in site.iterdir() if p.name != "__pycache__")
    assert names == ["packager", "packager-0.1.0.dist-info"]
    # The built-in targets are still found through the entry points, under the one name.
    groups = subprocess.run(
        [
            str(python),
            "-c",
            "from importlib.metadata import entry_points as e\n"
            "import json; print(json.dumps([x.value for x in e(group='packager.targets')]))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "packager.targets.cpu_onnxruntime:CpuOnnxRuntime" in json.loads(groups)
    assert all(v.startswith("packager.targets.") for v in json.loads(groups))
    assert (site / "packager" / "templates" / "report" / "report.html.j2").is_file()
    assert (site / "packager" / "example" / "packager.toml").is_file()
    assert (site / "packager" / "example" / "multilabel" / "packager.toml").is_file()


def test_packager_imports_with_targets_unavailable() -> None:
    """Every packager module imports with the targets package blocked and no entry points: the
    only road from packager/ to a target is the entry-point group, used when a target is asked
    for. Asking then is a one-line error."""
    script = textwrap.dedent(
        """
        import importlib, importlib.metadata, pkgutil, sys
        sys.modules["packager.targets"] = None  # any import of it now fails
        importlib.metadata.entry_points = lambda **kw: []
        import packager
        for m in pkgutil.walk_packages(packager.__path__, "packager."):
            if not m.name.startswith(("packager.targets", "packager.example")):
                importlib.import_module(m.name)
        assert not any(n.startswith("packager.targets.") for n in sys.modules), sorted(sys.modules)
        from packager.core.registry import get
        from packager.core.errors import UserError
        try:
            get("cpu-openvino")
        except UserError as e:
            print(e)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "unknown target 'cpu-openvino'" in run.stdout
