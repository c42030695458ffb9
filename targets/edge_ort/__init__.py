"""edge-ort: ONNX Runtime's mobile format (.ort) for Android, iOS and small ARM boxes — the
reduced-build operator config, the NNAPI / CoreML usability report, optional INT8 and an optional
second model that takes encoded PNG/JPEG bytes (pre-processing inside the graph)."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import string
import tempfile
from dataclasses import field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper

from packager.convert.ort_quant import (
    OFFENDING_SQNR_DB,
    qdq_layer_errors,
    quantize_dynamic_int8,
    quantize_static_qdq,
)
from packager.convert.ort_support import ort_accepts
from packager.core.errors import Unavailable, UserError
from packager.core.model import ModelInfo, load_model, opset_of, upgrade_opset
from packager.core.schema import Threads, typed
from packager.core.target import (
    PRE_QUANTIZED,
    Availability,
    BuildContext,
    BuildOutput,
    Candidate,
    Check,
    CrossCheck,
    CrossCheckResult,
    Diagnosis,
    Status,
    Target,
)
from packager.shipped.preprocess import Preprocess

MODEL = "model.ort"
IMAGE_MODEL = "model_image.ort"
CONFIG = "required_operators.config"
IMAGE_CONFIG = "required_operators_image.config"
USABILITY = "mobile_usability.txt"
IMAGE_REPORT = "image_model_validation.json"
IMAGE_AGREEMENT = "image_model_agreement"  # the gate line
IN_GRAPH_PREPROCESSING = "in-graph pre-processing"  # measured only
# Resize's `antialias` (what PIL does when it shrinks an image) arrived in opset 18.
IMAGE_OPSET = 18
REPLAY = {"session.enable_saved_runtime_optimizations": "1"}


@typed
class Options:
    # auto: packager.builder.search tries every candidate, ships the best one passing every gate.
    quantize: Literal["none", "dynamic", "static", "auto"] = "none"
    objective: Literal["latency", "throughput", "size"] = "latency"  # what auto optimizes
    keep_float: list[str] = field(default_factory=list)  # static: nodes left in float (mixed)
    # fixed: every optimization baked in (CPU EP); runtime: NNAPI/CoreML pick nodes on the device.
    optimization_style: Literal["fixed", "runtime"] = "fixed"
    target_platform: Literal["arm", "amd64"] = "arm"
    max_size_mb: float | None = None  # gate on each shipped .ort file
    embed_preprocessing: bool = False
    threads: Threads = 0  # 0: ONNX Runtime's default

    def check(self, where: str) -> None:
        if self.max_size_mb is not None and self.max_size_mb <= 0:
            raise UserError(f"{where}.max_size_mb = {self.max_size_mb} must be above 0")


class EdgeOrt(Target):
    name = "edge-ort"
    summary = "ONNX Runtime mobile (.ort) for Android / iOS / ARM, reduced-build operator config"
    limitations = (
        "the device runtime: validated with the full ONNX Runtime on the build host's CPU, not "
        "on ARM kernels, NNAPI or Core ML providers, nor on the reduced (mobile) build the "
        "operator config targets",
    )
    Options = Options
    int8_option = ("quantize", "static")
    shipped = ("ort_session.py",)

    def availability(self) -> Availability:
        ok = Status(True)
        return Availability(build=ok, validate=ok, bench=ok)

    def accepts(self, model: ModelInfo, options: Any = None) -> Status:
        """QOperator and QDQ models convert to .ort as they are (the mobile runtime has the
        quantized kernels); quantizing one again is refused, whichever quantize mode asks."""
        q = model.quantization
        if q and options is not None and options.quantize != "none":
            return Status(
                False,
                f"the model is already quantized ({q.format} format); quantize = "
                f"{options.quantize!r} (--int8) would quantize it a second time: build without "
                '--int8 and with [targets.edge-ort] quantize = "none"',
            )
        return ort_accepts(model, "ONNX Runtime's CPU provider, which runs .ort files,")

    # ---- conversion --------------------------------------------------------------------------

    def build(self, ctx: BuildContext, stage: Path) -> BuildOutput:
        opts: Options = ctx.options
        stage.mkdir(parents=True, exist_ok=True)
        source = load_model(ctx.model_path)
        notes: list[str] = []
        with tempfile.TemporaryDirectory(prefix="packager-edge-") as tmp:
            work = Path(tmp)
            model = _quantized(source, opts.quantize, ctx, work / "model.onnx")
            details: dict[str, Any] = {
                "quantize": opts.quantize,
                **({"kept_in_float": list(opts.keep_float)} if opts.keep_float else {}),
                "optimization_style": opts.optimization_style,
                "target_platform": opts.target_platform,
                "source_opset": opset_of(source),
                "onnxruntime": ort_version(),
            }
            usability, text = mobile_usability(work / "model.onnx")
            (stage / USABILITY).write_text(text)
            details["mobile_usability"] = usability
            convert_to_ort(work / "model.onnx", stage / MODEL, stage / CONFIG, opts)
            details["ort_size_mb"] = _mb(stage / MODEL)
            if opts.quantize != "none":
                onnx.save(source, str(work / "float.onnx"))
                convert_to_ort(work / "float.onnx", work / "float.ort", work / "float.config", opts)
                details["fp32_ort_size_mb"] = _mb(work / "float.ort")
                details["size_vs_fp32"] = round(
                    details["ort_size_mb"] / details["fp32_ort_size_mb"], 4
                )
            shipped = [MODEL]  # model_size_mb is model.ort's; each file is size-gated
            if opts.embed_preprocessing:
                kind = ctx.output_kind
                image = image_model(model, ctx.preprocess, ctx.model.fixed_batch or 1, kind)
                onnx.save(image, str(work / "model_image.onnx"))
                convert_to_ort(
                    work / "model_image.onnx", stage / IMAGE_MODEL, stage / IMAGE_CONFIG, opts, True
                )
                details["image_model_size_mb"] = _mb(stage / IMAGE_MODEL)
                details["onnxruntime_extensions"] = extensions_version()
                shipped.append(IMAGE_MODEL)
                notes.append(
                    f"{IMAGE_MODEL} takes encoded PNG/JPEG bytes and returns class probabilities; "
                    "it needs onnxruntime-extensions (DecodeImage). Grayscale JPEGs are refused: "
                    "onnxruntime-extensions' decoder returns them scrambled, so send PNG or RGB JPEG"
                )
        if opts.quantize == "dynamic":
            notes.append(
                "dynamic INT8 quantizes activations at run time (ConvInteger/MatMulInteger); "
                'NNAPI and CoreML cannot take those nodes — prefer quantize = "static" on phones'
            )
        checks = []
        if opts.max_size_mb is not None:
            for art in shipped:
                size = _mb(stage / art)
                checks.append(
                    Check(
                        "max_size_mb" if art == MODEL else f"max_size_mb[{art}]",
                        round(size, 3),
                        opts.max_size_mb,
                        size <= opts.max_size_mb,
                        "" if size <= opts.max_size_mb else f"{art} is {size:.2f} MB",
                    )
                )
        float_precision = {"float32": "fp32", "float16": "fp16"}[ctx.model.input.dtype]
        return BuildOutput(
            precision="int8"
            if opts.quantize != "none"
            else PRE_QUANTIZED
            if ctx.model.quantization
            else float_precision,
            runtime_config={
                "model": MODEL,
                "image_model": IMAGE_MODEL if opts.embed_preprocessing else None,
                "threads": opts.threads,
                "session_config": REPLAY if opts.optimization_style == "runtime" else {},
            },
            details=details,
            notes=notes,
            checks=checks,
            artifacts=[MODEL],
        )

    # ---- precision search (packager.builder.search) -----------------------------------------------

    search_option: ClassVar[str | None] = "quantize"

    def search_space(self, options: Any) -> list[Candidate]:
        """No quantization, dynamic and static INT8 (each with its reason where it cannot run)."""
        return [
            Candidate("none", {"quantize": "none"}),
            Candidate("dynamic", {"quantize": "dynamic"}),
            Candidate("static", {"quantize": "static"}),
        ]

    def search_diagnose(
        self,
        ctx: BuildContext,
        label: str,
        details: dict[str, Any],
        others: dict[str, Any],
        x: np.ndarray,
    ) -> Diagnosis | None:
        """Where static INT8 loses the gate: ONNX Runtime's QDQ debugging tools on `x` (the
        images whose decision flipped), and a follow-up that keeps the offending layers in
        float."""
        if label != "static" or ctx.options.keep_float:
            return None
        batch = ctx.model.fixed_batch or 1
        with ctx.progress.step(self.name, f"QDQ per-layer error on {len(x)} images"):
            rows = qdq_layer_errors(load_model(ctx.model_path), ctx.calibration(), batch, x)
        offending = [
            r
            for r in rows
            if r["worst_channel_sqnr_db"] is not None
            and r["worst_channel_sqnr_db"] < OFFENDING_SQNR_DB
        ] or rows[:1]
        keep = sorted({n for r in offending for n in r["keep_float"]})
        diagnosis = {
            "method": "onnxruntime.quantization.qdq_loss_debug: worst-channel SQNR of each "
            f"activation across its Q/DQ pair; offending below {OFFENDING_SQNR_DB} dB",
            "images": len(x),
            "layers": rows[:5],
            "offending": [r["layer"] for r in offending],
            "keep_float": keep,
        }
        follow = Candidate("static-mixed", {"quantize": "static", "keep_float": keep})
        return Diagnosis(diagnosis, follow if keep else None)

    # ---- runners -----------------------------------------------------------------------------

    def bench_variants(self, options: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        # Phones and small ARM boxes give an app one or two cores.
        return [("1 thread", {"threads": 1}), ("2 threads", {"threads": 2})]

    def requirements(self, options: dict[str, Any]) -> list[str]:
        return ["onnxruntime"] + (["onnxruntime-extensions"] if options.get("image_model") else [])

    def cross_checks(self, options: dict[str, Any]) -> list[CrossCheck]:
        """The image-bytes model against the tensor model, on the validation split as PNGs
        (no decision may differ), and the in-graph pre-processing alone, to measure it against
        preprocess.py."""
        if not options.get("image_model"):
            return []
        return [
            CrossCheck(
                IMAGE_AGREEMENT,
                "image-bytes",
                max_flips=0,
                inputs="images",
                output="probabilities",  # the image model ends in its own softmax
                value="agreement",
            ),
            CrossCheck(IN_GRAPH_PREPROCESSING, "image-bytes", inputs="images", scratch=_pre_only),
        ]

    def cross_checked(
        self, ctx: BuildContext, stage: Path, probs: np.ndarray, results: list[CrossCheckResult]
    ) -> None:
        """image_model_validation.json, and the in-graph pre-processing's input difference on
        the agreement gate line."""
        got = {r.check.name: r for r in results}
        image, pre = got.get(IMAGE_AGREEMENT), got.get(IN_GRAPH_PREPROCESSING)
        if image is None:
            return
        n = len(probs)
        summary: dict[str, Any] = {
            "n": n,
            "encoding": "PNG",
            "agreeing_decisions": n - len(image.flipped),
            "differing_indices": image.flipped,
            "max_abs_diff_probability": image.max_abs_diff,
        }
        if pre is not None:
            reference = ctx.x.reshape(n, -1).astype(np.float32)
            dx = float(np.max(np.abs(pre.outputs - reference)))
            summary["max_abs_diff_input_tensor"] = dx
            image.notes.append(f"in-graph vs preprocess.py input max |dx| {dx:.2e}")
        (stage / IMAGE_REPORT).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def _pre_only(ctx: BuildContext, folder: Path) -> dict[str, Any]:
    onnx.save(preprocess_model(ctx.preprocess), str(folder / "pre.onnx"))
    return {"image_model": "pre.onnx"}


_NO_EXTENSIONS = (
    "embed_preprocessing needs onnxruntime-extensions: pip install 'packager[edge]' "
    "(or set embed_preprocessing = false)"
)


def ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def extensions_version() -> str:
    import onnxruntime_extensions

    return onnxruntime_extensions.__version__


def _mb(path: Path) -> float:
    return path.stat().st_size / 2**20


def _quantized(source: onnx.ModelProto, mode: str, ctx: BuildContext, dst: Path) -> onnx.ModelProto:
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
    src: Path, dst: Path, config: Path, opts: Options, custom_ops: bool = False
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
            raise Unavailable(_NO_EXTENSIONS) from None
        library = Path(get_library_path())
    with tempfile.TemporaryDirectory(prefix="packager-ort-") as tmp:
        model_dir, out = Path(tmp) / "in", Path(tmp) / "out"
        model_dir.mkdir()
        shutil.copyfile(src, model_dir / "model.onnx")
        convert_onnx_models_to_ort(
            model_dir,
            output_dir=out,
            optimization_styles=[OptimizationStyle[opts.optimization_style.capitalize()]],
            target_platform=opts.target_platform,
            custom_op_library_path=library,
        )
        ort_file = next(out.glob("*.ort"))
        config_file = next(out.glob("*.config"))
        shutil.copyfile(ort_file, dst)
        # The header names the temporary paths; name the bundle's file instead (reproducible).
        lines = config_file.read_text().splitlines()
        body = [ln for ln in lines if not ln.startswith("#")]
        config.write_text(
            f"# Operators {dst.name} needs ({opts.optimization_style} optimization style, "
            f"{opts.target_platform}); pass to --include_ops_by_config\n" + "\n".join(body) + "\n"
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


# ---- pre-processing in the graph (onnxruntime-extensions) --------------------------------------


def image_model(model: onnx.ModelProto, pre: Preprocess, batch: int, kind: str) -> onnx.ModelProto:
    """`model` behind a graph that takes one encoded PNG/JPEG (uint8 bytes) and returns class
    probabilities [1, classes], doing what preprocess.py does."""
    from onnxruntime_extensions.tools.pre_post_processing.steps import Softmax

    out = model.graph.output[0].type.tensor_type
    post = []
    if batch > 1:  # a fixed-batch model sees the image repeated; keep the first row
        post.append(_step("first_row", "$t[1, $c]", _FIRST_ROW))
    if out.elem_type != TensorProto.FLOAT:
        post.append(_step("to_float", "float[1, $c]", "$y = Cast <to = 1> ($x)"))
    if kind == "logits":
        post.append(Softmax())
    merged = _with_preprocessing(upgrade_opset(model, IMAGE_OPSET), pre, batch, post)
    _rename_output(merged.graph, "probabilities")
    return merged


def _rename_output(graph: onnx.GraphProto, name: str) -> None:
    old = graph.output[0].name
    for node in graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
    graph.output[0].name = name


def preprocess_model(pre: Preprocess) -> onnx.ModelProto:
    """Only the in-graph pre-processing (bytes -> the model's input tensor, batch 1), to measure
    it against preprocess.py."""
    dims = pre.input_shape(1)
    elem = TensorProto.FLOAT16 if pre.dtype == "float16" else TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Identity", ["tensor"], ["input_tensor"])],
        "identity",
        [helper.make_tensor_value_info("tensor", elem, dims)],
        [helper.make_tensor_value_info("input_tensor", elem, dims)],
    )
    ir = helper.find_min_ir_version_for([helper.make_opsetid("", IMAGE_OPSET)])
    identity = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", IMAGE_OPSET)], ir_version=ir
    )
    return _with_preprocessing(identity, pre, 1, [])


_FIRST_ROW = """
starts = Constant <value = int64[1] {0}> ()
ends = Constant <value = int64[1] {1}> ()
$y = Slice ($x, starts, ends)
"""


def _with_preprocessing(
    model: onnx.ModelProto, pre: Preprocess, batch: int, post: list[Any]
) -> onnx.ModelProto:
    try:
        from onnxruntime_extensions.tools.pre_post_processing import (
            PrePostProcessor,
            create_named_value,
        )
        from onnxruntime_extensions.tools.pre_post_processing.steps import ConvertImageToBGR
    except ImportError:
        raise Unavailable(_NO_EXTENSIONS) from None

    c, s = pre.channels, pre.size
    if c == 3:  # decoded BGR -> RGB (a grayscale PNG decodes to three equal channels)
        to_channels = """
        order = Constant <value = int64[3] {2, 1, 0}> ()
        rgb = Gather <axis = 2> ($x, order)
        $y = Cast <to = 1> (rgb)
        """
    else:  # the same luma weights as preprocess.py, in BGR order
        to_channels = """
        pixels = Cast <to = 1> ($x)
        luma = Constant <value = float[3, 1] {0.114, 0.587, 0.299}> ()
        $y = MatMul (pixels, luma)
        """
    # half_pixel coordinates (the default) with PIL's rules: antialiased linear, and nearest
    # rounding half up, as PIL's floor((x + 0.5) * scale).
    mode = (
        'mode = "linear", antialias = 1, exclude_outside = 1'
        if pre.resize == "bilinear"
        else 'mode = "nearest", nearest_mode = "round_prefer_ceil"'
    )
    resize = f"""
    axes = Constant <value = int64[1] {{0}}> ()
    batched = Unsqueeze ($x, axes)
    nchw = Transpose <perm = [0, 3, 1, 2]> (batched)
    sizes = Constant <value = int64[4] {{1, {c}, {s}, {s}}}> ()
    $y = Resize <{mode}> (nchw, , , sizes)
    """
    stats = {k: _per_channel(getattr(pre, k), c) for k in ("mean", "std")}
    normalize = f"""
    scale = Constant <value_float = {pre.scale!r}> ()
    mean = Constant <value = float[{c}, 1, 1] {{{stats["mean"]}}}> ()
    std = Constant <value = float[{c}, 1, 1] {{{stats["std"]}}}> ()
    scaled = Mul ($x, scale)
    centred = Sub (scaled, mean)
    $y = Div (centred, std)
    """
    steps = [
        ConvertImageToBGR(),
        _step("to_channels", f"float[h, w, {c}]", to_channels),
        _step("resize", f"float[1, {c}, {s}, {s}]", resize),
        _step("normalize", f"float[1, {c}, {s}, {s}]", normalize),
    ]
    to_input = _to_model_input(pre, batch)
    if to_input:
        shape = ", ".join(str(d) for d in pre.input_shape(batch))
        steps.append(_step("to_model_input", f"{_onnx_type(pre.dtype)}[{shape}]", to_input))
    ppp = PrePostProcessor(
        [create_named_value("image", TensorProto.UINT8, ["num_bytes"])],
        max(IMAGE_OPSET, opset_of(model)),
    )
    ppp.add_pre_processing(steps)
    if post:
        ppp.add_post_processing(post)
    return ppp.run(model)


def _to_model_input(pre: Preprocess, batch: int) -> str:
    lines, value = [], "$x"
    if pre.layout == "NHWC":
        lines.append(f"nhwc = Transpose <perm = [0, 2, 3, 1]> ({value})")
        value = "nhwc"
    if batch > 1:
        lines.append(f"repeats = Constant <value = int64[4] {{{batch}, 1, 1, 1}}> ()")
        lines.append(f"batch = Expand ({value}, repeats)")
        value = "batch"
    if pre.dtype == "float16":
        lines.append(f"half = Cast <to = 10> ({value})")
        value = "half"
    if not lines:
        return ""
    lines[-1] = re.sub(r"^\w+ =", "$y =", lines[-1])
    return "\n".join(lines)


def _per_channel(values: tuple[float, ...], channels: int) -> str:
    full = values if len(values) == channels else values * channels
    return ", ".join(repr(float(v)) for v in full)


def _onnx_type(dtype: str) -> str:
    return {"float32": "float", "float16": "float16"}[dtype]


def _step(name: str, out_type: str, body: str) -> Any:
    """A pre/post-processing step written in ONNX text: `body` reads $x and assigns $y; `out_type`
    may use $t (input element type) and $c (last input dimension)."""
    from onnxruntime_extensions.tools.pre_post_processing import Step

    class TextStep(Step):
        def __init__(self) -> None:
            super().__init__(["x"], ["y"], name)

        def _create_graph_for_step(self, graph: onnx.GraphProto, onnx_opset: int) -> Any:
            in_type, in_shape = self._get_input_type_and_shape_strs(graph, 0)
            names = {"x": self.input_names[0], "y": self.output_names[0]}
            out = string.Template(out_type).substitute(t=in_type, c=in_shape.split(",")[-1])
            return onnx.parser.parse_graph(
                f"{name} ({in_type}[{in_shape}] {names['x']}) => ({out} {names['y']}) {{\n"
                + string.Template(body).substitute(names)
                + "\n}"
            )

    return TextStep()
