"""scripts/typecheck.sh (run by `make test`) checks the TensorRT code, which cannot run without
a GPU, against tensorrt-stubs: the real code passes, and one misspelt TensorRT name or wrong
argument in a copy of it fails."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, must_have

PACKAGE = REPO / "targets" / "gpu_tensorrt"
SOURCES = {
    "runtime": PACKAGE / "runtime.py" if PACKAGE.is_dir() else REPO / "targets/gpu_tensorrt.py",
    "builder": PACKAGE / "convert.py" if PACKAGE.is_dir() else REPO / "targets/gpu_tensorrt.py",
}


def typecheck(code: Path) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("mypy") is None:
        must_have("mypy is not installed (pip install -e '.[dev]')")
    return subprocess.run(
        ["sh", str(REPO / "scripts/typecheck.sh"), sys.executable],
        cwd=REPO,
        env={**os.environ, "TYPECHECK_CODE": str(code)},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_tensorrt_code_passes_against_the_stubs() -> None:
    r = typecheck(PACKAGE if PACKAGE.is_dir() else SOURCES["runtime"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success" in r.stdout


@pytest.mark.parametrize(
    ("source", "old", "new", "error"),
    [
        ("runtime", "trt.Runtime(", "trt.Runtimee(", "Runtimee"),
        ("runtime", "get_tensor_name(i)", "get_tensor_name(i, 0)", "get_tensor_name"),
        ("builder", "config.set_flag(", "config.set_flagg(", "set_flagg"),
        ("builder", "trt.OnnxParser(", "trt.OnnxParserr(", "OnnxParserr"),
    ],
)
def test_a_misspelt_tensorrt_call_fails(
    source: str, old: str, new: str, error: str, tmp_path: Path
) -> None:
    text = SOURCES[source].read_text()
    assert old in text, f"{old!r} is no longer in {SOURCES[source]}: update this test"
    mutant = tmp_path / f"trt_{source}.py"
    mutant.write_text(text.replace(old, new, 1))
    r = typecheck(mutant)
    assert r.returncode == 1 and error in r.stdout, r.stdout + r.stderr
