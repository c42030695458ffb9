"""Shared fixtures: the real dataset (skipped with a reason where absent), tiny real models,
a project folder with packager.toml, and a CLI runner that checks the contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.models import make_classifier

REPO = Path(__file__).resolve().parents[1]
DATA = Path(
    os.environ.get("PACKAGER_TEST_DATA", REPO.parent / "shared" / "data" / "pneumoniamnist.npz")
)


@pytest.fixture(scope="session")
def data_path() -> Path:
    if not DATA.is_file():
        pytest.skip(
            f"PneumoniaMNIST not found at {DATA} (set PACKAGER_TEST_DATA or add ../shared/data)"
        )
    return DATA


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def make_model(models_dir: Path, data_path: Path) -> Callable[..., Path]:
    """make_model(name, **variant) -> path of a tiny real classifier (cached per name)."""

    def make(name: str = "tiny", **variant: object) -> Path:
        path = models_dir / f"{name}.onnx"
        if not path.exists():
            make_classifier(path, str(data_path), **variant)  # type: ignore[arg-type]
        return path

    return make


@pytest.fixture(scope="session")
def tiny_model(make_model: Callable[..., Path]) -> Path:
    return make_model()


# threshold 0.2 gives this tiny model ~0.99 test sensitivity; benchmarks kept short for tests
DEFAULT_TOML = """
[model]
path = "{model}"
name = "tiny"
version = "1.0.0"
[data]
path = "{data}"
[labels]
threshold = 0.2
[bench]
batch_sizes = [1, 8]
seconds = 0.1
min_iterations = 5
warmup = 2
"""


@pytest.fixture
def project(tmp_path: Path, tiny_model: Path, data_path: Path) -> Callable[..., Path]:
    """project(extra_toml="") -> a folder with packager.toml pointing at the tiny model."""

    def make(extra: str = "", model: Path | None = None) -> Path:
        text = DEFAULT_TOML.format(model=model or tiny_model, data=data_path) + extra
        (tmp_path / "packager.toml").write_text(text)
        return tmp_path

    return make


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict:
        return json.loads(self.stdout)


def _run(args: list[str], cwd: Path, timeout: float = 600) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "packager.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli() -> Callable[..., Result]:
    """cli(*args, cwd=PATH) runs `packager` in a subprocess, as a pipeline would."""

    def run(*args: str, cwd: Path, timeout: float = 600) -> Result:
        return _run([str(a) for a in args], cwd, timeout)

    return run


def assert_user_error(r: Result, *words: str) -> None:
    """The contract for bad input: exit 2, one line on stderr naming the problem, no traceback."""
    assert r.code == 2, (r.code, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])


def run_predict(bundle: Path, image: object, workdir: Path, kind: str = "main") -> dict:
    """Save `image` (uint8 array) as a PNG and run the bundle's own predict.py on it, as a
    hospital would (`kind`: the runtime, or the proxy it was validated on); returns its JSON
    line."""
    from PIL import Image

    png = workdir / "predict-input.png"
    Image.fromarray(image).save(png)  # type: ignore[arg-type]
    out = subprocess.run(
        [sys.executable, str(bundle / "predict.py"), "--kind", kind, str(png)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
