"""apple-coreml: a Core ML ML Program (.mlpackage) for iPhone, iPad and Mac.

coremltools dropped its ONNX converter (6.0), so the path is ONNX -> PyTorch (our own translation,
onnx_to_torch.py beside this file) -> torch.export -> coremltools.convert. Core ML predictions only run
on macOS, so verification is split by what each host can do:

- every host: the intermediate PyTorch module is compared with ONNX Runtime on the validation
  split (max |p| difference and flipped decisions, a gate), and the saved .mlpackage spec is
  read back and checked (inputs, outputs, class labels, metadata, weight precision);
- elsewhere than macOS: the clinical gates run on that intermediate module, labelled as a proxy,
  and the report says `not-validated`; `packager validate BUNDLE --data ...` on a Mac completes it;
- macOS: validation and benchmark on Core ML itself through coremltools' prediction API.
"""

from __future__ import annotations

import contextlib
import io
import json
import platform
import re
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from packager.core.errors import UserError
from packager.core.installed import missing
from packager.core.metrics import flipped as flipped_decisions
from packager.core.metrics import to_probabilities
from packager.core.model import ModelInfo, load_model
from packager.core.schema import typed
from packager.core.target import (
    Availability,
    BuildContext,
    BuildOutput,
    Candidate,
    Check,
    Proxy,
    Status,
    Target,
)
from packager.core.version import __version__
from packager.shipped.predict import infer_all
from packager.shipped.preprocess import Preprocess
from packager.targets.apple_coreml.runtime import NOT_MAC, PROBS_OUTPUT, SCORES_OUTPUT, TorchProxy

MODEL = "model.mlpackage"
INTERMEDIATE = "intermediate/model.pt2"
CONVERSION_DATE = "com.github.apple.coremltools.conversion_date"  # differs every day
IMAGE_INPUT, TENSOR_INPUT = "image", "input"
LABEL_OUTPUT = "classLabel"
PROXY_LABEL = (
    "the intermediate PyTorch module (FP32, CPU) that Core ML was converted from: it checks the "
    "ONNX->PyTorch translation, not Core ML's own arithmetic"
)


@typed
class Options:
    # auto: packager.builder.search tries fp16 and fp32, ships the best one passing every gate.
    precision: Literal["fp16", "fp32", "auto"] = "fp16"
    objective: Literal["latency", "throughput", "size"] = "latency"  # what auto optimizes
    # ML Programs need iOS 15 / macOS 12 or newer; iOS16 adds FP16 inputs and more ops.
    minimum_deployment_target: Literal[
        "iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15"
    ] = "iOS16"
    compute_units: Literal["ALL", "CPU_ONLY", "CPU_AND_NE", "CPU_AND_GPU"] = "ALL"
    # Embed [preprocess] as an image input (Vision feeds camera frames and photos directly);
    # possible when one std serves every channel, since Core ML's image scale is one number.
    image_input: bool = True
    # Class labels as a classifier output (label + probability per class, what Vision returns
    # as VNClassificationObservation); a classifier takes one image per prediction.
    classifier: bool = True
    max_batch: int = 64  # flexible batch upper bound, for a multiarray input without classifier
    translation_atol: float = 1e-4  # max |p| difference of the PyTorch module vs ONNX Runtime

    def check(self, where: str) -> None:
        if not 1 <= self.max_batch <= 4096:
            raise UserError(f"{where}.max_batch = {self.max_batch}; use 1..4096")
        if not 0 < self.translation_atol < 1:
            raise UserError(f"{where}.translation_atol must be a small positive fraction")


# --- what the Core ML model looks like --------------------------------------------------------


@dataclass
class Plan:
    """The converted model's interface, decided from the config and the source model."""

    image: bool
    classifier: bool
    batch: int | None  # None: flexible 1..max_batch
    softmax: bool  # appended so the classifier's dictionary holds probabilities
    notes: list[str]

    @property
    def input_name(self) -> str:
        return IMAGE_INPUT if self.image else TENSOR_INPUT


def plan(ctx: BuildContext) -> Plan:
    opts: Options = ctx.options
    pre, fixed = ctx.preprocess, ctx.model.fixed_batch
    notes: list[str] = []
    image, classifier = opts.image_input, opts.classifier
    if fixed not in (None, 1) and (image or classifier):
        notes.append(
            f"the model's batch is fixed at {fixed}: a multiarray input and a scores output are "
            "used (image inputs and classifier outputs take one image per prediction)"
        )
        image = classifier = False
    if image and len(set(pre.std)) > 1:
        notes.append(
            f"[preprocess] std {list(pre.std)} differs per channel and Core ML's image scale is "
            "one number: the input is a preprocessed multiarray (see preprocess.json)"
        )
        image = False
    batch = fixed or (1 if image or classifier else None)
    kind = ctx.output_kind
    return Plan(image, classifier, batch, classifier and kind == "logits", notes)


def image_scale_bias(pre: Preprocess) -> tuple[float, list[float]]:
    """Core ML computes scale * pixel + bias per channel; ours is (pixel * scale - mean) / std."""
    std = pre.std[0]
    mean = list(pre.mean) * (pre.channels // len(pre.mean))
    return pre.scale / std, [-m / std for m in mean]


def metadata(ctx: BuildContext, p: Plan) -> dict[str, Any]:
    """Model metadata written into the .mlpackage, and checked after reading it back."""
    m, labels = ctx.model_config, ctx.labels
    decision = (
        f"Decide '{labels.positive}' when its probability is >= {labels.threshold} "
        "(the validated threshold; the top label alone is not the clinical decision)."
    )
    kind = "probabilities" if p.classifier else ctx.output_kind
    summary = m.description or (f"{m.name} {m.version}: {' / '.join(labels.names)} classifier")
    return {
        "author": m.author or "unspecified ([model] author)",
        "license": m.license or "unspecified ([model] license)",
        "short_description": f"{summary.rstrip('.')}. {decision}",
        "version": m.version,
        "user": {
            "name": m.name,
            "threshold": repr(labels.threshold),
            "positive_class": labels.positive,
            "labels": json.dumps(labels.names),
            "output": kind,
            "source_sha256": ctx.model.sha256,
            "preprocess": json.dumps(json.loads(ctx.preprocess.to_json()), sort_keys=True),
            "packager": __version__,
        },
    }


# --- conversion -------------------------------------------------------------------------------


NOISE = (
    "Failed to load",  # coremltools' macOS-only native parts, absent elsewhere
    "scikit-learn version",
    "Implicitly cleaning up",
)


@contextlib.contextmanager
def quiet(log: list[str]) -> Iterator[None]:
    """coremltools prints progress bars and import chatter on stderr; keep what matters (e.g.
    'Torch version ... has not been tested with coremltools') in `log` for the report."""
    # Not packager.core.quiet: this captures stderr and warnings for the report; the build's
    # stdout_to_stderr already guards stdout around target.build.
    import warnings

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            lines = [ln.strip() for ln in re.split(r"[\r\n]+", buf.getvalue())]
            lines += [
                str(w.message)
                for w in caught
                if not issubclass(w.category, (DeprecationWarning, FutureWarning, ResourceWarning))
            ]
            for ln in lines:
                if ln and "%|" not in ln and not ln.startswith(NOISE) and ln not in log:
                    log.append(ln)


def export(module: Any, example: Any, flexible: int | None) -> Any:
    """torch.export (torch.jit.trace is deprecated in torch 2.13); the batch stays symbolic up
    to `flexible` when given (exported at batch 2: torch specializes 1)."""
    import torch

    dims = None
    if flexible:
        example = example.repeat(2, *[1] * (example.dim() - 1))
        dims = {"x": {0: torch.export.Dim("batch", min=1, max=max(flexible, 2))}}
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=dims)


def wrap(body: Any, softmax: bool) -> Any:
    import torch

    class ForCoreML(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.body(x)
            return torch.softmax(y, dim=-1) if softmax else y

    return ForCoreML().eval()


def convert(ctx: BuildContext, p: Plan, program: Any, log: list[str]) -> Any:
    with quiet(log):
        import coremltools as ct

    opts: Options = ctx.options
    pre = ctx.preprocess
    shape = list(pre.input_shape(1))[1:]
    if p.image:
        scale, bias = image_scale_bias(pre)
        gray = pre.channels == 1
        inp = ct.ImageType(
            name=IMAGE_INPUT,
            shape=(1, *shape),
            scale=scale,
            bias=bias[0] if gray else bias,
            color_layout=ct.colorlayout.GRAYSCALE if gray else ct.colorlayout.RGB,
            channel_first=pre.layout == "NCHW",
        )
    else:
        batch = p.batch or ct.RangeDim(1, opts.max_batch, default=1)
        inp = ct.TensorType(name=TENSOR_INPUT, shape=ct.Shape((batch, *shape)), dtype=np.float32)
    kwargs: dict[str, Any] = (
        {"classifier_config": ct.ClassifierConfig(list(ctx.labels.names))}
        if p.classifier
        else {"outputs": [ct.TensorType(name=SCORES_OUTPUT, dtype=np.float32)]}
    )
    precision = {"fp16": ct.precision.FLOAT16, "fp32": ct.precision.FLOAT32}[opts.precision]
    with quiet(log):
        return ct.convert(
            program.run_decompositions({}),
            inputs=[inp],
            convert_to="mlprogram",
            compute_precision=precision,
            minimum_deployment_target=getattr(ct.target, opts.minimum_deployment_target),
            skip_model_load=True,  # loading needs Core ML (macOS); the spec check reads it back
            **kwargs,
        )


def describe(ml: Any, ctx: BuildContext, p: Plan, meta: dict[str, Any]) -> None:
    labels = ctx.labels
    pre = ctx.preprocess
    ml.author, ml.license = meta["author"], meta["license"]
    ml.short_description, ml.version = meta["short_description"], meta["version"]
    ml.user_defined_metadata.update(meta["user"])
    color = "grayscale" if pre.channels == 1 else "RGB"
    ml.input_description[p.input_name] = (
        f"{pre.size}x{pre.size} {color} image; the model applies [preprocess] itself"
        if p.image
        else f"preprocessed {pre.layout} tensor (preprocess.py with preprocess.json)"
    )
    if p.classifier:
        ml.output_description[LABEL_OUTPUT] = (
            f"most probable class; for the clinical decision use {PROBS_OUTPUT}"
            f"['{labels.positive}'] >= {labels.threshold}"
        )
        ml.output_description[PROBS_OUTPUT] = "probability of each class"
    else:
        ml.output_description[SCORES_OUTPUT] = (
            f"{meta['user']['output']} per class, in the order {labels.names}"
        )


# --- reading the .mlpackage back (works on every host) -----------------------------------------


def make_reproducible(package: Path) -> None:
    """coremltools writes random item identifiers into Manifest.json, the conversion date into
    the metadata, and protobuf maps in hash order. Rewrite the three so the same inputs give the
    same bytes (and the same signed tarball): identifiers from each item's path, no date, and
    deterministic serialization. The spec itself is unchanged."""
    from coremltools.proto import Model_pb2

    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    items = manifest["itemInfoEntries"]
    ids = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, item["path"])) for old, item in items.items()}
    root = items[manifest["rootModelIdentifier"]]
    manifest["itemInfoEntries"] = {ids[old]: item for old, item in items.items()}
    manifest["rootModelIdentifier"] = ids[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")

    spec_path = package / "Data" / root["path"]
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    user = spec.description.metadata.userDefined
    if CONVERSION_DATE in user:
        del user[CONVERSION_DATE]
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


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
    opts: Options = ctx.options
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
        if (
            got["type"] != "imageType"
            or got["size"] != [pre.size, pre.size]
            or got["color"] != want
        ):
            io_.append(f"input {got}, expected a {pre.size}x{pre.size} {want} image")
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
    opts: Options = ctx.options
    kind = options["scores"]
    x = ctx.x
    ref = ctx.reference
    proxy = TorchProxy(stage, options)
    proxy.load()
    try:
        ours = to_probabilities(infer_all(proxy, x, 64, ctx.model.fixed_batch), kind)
    finally:
        proxy.close()
    pos, thr = ctx.labels.positive_index, ctx.labels.threshold
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


# --- the target ---------------------------------------------------------------------------------


def _macos_major() -> int:
    major = platform.mac_ver()[0].split(".")[0]
    return int(major) if major.isdigit() else 0


class AppleCoreML(Target):
    name = "apple-coreml"
    summary = "Core ML ML Program (.mlpackage) for iPhone, iPad and Mac"
    limitations = (
        "other Apple devices: Core ML picks the compute unit (CPU, GPU, Neural Engine) per "
        "device; only the compute units benchmarked on the validating Mac were run",
    )
    Options = Options

    def availability(self) -> Availability:
        why = missing({"coremltools": "coremltools", "torch": "torch"}, "coreml")
        if why:
            no = Status(False, why)
            return Availability(build=no, validate=no, bench=no)
        if sys.platform != "darwin":
            runs = Status(False, NOT_MAC.format(system=platform.system() or sys.platform))
        elif _macos_major() < 12:
            runs = Status(
                False, f"ML Programs need macOS 12 or newer (this is {platform.mac_ver()[0]})"
            )
        else:
            runs = Status(True)
        return Availability(build=Status(True), validate=runs, bench=runs)

    def accepts(self, model: ModelInfo, options: Any = None) -> Status:
        """The translation's own operator table (onnx_to_torch.py) against the model."""
        status = super().accepts(model, options)
        if not status.ok or missing({"torch": "torch"}, "coreml"):
            return status
        from packager.targets.apple_coreml.onnx_to_torch import uncovered_ops

        unknown = uncovered_ops(model.operators)
        if not unknown:
            return Status(True)
        reason = (
            "the ONNX->PyTorch translation Core ML is converted through does not cover "
            + ", ".join(unknown)
        )
        if model.quantization:
            reason += (
                f" ({model.quantization.format}-format quantization): Core ML takes the float "
                "model (quantize for Core ML with coremltools.optimize after conversion)"
            )
        else:
            reason += ": re-export without them or choose another target"
        return Status(False, reason)

    # ---- precision search (packager.builder.search) -----------------------------------------------

    search_option: ClassVar[str | None] = "precision"

    def search_space(self, options: Any) -> list[Candidate]:
        """fp16 and fp32; off macOS both are validated on the labelled proxy and marked so."""
        return [Candidate("fp16", {"precision": "fp16"}), Candidate("fp32", {"precision": "fp32"})]

    def build(self, ctx: BuildContext, stage: Path) -> BuildOutput:
        import torch

        from packager.targets.apple_coreml.onnx_to_torch import to_torch

        opts: Options = ctx.options
        p = plan(ctx)
        log: list[str] = []
        module = wrap(to_torch(load_model(ctx.model_path)), p.softmax)
        # One program serves both: Core ML fixes its own input batch, and the proxy runs batched.
        fixed = ctx.model.fixed_batch
        example = torch.zeros(ctx.preprocess.input_shape(fixed or 1), dtype=torch.float32)
        with ctx.progress.step(self.name, "torch.export of the translated module"), quiet(log):
            program = export(module, example, None if fixed else opts.max_batch)
        (stage / INTERMEDIATE).parent.mkdir(parents=True)
        torch.export.save(program, str(stage / INTERMEDIATE))
        with ctx.progress.step(self.name, f"coremltools.convert ({opts.precision})"):
            ml = convert(ctx, p, program, log)
        meta = metadata(ctx, p)
        describe(ml, ctx, p, meta)
        ml.save(str(stage / MODEL))
        make_reproducible(stage / MODEL)
        options = {
            "model": MODEL,
            "intermediate": INTERMEDIATE,
            "compute_units": opts.compute_units,
            "input_name": p.input_name,
            "image": p.image,
            "classifier": p.classifier,
            "labels": list(ctx.labels.names),
            "batch": p.batch,
            "intermediate_batch": fixed,
            "max_batch": opts.max_batch,
            "softmax": p.softmax,
            "scores": ctx.output_kind,
        }
        spec = read_spec(stage / MODEL)
        checks = spec_checks(spec, ctx, p, meta)
        with ctx.progress.step(self.name, "checking the PyTorch module against ONNX Runtime"):
            translation, translation_details = translation_check(ctx, stage, options)
        return BuildOutput(
            precision=opts.precision,
            runtime_config=options,
            details={
                "minimum_deployment_target": opts.minimum_deployment_target,
                "compute_units": opts.compute_units,
                "input": "image" if p.image else "multiarray",
                "output": "classifier" if p.classifier else "scores",
                "batch": p.batch or f"flexible 1..{opts.max_batch}",
                "image_scale_bias": image_scale_bias(ctx.preprocess) if p.image else None,
                "spec": spec,
                "translation": translation_details,
                "conversion_log": log,
                "intermediate": INTERMEDIATE,
            },
            notes=p.notes,
            checks=checks + translation,
            artifacts=[
                str(f.relative_to(stage)) for f in sorted((stage / MODEL).rglob("*")) if f.is_file()
            ],
        )

    def requirements(self, options: dict[str, Any]) -> list[str]:
        return ["coremltools"]

    def proxy(self, options: dict[str, Any]) -> Proxy | None:
        return Proxy("torch", PROXY_LABEL)

    def bench_variants(self, options: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        others = [u for u in ("ALL", "CPU_ONLY", "CPU_AND_NE") if u != options["compute_units"]]
        return [(f"compute units {u}", {"compute_units": u}) for u in others]
