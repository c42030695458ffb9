"""apple-coreml's checks on every host: the saved .mlpackage read back against what was built,
and the intermediate PyTorch module against ONNX Runtime (the translation check)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from packager.core.metrics import flipped as flipped_decisions
from packager.core.metrics import to_probabilities
from packager.core.target import BuildContext, Check
from packager.shipped.predict import infer_all
from packager.targets.apple_coreml.convert import LABEL_OUTPUT, Plan, quiet
from packager.targets.apple_coreml.runtime import PROBS_OUTPUT, SCORES_OUTPUT, TorchProxy


def read_spec(path: Path) -> dict[str, Any]:
    """What the saved .mlpackage declares: interface, labels, metadata, ops, weight types."""
    log: list[str] = []
    with quiet(log):
        import coremltools as ct

        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    desc = spec.description

    def feature(f: Any) -> dict[str, Any]:
        kind = f.type.WhichOneof("Type")
        out: dict[str, Any] = {"name": f.name, "type": kind}
        if kind == "imageType":
            out["size"] = [f.type.imageType.height, f.type.imageType.width]
            out["color"] = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(
                f.type.imageType.colorSpace
            )
        elif kind == "multiArrayType":
            a = f.type.multiArrayType
            out["shape"] = list(a.shape)
            ranges = [[r.lowerBound, r.upperBound] for r in a.shapeRange.sizeRanges]
            out["ranges"] = ranges
        return out

    ops: Counter[str] = Counter()
    classes: list[str] = []
    weight_types: Counter[str] = Counter()
    if spec.WhichOneof("Type") == "mlProgram":
        main = spec.mlProgram.functions["main"]
        block = main.block_specializations[main.opset]
        const_type = {}
        for op in block.operations:
            ops[op.type] += 1
            if op.type == "const":
                for o in op.outputs:
                    const_type[o.name] = o.type.tensorType.dataType
            if op.type == "classify":
                lst = op.inputs["classes"].arguments[0].value.immediateValue.list
                classes = [v.immediateValue.tensor.strings.values[0] for v in lst.values]
        for op in block.operations:
            if op.type in ("conv", "linear", "matmul") and "weight" in op.inputs:
                arg = op.inputs["weight"].arguments[0].name
                if arg in const_type:
                    dtype = ct.proto.MIL_pb2.DataType.Name(const_type[arg])
                    weight_types[dtype] += 1
    meta = desc.metadata
    return {
        "type": spec.WhichOneof("Type"),
        "specification_version": spec.specificationVersion,
        "inputs": [feature(f) for f in desc.input],
        "outputs": [feature(f) for f in desc.output],
        "predicted_feature": desc.predictedFeatureName,
        "predicted_probabilities": desc.predictedProbabilitiesName,
        "classes": classes,
        "metadata": {
            "author": meta.author,
            "license": meta.license,
            "short_description": meta.shortDescription,
            "version": meta.versionString,
            "user": dict(meta.userDefined),
        },
        "ops": dict(sorted(ops.items())),
        "weight_types": dict(weight_types),
    }


def spec_checks(
    spec: dict[str, Any], ctx: BuildContext, p: Plan, meta: dict[str, Any]
) -> list[Check]:
    """The .mlpackage read back must declare what was built (a failure is a conversion bug)."""
    opts = ctx.options
    pre = ctx.preprocess
    problems: dict[str, list[str]] = {"io": [], "metadata": [], "weights": []}
    io_, md, wt = problems["io"], problems["metadata"], problems["weights"]
    if spec["type"] != "mlProgram":
        io_.append(f"model type {spec['type']}, expected mlProgram")
    inputs = spec["inputs"]
    if [i["name"] for i in inputs] != [p.input_name]:
        io_.append(f"inputs {[i['name'] for i in inputs]}, expected ['{p.input_name}']")
    elif p.image:
        want = "GRAYSCALE" if pre.channels == 1 else "RGB"
        got = inputs[0]
        if got["type"] != "imageType" or got["size"] != list(pre.hw) or got["color"] != want:
            io_.append(f"input {got}, expected a {pre.hw[0]}x{pre.hw[1]} {want} image")
    else:
        got = inputs[0]
        want_shape = list(pre.input_shape(p.batch or 1))
        if got["type"] != "multiArrayType" or got["shape"] != want_shape:
            io_.append(f"input {got}, expected a multiarray {want_shape}")
        elif p.batch is None and (not got["ranges"] or got["ranges"][0] != [1, opts.max_batch]):
            io_.append(f"input batch range {got['ranges'][:1]}, expected [1, {opts.max_batch}]")
    names = sorted(o["name"] for o in spec["outputs"])
    if p.classifier:
        if names != sorted([LABEL_OUTPUT, PROBS_OUTPUT]):
            io_.append(f"outputs {names}, expected {[LABEL_OUTPUT, PROBS_OUTPUT]}")
        if spec["predicted_probabilities"] != PROBS_OUTPUT:
            io_.append(f"probabilities output '{spec['predicted_probabilities']}'")
        if spec["classes"] != list(ctx.labels.names):
            io_.append(f"class labels {spec['classes']}, expected {ctx.labels.names}")
    elif names != [SCORES_OUTPUT]:
        io_.append(f"outputs {names}, expected ['{SCORES_OUTPUT}']")
    got_meta = spec["metadata"]
    for key in ("author", "license", "short_description", "version"):
        if got_meta[key] != meta[key]:
            md.append(f"{key} {got_meta[key]!r}")
    for key, value in meta["user"].items():
        if got_meta["user"].get(key) != value:
            md.append(f"user-defined '{key}' {got_meta['user'].get(key)!r}, expected {value!r}")
    want_type = {"fp16": "FLOAT16", "fp32": "FLOAT32"}[opts.precision]
    if not spec["weight_types"] or set(spec["weight_types"]) != {want_type}:
        wt.append(f"conv/linear weights {spec['weight_types']}, expected all {want_type}")
    limits = {
        "io": "input, outputs and class labels as built",
        "metadata": "metadata and threshold as built",
        "weights": f"{want_type} weights",
    }
    return [
        Check(
            f"coreml_spec_{key}",
            "; ".join(found) or "as built",
            limits[key],
            not found,
            "read back from the saved .mlpackage",
        )
        for key, found in problems.items()
    ]


# --- the translation check (every host) --------------------------------------------------------


def translation_check(
    ctx: BuildContext, stage: Path, options: dict[str, Any]
) -> tuple[list[Check], dict[str, Any]]:
    """The saved PyTorch module vs ONNX Runtime (the reference runtime) on the validation split.
    Not a declared CrossCheck: those compare with the validated runner, which off macOS is this
    same module (a gate that could not fail), and gate on flips only, not on max |dp|."""
    opts = ctx.options
    kind = options["scores"]
    x = ctx.x
    ref = ctx.reference
    proxy = TorchProxy(stage, options)
    proxy.load()
    try:
        ours = to_probabilities(infer_all(proxy, x, 64, ctx.model.fixed_batch), kind)
    finally:
        proxy.close()
    pos, thr = ctx.labels.operating_points()
    diff = float(np.max(np.abs(ours - ref))) if len(x) else 0.0
    flipped = flipped_decisions(ours, ref, pos, thr)
    details = {"n": len(x), "max_abs_diff": diff, "flipped": flipped, "atol": opts.translation_atol}
    where = "PyTorch module vs ONNX Runtime on the validation split"
    return [
        Check(
            "translation_max_abs_diff",
            diff,
            opts.translation_atol,
            diff <= opts.translation_atol,
            where,
        ),
        Check("translation_flipped", len(flipped), 0, not flipped, where),
    ], details
