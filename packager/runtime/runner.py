"""The Runner interface (load / infer / close) over a bundle's own runtime.py, and the subprocess
host that runs it.

Validation and benchmark both go through a runner, always in a fresh subprocess, so a runtime
crash cannot take the build down and each target's memory and threads are its own. The runner
loads the runtime.py shipped in the bundle, so the numbers in a report come from the very code a
hospital runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from packager.core.errors import PackagerError, Unavailable
from packager.shipped.predict import import_runtime


class Infers(Protocol):
    def infer(self, x: np.ndarray) -> np.ndarray: ...


class Runner(ABC):
    """Public methods check state, then call the `_impl` hooks of the runtime."""

    def __init__(self) -> None:
        self.loaded = False

    def load(self) -> None:
        if not self.loaded:
            self._load()
            self.loaded = True

    def infer(self, x: np.ndarray) -> np.ndarray:
        if not self.loaded:
            raise RuntimeError(f"{type(self).__name__}.infer called before load()")
        out = np.asarray(self._infer(x))
        return out.reshape(x.shape[0], -1) if out.ndim != 2 else out

    def close(self) -> None:
        if self.loaded:
            self._close()
            self.loaded = False

    def __enter__(self) -> Runner:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def throughput(
        self, x: np.ndarray, seconds: float, min_iterations: int
    ) -> tuple[int, float] | None:
        """(samples, elapsed seconds) with several requests in flight, for runtimes with an
        async queue; None means throughput comes from the synchronous latency loop."""
        return None

    def runtime_latency_s(self) -> float | None:
        """The last call's latency as the runtime itself timed it (what benchmark tools such as
        OpenVINO's benchmark_app report), so the harness can show its own per-call overhead;
        None where the runtime does not time its calls."""
        return None

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _infer(self, x: np.ndarray) -> np.ndarray: ...

    def _close(self) -> None:  # noqa: B027 - optional hook
        pass

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """runtime, version, provider/device, threads, precision."""


class ModuleRunner(Runner):
    """A Runner over the object a bundle's runtime.py opens (`open_runtime(bundle, options,
    kind)` -> load / infer / close / info, optionally throughput / runtime_latency_s)."""

    def __init__(self, code: Path, bundle: Path, options: dict[str, Any], kind: str = "main"):
        super().__init__()
        self.module = import_runtime(code)
        try:
            self.runtime = self.module.open_runtime(bundle, options, kind)
        except self.module.Unavailable as exc:
            raise Unavailable(str(exc)) from None

    def _load(self) -> None:
        try:
            self.runtime.load()
        except self.module.Unavailable as exc:
            raise Unavailable(str(exc)) from None

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return self.runtime.infer(x)

    def _close(self) -> None:
        self.runtime.close()

    def info(self) -> dict[str, Any]:
        return self.runtime.info()

    def throughput(
        self, x: np.ndarray, seconds: float, min_iterations: int
    ) -> tuple[int, float] | None:
        fn = getattr(self.runtime, "throughput", None)
        return fn(x, seconds, min_iterations) if fn else None

    def runtime_latency_s(self) -> float | None:
        fn = getattr(self.runtime, "runtime_latency_s", None)
        return fn() if fn else None

    def profile(self, x: np.ndarray, calls: int) -> dict[str, Any] | None:
        """The runtime's own per-operator profile (runtime.py's profile()), or None where its
        runtime.py has no profiler hook."""
        fn = getattr(self.runtime, "profile", None)
        return fn(x, calls) if fn else None


class WorkerFailed(PackagerError):
    """The runtime crashed or timed out in its subprocess; it is reported, not hidden."""

    exit_code = 1


def _die_with_parent() -> None:
    """Linux: the worker is killed when the build dies, even by SIGKILL (no orphaned runtime)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


def run_worker(
    job: dict[str, Any],
    timeout_s: float,
    arrays: dict[str, np.ndarray],
    files: dict[str, Path] | None = None,
) -> dict:
    """Run packager.runtime.worker on `job` in a fresh interpreter; arrays travel as .npy files, and
    `files` the worker wrote into its work folder are copied to where they map."""
    with tempfile.TemporaryDirectory(prefix="packager-worker-") as tmp:
        for key, arr in arrays.items():
            np.save(Path(tmp) / f"{key}.npy", arr, allow_pickle=False)
        job = {**job, "workdir": tmp}
        spec = Path(tmp) / "job.json"
        spec.write_text(json.dumps(job))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "packager.runtime.worker", str(spec)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except subprocess.TimeoutExpired:
            raise WorkerFailed(
                f"{job['job']} on {job['target']} timed out after {timeout_s:.0f}s"
            ) from None
        result_path = Path(tmp) / "result.json"
        unavailable = Path(tmp) / "unavailable.txt"
        if unavailable.exists():
            raise Unavailable(unavailable.read_text().strip())
        if proc.returncode != 0 or not result_path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise WorkerFailed(
                f"{job['job']} on {job['target']} failed in its subprocess "
                f"(exit {proc.returncode}): {tail[0]}"
            )
        result = json.loads(result_path.read_text())
        for key in result.pop("arrays", []):
            result[key] = np.load(Path(tmp) / f"{key}.npy", allow_pickle=False)
        for name, dest in (files or {}).items():
            if (Path(tmp) / name).is_file():
                shutil.copyfile(Path(tmp) / name, dest)
        return result


def predict(
    target: str,
    bundle: Path,
    options: dict[str, Any],
    x: np.ndarray,
    fixed_batch: int | None,
    timeout_s: float,
    kind: str = "main",
    code: Path | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Scores of `x` from the runtime.py in `code` (default: the bundle's own) on the bundle's
    artifacts, in a fresh subprocess, plus the runtime's info."""
    job = {
        "job": "predict",
        "target": target,
        "bundle": str(bundle),
        "code": str(code or bundle),
        "options": options,
        "kind": kind,
        "batch_size": 64,
        "fixed_batch": fixed_batch,
    }
    result = run_worker(job, timeout_s, {"x": x})
    return result["scores"], result["runtime"]
