"""What ONNX Runtime's CPU provider can execute, from ONNX Runtime's own kernel registry: the
cheap support check for targets whose artifact ONNX Runtime runs (before any conversion)."""

from __future__ import annotations

from functools import cache

import onnx

from packager.core.model import DEFAULT_DOMAINS, ModelInfo, split_op
from packager.core.target import Status

# Default-domain operators ONNX Runtime resolves when it loads the graph, without a kernel.
FOLDED = {"Constant"}


@cache
def cpu_kernels() -> frozenset[tuple[str, str]] | None:
    """(domain, operator) of every kernel the CPU provider registers; None when this build of
    ONNX Runtime does not expose its registry (then the conversion itself decides)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    get = getattr(C, "get_all_opkernel_def", None)
    if get is None:
        return None
    return frozenset((k.domain, k.op_name) for k in get() if k.provider == "CPUExecutionProvider")


def _is_function(op_type: str, opset: int) -> bool:
    """ONNX operators defined as functions run without a kernel of their own (ORT expands them)."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)


def unsupported_ops(model: ModelInfo) -> list[str]:
    """The model's operators (qualified by domain) that ONNX Runtime's CPU provider cannot run."""
    kernels = cpu_kernels()
    if kernels is None:
        return []
    opset = model.opsets.get("ai.onnx", model.opset)
    out = []
    for name in model.operators:
        domain, op_type = split_op(name)
        domain = "" if domain in DEFAULT_DOMAINS else domain
        if (domain, op_type) in kernels or (not domain and op_type in FOLDED):
            continue
        if not domain and _is_function(op_type, opset):
            continue
        out.append(name)
    return out


def version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def ort_accepts(model: ModelInfo, what: str) -> Status:
    """ONNX Runtime's CPU provider runs every operator of `model`, by its kernel registry."""
    missing = unsupported_ops(model)
    if not missing:
        return Status(True)
    return Status(
        False,
        f"{what} (ONNX Runtime {version()}) has no kernel for "
        f"{', '.join(missing)}: re-export the model without them (or build ONNX Runtime with "
        "the custom operator library)",
    )
