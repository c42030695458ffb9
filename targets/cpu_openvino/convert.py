"""cpu-openvino's conversion: the source ONNX read by OpenVINO's frontend (converted once per
file in this process), and the frontend's errors turned into the target's refusal."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from packager.core.errors import ConversionFailed, ModelRefused
from packager.core.model import ModelInfo
from packager.core.target import REEXPORT_QDQ, Status


@contextmanager
def refusals(model: ModelInfo) -> Iterator[None]:
    """OpenVINO's conversion errors as the target's refusal: one line from the frontend's own
    report of unconverted operators ("No conversion rule found for operations: ...", "Conversion
    is failed for: ..."), the whole report kept as the log."""
    import openvino as ov
    from openvino.frontend import (
        GeneralFailure,
        InitializationFailure,
        NotImplementedFailure,
        OpConversionFailure,
    )

    try:
        yield
    except (
        OpConversionFailure,
        GeneralFailure,
        NotImplementedFailure,
        InitializationFailure,
        RuntimeError,  # the frontend's own error on a malformed graph (found by the intake fuzz)
    ) as e:
        text = str(e)
        no_rule = re.search(r"No conversion rule found for operations: (.+)", text)
        failed = re.search(r"Conversion is failed for: (.+)", text)
        parts = [f"no conversion rule for {no_rule.group(1).strip()}"] if no_rule else []
        parts += [f"conversion failed for {failed.group(1).strip()}"] if failed else []
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
        reason = f"OpenVINO {ov.get_version().split('-')[0]} cannot convert the model: " + (
            "; ".join(parts) or first
        )
        q = model.quantization
        if q and q.format == "QOperator":
            reason += f" (a QOperator-format model; OpenVINO reads QDQ natively: {REEXPORT_QDQ})"
        raise (ModelRefused if parts else ConversionFailed)(reason, log=text) from None


def frontend_check(model: ModelInfo) -> Status:
    """The ONNX frontend's own conversion (no compilation, nothing written): the cheap check."""
    from openvino.frontend import FrontEndManager

    try:
        with refusals(model):
            fe = FrontEndManager().load_by_framework("onnx")
            fe.convert(fe.load(model.path))
    except ModelRefused as exc:
        return Status(False, str(exc), log=exc.log)
    return Status(True)


@cache
def _converted(path: str, mtime_ns: int) -> Any:
    import openvino as ov

    return ov.convert_model(path)


def convert_source(path: Path) -> Any:
    """The source model as an OpenVINO model: converted once per file content in this process
    (a precision search builds several candidates from it), a fresh clone per caller."""
    return _converted(str(path), path.stat().st_mtime_ns).clone()
