"""Shared fixtures: the real dataset (skipped with a reason where absent), tiny real models,
a project folder with packager.toml, and a CLI runner that checks the contract."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
from filelock import FileLock

from tests.models import make_classifier

REPO = Path(__file__).resolve().parents[1]
DATA = Path(
    os.environ.get("PACKAGER_TEST_DATA", REPO.parent / "shared" / "data" / "pneumoniamnist.npz")
)
# On CI (CI=true) every capability below must be present: a skip there would hide a check.
ON_CI = os.environ.get("CI", "").lower() == "true"


# Builds in tests never share the user's build cache, nor one another's: a session-wide empty
# cache for session fixtures, and a fresh one per test (tests/test_cache_build.py opts in to
# reuse within one test).
os.environ["PACKAGER_CACHE"] = tempfile.mkdtemp(prefix="packager-test-cache-")
# The CLI's stderr in tests is the error contract's (one line); tests/test_progress.py turns the
# progress modes on.
os.environ["PACKAGER_PROGRESS"] = "none"


@pytest.fixture(autouse=True)
def own_build_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PACKAGER_CACHE", str(tmp_path_factory.mktemp("cache")))


def must_have(reason: str) -> NoReturn:
    """A missing capability CI always provides: a failure on CI (one line), a skip elsewhere."""
    if ON_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_sessionstart(session: pytest.Session) -> None:
    """On CI the dataset is not optional: stop at once, in one line, instead of failing
    every test that needs it."""
    if ON_CI and not DATA.is_file():
        pytest.exit(
            f"CI=true and PneumoniaMNIST is missing: put pneumoniamnist.npz at {DATA} "
            "(../shared/data/ beside the repository) or set PACKAGER_TEST_DATA",
            returncode=1,
        )


@pytest.fixture(scope="session")
def data_path() -> Path:
    if not DATA.is_file():
        must_have(
            f"PneumoniaMNIST not found at {DATA}: put pneumoniamnist.npz there "
            "(../shared/data/ beside the repository) or set PACKAGER_TEST_DATA"
        )
    return DATA


def run_shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temp folder common to every pytest-xdist worker of this run (the run's own otherwise)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if "PYTEST_XDIST_WORKER" in os.environ else base


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = run_shared(tmp_path_factory) / "models"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def make_model(models_dir: Path, data_path: Path) -> Callable[..., Path]:
    """make_model(name, **variant) -> path of a tiny real classifier (cached per name)."""

    def make(name: str = "tiny", **variant: object) -> Path:
        path = models_dir / f"{name}.onnx"
        with FileLock(str(path) + ".lock"):  # shared by the xdist workers
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


def unprivileged_dir() -> Path:
    """A fresh folder an unprivileged user can work in (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="packager-unprivileged-"))
    d.chmod(0o755)
    return d


def run_unprivileged(
    args: list[str], cwd: Path, lock: Callable[[], None] = lambda: None, timeout: float = 600
) -> Result:
    """`packager ARGS` as the user `nobody` when the tests run as root (as CI does), where
    permission bits bind nobody; as the current user otherwise. Files under `cwd` are handed
    to nobody first, then `lock()` takes away what the test means to be out of reach."""
    if os.geteuid() != 0:
        lock()
        return _run(args, cwd, timeout)
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        must_have("setpriv (util-linux) is missing: needed to run permission tests as nobody")
    subprocess.run(["chown", "-R", "nobody:nogroup", str(cwd)], check=True)
    lock()
    prefix = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    env = {**os.environ, "HOME": str(cwd), "MPLCONFIGDIR": str(cwd / ".mpl")}
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "packager.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def bundle_dir(root: Path, target: str, name: str = "tiny-1.0.0") -> Path:
    """The bundle a build in `root` made: published, or kept under dist/.failed/."""
    published = root / "dist" / name / target
    return published if published.exists() else root / "dist" / ".failed" / name / target


# The host settings of the session's default build (a reproducibility test varies them).
DEFAULT_DIST_ENV: dict = {"tz": "UTC", "umask": 0o022, "epoch": 1_700_000_000}


def run_with(
    args: list[str], cwd: Path, tz: str, umask: int, epoch: int, timeout: float = 1800
) -> Result:
    """`packager ARGS` with this TZ, umask and SOURCE_DATE_EPOCH."""
    cwd.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "packager.cli", *args],
        cwd=cwd,
        env={**os.environ, "TZ": tz, "SOURCE_DATE_EPOCH": str(epoch)},
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=lambda: os.umask(umask),
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def once_a_run(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Result]
) -> tuple[Path, Result]:
    """(folder, result) of `build(folder)`, run once a run: under pytest-xdist the first worker
    to ask builds under a file lock in the run's common temp folder, the others read its
    saved result. Read what it built; copy it before changing anything in it."""
    shared = run_shared(tmp_path_factory)
    root = shared / name
    with FileLock(str(shared / f"{name}.lock")):
        saved = shared / f"{name}.json"
        if not saved.is_file():
            root.mkdir(exist_ok=True)  # a worker that died mid-build left it
            r = build(root)
            saved.write_text(json.dumps([r.code, r.stdout, r.stderr]))
    return root, Result(*json.loads(saved.read_text()))


@pytest.fixture(scope="session")
def _default_dist(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_path: Path
) -> Callable[[], tuple[Path, Result]]:
    """Runs `packager build --all --no-bench --json -q` with DEFAULT_TOML on first use, once a
    run (once_a_run), with fixed SOURCE_DATE_EPOCH, TZ and umask (tests/test_reproducible.py
    rebuilds with other settings and compares)."""
    done: list[tuple[Path, Result]] = []

    def build(root: Path) -> Result:
        (root / "packager.toml").write_text(DEFAULT_TOML.format(model=tiny_model, data=data_path))
        args = ["build", "--all", "--no-bench", "--json", "-q"]
        return run_with(args, root, **DEFAULT_DIST_ENV)

    def get() -> tuple[Path, Result]:
        if not done:
            done.append(once_a_run(tmp_path_factory, "default-all", build))
        return done[0]

    return get


@pytest.fixture(scope="session")
def default_dist(_default_dist: Callable[[], tuple[Path, Result]]) -> tuple[Path, Result]:
    """(project folder, result of `packager build --all --no-bench --json -q`) with
    DEFAULT_TOML: one session build of every target this host builds, shared by the targets' own tests and the
    generic ones (recount, compare). Read it; copy a bundle before changing anything in it."""
    return _default_dist()


@pytest.fixture(scope="session")
def default_build(
    _default_dist: Callable[[], tuple[Path, Result]],
) -> Callable[[str], tuple[Path, Result]]:
    """default_build(target) -> (project folder, CLI result) of the session's `build --all`
    (default_dist) for that target; its bundle is bundle_dir(folder, target). Built on the
    first call, so a test that does not call it costs nothing."""

    def get(target: str) -> tuple[Path, Result]:
        root, r = _default_dist()
        assert r.code in (0, 1), r.stderr
        built = {x["target"]: x for x in json.loads(r.stdout)["results"]}
        assert target in built, f"build --all did not build {target}: {sorted(built)}"
        return root, r

    return get


@pytest.fixture(scope="session")
def reference_project(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_path: Path
) -> Path:
    """The project folder of one `build --target cpu-onnxruntime --no-bench` with DEFAULT_TOML,
    built once a run (once_a_run) and shared read-only; copy_project() gives a test its own."""

    def build(root: Path) -> Result:
        (root / "packager.toml").write_text(DEFAULT_TOML.format(model=tiny_model, data=data_path))
        return _run(["build", "--target", "cpu-onnxruntime", "--no-bench", "--quiet"], root)

    root, r = once_a_run(tmp_path_factory, "reference-bundle", build)
    assert r.code == 0, r.stderr
    return root


@pytest.fixture(scope="session")
def reference_bundle(reference_project: Path) -> Path:
    """The published cpu-onnxruntime bundle of reference_project, shared read-only; copy it
    before changing anything in it (a site validation without --out writes beside it)."""
    return (reference_project / "dist" / "tiny-1.0.0" / "cpu-onnxruntime").resolve()


def copy_project(src: Path, dest: Path) -> Path:
    """A private copy of a built project: its packager.toml and dist/ as published (the
    generation links kept), for a test that validates in place, rebuilds or signs."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "packager.toml", dest / "packager.toml")
    shutil.copytree(src / "dist", dest / "dist", symlinks=True)
    return dest


@pytest.fixture(scope="session")
def benched_build(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_path: Path
) -> Callable[[str], tuple[Path, Result]]:
    """benched_build(target) -> (project folder, CLI result) of `build --target TARGET --quiet`
    with DEFAULT_TOML and its short [bench]: one build per target a run (once_a_run), shared
    read-only by the tests that read a benchmark or a profile; its bundle is
    bundle_dir(folder, target)."""

    def get(target: str) -> tuple[Path, Result]:
        def build(root: Path) -> Result:
            toml = DEFAULT_TOML.format(model=tiny_model, data=data_path)
            (root / "packager.toml").write_text(toml)
            return _run(["build", "--target", target, "--quiet"], root)

        return once_a_run(tmp_path_factory, f"benched-{target}", build)

    return get
