"""edge-ort's second model: the tensor model behind a graph that takes encoded PNG/JPEG bytes and
does what preprocess.py does (onnxruntime-extensions' pre/post-processing tools)."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

from packager.core.errors import Unavailable
from packager.core.model import opset_of, upgrade_opset
from packager.core.target import BuildContext
from packager.shipped.preprocess import Preprocess

# Resize's `antialias` (what PIL does when it shrinks an image) arrived in opset 18.
IMAGE_OPSET = 18


NO_EXTENSIONS = (
    "embed_preprocessing needs onnxruntime-extensions: pip install 'packager[edge]' "
    "(or set embed_preprocessing = false)"
)


def extensions_version() -> str:
    import onnxruntime_extensions

    return onnxruntime_extensions.__version__


def pre_only(ctx: BuildContext, folder: Path) -> dict[str, Any]:
    onnx.save(preprocess_model(ctx.preprocess), str(folder / "pre.onnx"))
    return {"image_model": "pre.onnx"}


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
    elif kind == "sigmoid-logits":  # a multi-label model's findings: a sigmoid each
        post.append(_step("sigmoid", "float[1, $c]", "$y = Sigmoid ($x)"))
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
        raise Unavailable(NO_EXTENSIONS) from None

    (c, (h, w)) = pre.channels, pre.hw
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
    sizes = Constant <value = int64[4] {{1, {c}, {h}, {w}}}> ()
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
        _step("resize", f"float[1, {c}, {h}, {w}]", resize),
        _step("normalize", f"float[1, {c}, {h}, {w}]", normalize),
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
