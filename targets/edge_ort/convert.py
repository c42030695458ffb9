"""edge-ort's conversion: the ONNX model that becomes model.ort (float, or INT8 through ONNX
Runtime's quantizer), ONNX Runtime's own .onnx -> .ort converter with its reduced-build operator
config, and its NNAPI / CoreML usability checker."""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import onnx

from packager.convert.ort_quant import quantize_dynamic_int8, quantize_static_qdq
from packager.core.errors import Unavailable
from packager.core.target import BuildContext
from packager.targets.edge_ort.preprocessing import NO_EXTENSIONS


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def quantized(source: onnx.ModelProto, mode: str, ctx: BuildContext, dst: Path) -> onnx.ModelProto:
    """The ONNX model that becomes model.ort, written to `dst`."""
    if mode == "none":
        onnx.save(source, str(dst))
    elif mode == "dynamic":
        with ctx.progress.step("edge-ort", "dynamic INT8"):
            quantize_dynamic_int8(source, dst)
    else:
        with ctx.progress.step("edge-ort", "static INT8 (QDQ), calibrating"):
            quantize_static_qdq(
                source, dst, ctx.calibration(), ctx.model.fixed_batch or 1, ctx.options.keep_float
            )
    return onnx.load(str(dst))


def convert_to_ort(
    src: Path, dst: Path, config: Path, style: str, platform: str, custom_ops: bool = False
) -> None:
    """`src` (.onnx) -> `dst` (.ort) and the reduced-build operator config, with ONNX Runtime's
    own convert_onnx_models_to_ort."""
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    library = None
    if custom_ops:
        try:
            from onnxruntime_extensions import get_library_path
        except ImportError:
            raise Unavailable(NO_EXTENSIONS) from None
        library = Path(get_library_path())
    with tempfile.TemporaryDirectory(prefix="packager-ort-") as tmp:
        model_dir, out = Path(tmp) / "in", Path(tmp) / "out"
        model_dir.mkdir()
        shutil.copyfile(src, model_dir / "model.onnx")
        convert_onnx_models_to_ort(
            model_dir,
            output_dir=out,
            optimization_styles=[OptimizationStyle[style.capitalize()]],
            target_platform=platform,
            custom_op_library_path=library,
        )
        ort_file = next(out.glob("*.ort"))
        config_file = next(out.glob("*.config"))
        shutil.copyfile(ort_file, dst)
        # The header names the temporary paths; name the bundle's file instead (reproducible).
        lines = config_file.read_text().splitlines()
        body = [ln for ln in lines if not ln.startswith("#")]
        config.write_text(
            f"# Operators {dst.name} needs ({style} optimization style, "
            f"{platform}); pass to --include_ops_by_config\n" + "\n".join(body) + "\n"
        )


# ---- mobile usability (NNAPI / CoreML) ---------------------------------------------------------


def mobile_usability(model_path: Path) -> tuple[dict[str, Any], str]:
    """How much of the graph the NNAPI and CoreML providers could take, from ONNX Runtime's own
    usability checker (onnxruntime.tools.check_onnx_model_mobile_usability), as numbers and as
    the checker's text."""
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    text = io.StringIO()
    log = logging.getLogger("packager.edge-ort.usability")
    log.handlers = [logging.StreamHandler(text)]
    log.setLevel(logging.INFO)
    log.propagate = False
    with tempfile.TemporaryDirectory(prefix="packager-usability-") as tmp:
        basic = Path(tmp) / "basic.onnx"
        optimize_model(model_path, basic)  # the checker looks at the basic-optimized graph
        model = ModelProtoWithShapeInfo(basic).model_with_shape_info
    dynamic, _ = uc.check_shapes(model.graph, log)
    providers = {
        "NNAPI": uc.check_nnapi_partitions,
        "CoreML MLProgram": lambda m, fixed: uc.check_coreml_partitions(
            m, fixed, "coreml_supported_mlprogram_ops.md"
        ),
        "CoreML NeuralNetwork": lambda m, fixed: uc.check_coreml_partitions(
            m, fixed, "coreml_supported_neuralnetwork_ops.md"
        ),
    }
    summary: dict[str, Any] = {"dynamic_inputs": [i.name for i in dynamic]}
    for ep, check in providers.items():
        log.info(f"==== {ep}")
        info = check(model, True)
        info.print_analysis(log, ep)
        entry = _partitions(info)
        if dynamic and entry["suitability"] != "YES":
            log.info(f"{ep} if the input shape were fixed:")
            fixed = check(model, False)
            fixed.print_analysis(log, ep)
            entry["if_input_shape_fixed"] = _partitions(fixed)
        summary[ep] = entry
    return summary, text.getvalue()


def _partitions(info: Any) -> dict[str, Any]:
    return {
        "suitability": info.suitability().name,  # YES | MAYBE | NO, the checker's own verdict
        "nodes": info.num_nodes,
        "supported_nodes": info.num_supported_nodes,
        "coverage": round(info.num_supported_nodes / max(1, info.num_nodes), 4),
        "partitions": info.num_partitions,
        "unsupported_ops": sorted(info.unsupported_ops),
    }
