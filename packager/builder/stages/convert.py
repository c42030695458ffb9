"""Stages 1 and 2: convert the model with the target's converter, then install the runtime the
bundle ships (its code, verbatim, and runtime.json / preprocess.json / requirements.txt)."""

from __future__ import annotations

import sysconfig
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from packager.builder.bundle import install_code
from packager.builder.session import Session
from packager.core import documents
from packager.core.errors import ConversionFailed, PackagerError
from packager.core.quiet import stdout_to_stderr
from packager.core.target import BuildContext, BuildOutput, Target
from packager.runtime.runner import WorkerFailed

# packager/ and targets/: an exception raised in their code is a bug, never a converter's refusal;
# one raised in an installed library (LIBRARIES) during a conversion is that converter's failure.
PACKAGER = Path(__file__).resolve().parents[2]
OUR_CODE = (PACKAGER, (PACKAGER / "targets").resolve())  # targets/ is linked in from the top
LIBRARIES = tuple({Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")})

Converter = Callable[[BuildContext, Path], BuildOutput]


def convert(
    s: Session, t: Target, ctx: BuildContext, bdir: Path, converter: Converter | None = None
) -> BuildOutput:
    """The target's conversion into `bdir` (or `converter`'s: the precision search hands over a
    candidate it already built). A converter library's exception is ConversionFailed."""
    with (
        s.progress.step(t.name, "converting"),
        stdout_to_stderr(s.progress.enabled),
        converter_errors(),
    ):
        return (converter or t.build)(ctx, bdir)


@contextmanager
def converter_errors() -> Iterator[None]:
    """An exception raised inside a converter library (OpenVINO, ONNX Runtime, coremltools,
    torch.export, TensorRT...) during a target's conversion is that target's conversion failure,
    with the traceback as its log; one raised in packager's or a target's own code is a bug and
    keeps its traceback."""
    try:
        yield
    except (PackagerError, WorkerFailed):
        raise
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        where = Path(frames[-1].filename).resolve() if frames else None
        ours = where is None or any(where.is_relative_to(d) for d in OUR_CODE)
        if ours or not any(where.is_relative_to(d) for d in LIBRARIES):
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise ConversionFailed(
            f"the converter failed ({type(exc).__name__} in {where.parent.name}/{where.name}): "
            f"{text[:300]}",
            log="".join(traceback.format_exception(exc)),
        ) from exc


def artifact_mb(bdir: Path, built: BuildOutput) -> float:
    files = [bdir / a for a in built.artifacts] if built.artifacts else list(bdir.rglob("*"))
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


def requirements(t: Target, runtime_config: dict[str, Any], formats: tuple[str, ...] = ()) -> str:
    """requirements.txt: what predict.py needs, at the versions the bundle was validated with
    (pydicom where the bundle reads DICOM: its self-test decodes DICOM files)."""
    from importlib.metadata import PackageNotFoundError, version

    lines = []
    dicom = ["pydicom"] if "dicom" in formats else []
    for dist in ("numpy", "pillow", *dicom, *t.requirements(runtime_config)):
        try:
            lines.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:  # not installed on the build host (e.g. tensorrt)
            lines.append(dist)
    return "\n".join(lines) + "\n"


def install_runtime(s: Session, t: Target, bdir: Path, built: BuildOutput) -> dict[str, str]:
    """The bundle's code and its runtime settings; returns {code file: sha256}."""
    code = install_code(t, bdir)
    (bdir / "preprocess.json").write_text(s.preprocess.to_json())
    reqs = requirements(t, built.runtime_config, s.preprocess.formats)
    (bdir / "requirements.txt").write_text(reqs)
    runtime = {
        "target": t.name,
        "precision": built.precision,
        "runner_options": built.runtime_config,
        "labels": s.cfg.labels.names,
        "positive": s.cfg.labels.positive,
        "threshold": s.cfg.labels.threshold,
        "output": s.output_kind,
        "fixed_batch": s.info.fixed_batch,
        "input": asdict(s.info.input),
    }
    labels = s.cfg.labels
    if labels.multilabel:  # each finding decided on its own: no positive class
        runtime |= {
            "task": "multilabel",
            "positive": None,
            "thresholds": {n: labels.threshold_of(n) for n in labels.names},
        }
    documents.write(bdir / "runtime.json", documents.Runtime, runtime)
    return code
