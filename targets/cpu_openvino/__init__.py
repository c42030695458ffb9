"""cpu-openvino: OpenVINO IR on the CPU plugin, with the inference precision pinned to the one the
bundle was validated at, and optional INT8 through NNCF (post-training, or accuracy-controlled on
sensitivity so the quantizer keeps in float whatever layers it must)."""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from packager.convert.triton import Tensor, TritonModel, serve_commands, write_repository
from packager.core.errors import ConversionFailed, ModelRefused, Unavailable, UserError
from packager.core.installed import missing
from packager.core.metrics import clinical, to_probabilities
from packager.core.model import ModelInfo
from packager.core.schema import Threads, typed
from packager.core.target import (
    PRE_QUANTIZED,
    REEXPORT_QDQ,
    Availability,
    BuildContext,
    BuildOutput,
    Candidate,
    Check,
    Diagnosis,
    Status,
    Target,
)

# What each bundle precision computes in on the CPU. fp16 and int8 IRs keep f32 activations for
# everything that is not quantized; only bf16 lowers the arithmetic itself.
INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f32", "int8": "f32", "bf16": "bf16"}
WEIGHTED_OPS = {
    "Convolution",
    "GroupConvolution",
    "ConvolutionBackpropData",
    "GroupConvolutionBackpropData",
    "MatMul",
}
INT_WEIGHTS = {"i8", "u8", "i4", "u4"}
# Ops NNCF may put between a weight constant and the layer that reads it.
WEIGHT_PATH_OPS = {
    "Convert",
    "Multiply",
    "Subtract",
    "Reshape",
    "Transpose",
    "Unsqueeze",
    "Squeeze",
}
OVMS_IMAGE = "openvino/model_server:latest"


@typed
class Options:
    # auto: packager.builder.search tries every candidate, ships the best one passing every gate.
    precision: Literal["fp32", "fp16", "bf16", "int8", "auto"] = "fp32"
    int8_mode: Literal["ptq", "accuracy-control"] = "ptq"
    objective: Literal["latency", "throughput", "size"] = "latency"  # what auto optimizes
    keep_float: list[str] = field(default_factory=list)  # INT8: layers NNCF must not quantize
    # accuracy-control measures sensitivity on this split; never the validation split.
    control_split: str = "val"
    control_size: int = 1000  # images drawn from control_split (all of them when fewer)
    preset: Literal["performance", "mixed"] = "performance"
    threads: Threads = 0  # 0: OpenVINO's default (every core)

    def check(self, where: str) -> None:
        if self.control_size < 1:
            raise UserError(f"{where}.control_size must be at least 1")


# ---------------------------------------------------------------------------------- availability


@cache
def _cpu_status() -> Status:
    why = missing({"openvino": "openvino"}, "openvino")
    if why:
        return Status(False, why)
    import openvino as ov

    if "CPU" not in ov.Core().available_devices:
        return Status(False, "OpenVINO finds no CPU device here (it needs x86-64 or ARM64)")
    return Status(True)


@cache
def cpu_facts() -> dict[str, Any]:
    """What OpenVINO's CPU plugin offers on this host, and the precision it picks by default."""
    import openvino as ov

    core = ov.Core()
    return {
        "device": core.get_property("CPU", "FULL_DEVICE_NAME"),
        "capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        "default_inference_precision": core.get_property(
            "CPU", "INFERENCE_PRECISION_HINT"
        ).get_type_name(),
    }


# ------------------------------------------------------------------------------------ conversion


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


@contextmanager
def _nncf_output(verbose: bool) -> Iterator[None]:
    """NNCF logs at INFO only when progress is shown (the build keeps its stdout off --json)."""
    import nncf

    level = logging.getLogger("nncf").level
    nncf.set_log_level(logging.INFO if verbose else logging.ERROR)
    try:
        yield
    finally:
        nncf.set_log_level(level)


def _chunks(a: np.ndarray, size: int, fill: Any = None) -> list[np.ndarray]:
    """`a` cut into items of the model's batch size; the last is padded (with `fill`, or by
    repeating its last row)."""
    out = []
    for i in range(0, len(a), size):
        c = a[i : i + size]
        if len(c) < size:
            n = size - len(c)
            pad = (
                np.repeat(c[-1:], n, axis=0)
                if fill is None
                else np.full((n, *c.shape[1:]), fill, c.dtype)
            )
            c = np.concatenate([c, pad])
        out.append(np.ascontiguousarray(c))
    return out


class SensitivityMetric:
    """NNCF validation function: sensitivity at the configured threshold (higher is better).

    Per-item outputs are returned too, so NNCF ranks layers by how much each one changes the
    scores (its NMSE mode): a per-image sensitivity is 0 or 1 and ranks nothing."""

    def __init__(self, positive: int, threshold: float, kind: str) -> None:
        self.positive, self.threshold, self.kind = positive, threshold, kind

    def __call__(
        self, compiled: Any, items: Iterable[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[float, list[list[np.ndarray]]]:
        outs, labels = [], []
        for x, y in items:
            outs.append(np.array(compiled(x)[0], np.float32))
            labels.append(y)
        return self.sensitivity(np.concatenate(outs), np.concatenate(labels)), [[o] for o in outs]

    def sensitivity(self, scores: np.ndarray, labels: np.ndarray) -> float:
        probs = to_probabilities(scores, self.kind)
        return clinical(probs, labels, self.positive, self.threshold).sensitivity


def _weight_kind(op: Any) -> str | None:
    """'int8' when a weighted layer reads quantized weights, 'float' when it reads float
    constants, None when its second input is not a weight."""
    node = op.input_value(1).get_node()
    while True:
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return "int8"
        if kind == "Constant":
            return "int8" if node.get_element_type().get_type_name() in INT_WEIGHTS else "float"
        if kind not in WEIGHT_PATH_OPS:
            return None
        node = node.input_value(0).get_node()


def layer_precisions(model: Any) -> dict[str, list[str]]:
    """Weighted layers (convolutions, matmuls) of an IR split by the precision of their weights."""
    out: dict[str, list[str]] = {"int8": [], "float": []}
    for op in model.get_ordered_ops():
        if op.get_type_name() in WEIGHTED_OPS:
            kind = _weight_kind(op)
            if kind:
                out[kind].append(op.get_friendly_name())
    return out


@cache
def _converted(path: str, mtime_ns: int) -> Any:
    import openvino as ov

    return ov.convert_model(path)


def convert_source(path: Path) -> Any:
    """The source model as an OpenVINO model: converted once per file content in this process
    (a precision search builds several candidates from it), a fresh clone per caller."""
    return _converted(str(path), path.stat().st_mtime_ns).clone()


# The fully quantized model accuracy control starts from is exactly what PTQ produces with the
# same calibration and preset: a search reuses it instead of calibrating twice.
_PTQ_SEEN: dict[tuple[Any, ...], Any] = {}


def _ptq_key(ctx: BuildContext) -> tuple[Any, ...]:
    o = ctx.options
    return (str(ctx.model_path), ctx.calibration, o.preset, tuple(o.keep_float))


def _compile_f32(model: Any) -> Any:
    import openvino as ov

    return ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def quantize(ctx: BuildContext, model: Any) -> tuple[Any, dict[str, Any], list[Check]]:
    """INT8 with NNCF: calibration from a non-validation split; with accuracy control, the
    allowed sensitivity drop on the control split is [gates] max_sensitivity_drop."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    opts = ctx.options
    batch = ctx.model.fixed_batch or 1
    cal_images = ctx.calibration()
    calibration = _chunks(cal_images, batch)
    common: dict[str, Any] = {
        "subset_size": len(calibration),
        "preset": nncf.QuantizationPreset(opts.preset),
        "target_device": nncf.TargetDevice.CPU,
    }
    if opts.keep_float:
        common["ignored_scope"] = nncf.IgnoredScope(names=list(opts.keep_float))
    details: dict[str, Any] = {
        "mode": opts.int8_mode,
        "preset": opts.preset,
        "calibration": {"split": ctx.data.calibration_split, "images": len(cal_images)},
    }
    verbose = ctx.progress.enabled
    if opts.keep_float:
        details["kept_in_float_by_config"] = list(opts.keep_float)
    if opts.int8_mode == "ptq":
        seen = _PTQ_SEEN.get(_ptq_key(ctx))
        if seen is not None:
            from openvino._offline_transformations import compress_quantize_weights_transformation

            q = seen.clone()
            # Accuracy control keeps float weights behind FakeQuantize; PTQ stores them in INT8
            # (what nncf.quantize does itself with this same pass).
            compress_quantize_weights_transformation(q)
            details["calibration"]["reused"] = "the accuracy-control run's PTQ model"
        else:
            with _nncf_output(verbose):
                q = nncf.quantize(model, nncf.Dataset(calibration), **common)
        details["layers"] = layer_precisions(q)
        return q, details, []

    control = ctx.dataset(opts.control_split).subset(opts.control_size, ctx.data.seed)
    xs = _chunks(ctx.preprocess(control.images), batch)
    ys = _chunks(control.labels, batch, fill=-1)  # padding rows are never positives
    items = list(zip(xs, ys, strict=True))
    metric = SensitivityMetric(
        ctx.labels.positive_index,
        ctx.labels.threshold,
        ctx.output_kind,
    )
    max_drop = ctx.gates.max_sensitivity_drop
    fp32_sens = metric(_compile_f32(model), items)[0]
    with tempfile.TemporaryDirectory(prefix="packager-nncf-") as tmp, _nncf_output(verbose):
        q = nncf.quantize_with_accuracy_control(
            model,
            nncf.Dataset(calibration),
            nncf.Dataset(items, lambda item: item[0]),
            metric,
            max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                intermediate_model_dir=tmp
            ),
            **common,
        )
        # NNCF only logs which layers it reverted; the fully quantized model it started from
        # tells us exactly.
        ptq = ov.Core().read_model(Path(tmp) / "intermediate_model.xml")
        initial = layer_precisions(ptq)
        _PTQ_SEEN[_ptq_key(ctx)] = ptq
    layers = layer_precisions(q)
    int8_sens = metric(_compile_f32(q), items)[0]
    drop = fp32_sens - int8_sens
    details["layers"] = layers
    details["reverted_to_float"] = [n for n in layers["float"] if n not in initial["float"]]
    details["control"] = {
        "split": opts.control_split,
        "images": len(control),
        "positives": int((control.labels == ctx.labels.positive_index).sum()),
        "sensitivity_fp32": fp32_sens,
        "sensitivity_int8": int8_sens,
        "drop": drop,
        "max_drop": max_drop,
    }
    check = Check(
        "int8_control_sensitivity_drop",
        round(drop, 6),
        max_drop,
        drop <= max_drop + 1e-12,
        f"accuracy control on split '{opts.control_split}' ({len(control)} images)",
    )
    return q, details, [check]


def _int8_note(details: dict[str, Any]) -> str:
    layers = details["layers"]
    total = len(layers["int8"]) + len(layers["float"])
    text = (
        f"INT8 ({details['mode']}, calibrated on {details['calibration']['images']} "
        f"'{details['calibration']['split']}' images): {len(layers['int8'])} of {total} "
        "weighted layers run in INT8"
    )
    if layers["float"]:
        text += "; kept in float: " + ", ".join(layers["float"])
    if "control" in details:
        c = details["control"]
        text += (
            f". Sensitivity on '{c['split']}' ({c['images']} images): fp32 "
            f"{c['sensitivity_fp32']:.4f}, int8 {c['sensitivity_int8']:.4f} "
            f"(drop {c['drop']:.4f}, allowed {c['max_drop']})"
        )
    if not layers["int8"]:
        text += ". No layer runs in INT8: this bundle computes like the fp32 one, without speed-up"
    return text


# --------------------------------------------------------------------------------------- serving


def _write_serving(ctx: BuildContext, stage: Path, runtime_config: dict[str, Any]) -> dict:
    """A Triton model repository for the OpenVINO backend (OVMS reads the same <name>/1/ layout)
    and an OVMS config that pins the precision."""
    info, name = ctx.model, ctx.model_config.name
    precision = runtime_config["inference_precision"]
    params = {"PERFORMANCE_HINT": "LATENCY"}
    if precision == "bf16":
        params["HINT_BF16"] = "YES"
    if runtime_config["threads"]:
        params["INFERENCE_NUM_THREADS"] = str(runtime_config["threads"])
    fixed = info.fixed_batch is not None
    model = TritonModel(
        name=name,
        backend="openvino",
        # The OpenVINO backend pads every batched request up to max_batch_size; with 0 the
        # client's own batch axis goes through unchanged (the IR takes any batch).
        max_batch_size=0,
        inputs=[Tensor.from_shape(info.input.name, info.input.dtype, info.input.shape, False)],
        outputs=[Tensor.from_shape(info.output.name, info.output.dtype, info.output.shape, False)],
        instance_kind="KIND_CPU",
        warmup_batch_sizes=[1] if fixed else [],
        parameters=params,
    )
    write_repository(
        stage / "triton",
        model,
        {"model.xml": stage / "model.xml", "model.bin": stage / "model.bin"},
    )
    plugin = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if runtime_config["threads"]:
        plugin["INFERENCE_NUM_THREADS"] = str(runtime_config["threads"])
    ovms = {
        "model_config_list": [
            {"config": {"name": name, "base_path": f"/models/{name}", "plugin_config": plugin}}
        ]
    }
    (stage / "ovms_config.json").write_text(json.dumps(ovms, indent=2, sort_keys=True) + "\n")
    cmds = serve_commands(model)
    cmds["ovms"] = (
        f'docker run --rm -p 9000:9000 -p 8000:8000 -v "$PWD/triton:/models:ro" '
        f'-v "$PWD/ovms_config.json:/config.json:ro" {OVMS_IMAGE} '
        "--config_path /config.json --port 9000 --rest_port 8000"
    )
    return {
        "triton_parameters": params,
        "triton_pins_precision": precision == "bf16",
        "ovms_plugin_config": plugin,
        "commands": cmds,
    }


# ------------------------------------------------------------------------------------------ target


class CpuOpenVino(Target):
    name = "cpu-openvino"
    summary = "OpenVINO IR on the CPU plugin, inference precision pinned (fp32, fp16, bf16 or INT8)"
    Options = Options
    int8_option = ("precision", "int8")

    def availability(self) -> Availability:
        status = _cpu_status()
        return Availability(build=status, validate=status, bench=status)

    def accepts(self, model: ModelInfo, options: Any = None) -> Status:
        # QDQ models convert natively (Q/DQ pairs become FakeQuantize, executed in INT8).
        status = super().accepts(model, options)
        if not status.ok or not _cpu_status().ok:
            return status
        return frontend_check(model)

    def build(self, ctx: BuildContext, stage: Path) -> BuildOutput:
        import openvino as ov

        opts = ctx.options
        facts = cpu_facts()
        hint = INFERENCE_PRECISION[opts.precision]
        if hint == "bf16" and "BF16" not in facts["capabilities"]:
            raise Unavailable(
                f"precision 'bf16' needs a CPU with native bfloat16 (AVX512-BF16 or AMX); "
                f"OpenVINO sees {', '.join(facts['capabilities'])} on {facts['device']} — "
                "choose fp32, fp16 or int8"
            )
        why = missing({"nncf": "nncf"}, "openvino")
        if opts.precision == "int8" and why:
            raise Unavailable(f"INT8 needs NNCF: {why}")
        accuracy_control = opts.precision == "int8" and opts.int8_mode == "accuracy-control"
        if accuracy_control and opts.control_split == ctx.data.split:
            raise UserError(
                f"[targets.cpu-openvino] control_split = '{opts.control_split}' is the validation "
                "split; tuning INT8 on the images it is validated on hides errors — use 'val' or "
                "another split"
            )
        with refusals(ctx.model):
            model = convert_source(ctx.model_path)
        details: dict[str, Any] = {}
        checks: list[Check] = []
        notes = []
        if opts.precision == "int8":
            model, details["int8"], checks = quantize(ctx, model)
            notes.append(_int8_note(details["int8"]))
        # save_model compresses weights to fp16 unless told not to: only the fp16 bundle wants it.
        ov.save_model(model, stage / "model.xml", compress_to_fp16=opts.precision == "fp16")
        runtime_config = {
            "model": "model.xml",
            "inference_precision": hint,
            "hint": "both",
            "threads": opts.threads,
        }
        default = facts["default_inference_precision"]
        details["inference_precision"] = {
            "pinned": hint,
            "openvino_default_on_build_host": default,
            "cpu": facts["device"],
            "cpu_capabilities": facts["capabilities"],
        }
        notes.append(
            f"Inference precision pinned to {hint} (INFERENCE_PRECISION_HINT) in the runner, "
            f"predict.py and the OVMS config; OpenVINO's default on the build host "
            f"({facts['device']}) is {default}"
            + (
                ", so without the pin it would not run what was validated"
                if default != hint
                else ""
            )
            + "."
        )
        details["serving"] = _write_serving(ctx, stage, runtime_config)
        if not details["serving"]["triton_pins_precision"]:
            notes.append(
                "Triton's OpenVINO backend has no parameter that pins f32: on CPUs with native "
                "bfloat16 (AMX, AVX512-BF16) it computes in bf16, which this bundle was not "
                "validated at; serve with OpenVINO Model Server (ovms_config.json pins f32) there."
            )
        precision = opts.precision
        if ctx.model.quantization:  # its own Q/DQ scales; only the float layers follow the option
            precision = PRE_QUANTIZED + ("" if precision == "fp32" else f", {precision} float")
            fq = sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
            notes.append(
                f"The model came quantized ({ctx.model.quantization.format}): OpenVINO read its "
                f"Q/DQ pairs as {fq} FakeQuantize operations and runs those layers in INT8 with "
                "the model's own scales; nothing was re-quantized."
            )
        return BuildOutput(
            precision=precision,
            runtime_config=runtime_config,
            details=details,
            notes=notes,
            checks=checks,
            artifacts=["model.xml", "model.bin"],
        )

    def requirements(self, options: dict[str, Any]) -> list[str]:
        return ["openvino"]

    # ---- precision search (packager.builder.search) -----------------------------------------------------

    search_option: ClassVar[str | None] = "precision"

    def search_space(self, options: Any) -> list[Candidate]:
        """fp32, fp16, bf16 and both INT8 modes, each with its reason where it cannot run. Accuracy control
        runs before PTQ: its fully quantized starting point is the PTQ model (calibrated once)."""
        caps = cpu_facts()["capabilities"] if _cpu_status().ok else []
        no_bf16 = (
            ""
            if "BF16" in caps
            else "not a candidate: the CPU has no native bfloat16 (AVX512-BF16 or AMX); "
            f"OpenVINO sees {', '.join(caps) or 'no capabilities'}"
        )
        why = missing({"nncf": "nncf"}, "openvino")
        no_nncf = f"not a candidate: INT8 needs NNCF: {why}" if why else ""
        return [
            Candidate("fp32", {"precision": "fp32"}),
            Candidate("fp16", {"precision": "fp16"}),
            Candidate("bf16", {"precision": "bf16"}, no_bf16),
            Candidate(
                "int8-accuracy-control",
                {"precision": "int8", "int8_mode": "accuracy-control"},
                no_nncf,
            ),
            Candidate("int8-ptq", {"precision": "int8", "int8_mode": "ptq"}, no_nncf),
        ]

    def search_diagnose(
        self, ctx: BuildContext, label: str, details: dict[str, Any], others: dict[str, Any], x: Any
    ) -> Diagnosis | None:
        """Where INT8 PTQ loses the gate: the layers NNCF's accuracy control had to revert to
        float (ranked by NNCF by their effect on the scores). The accuracy-control candidate is
        itself the mixed-precision follow-up, so none is added."""
        if label != "int8-ptq":
            return None
        ac = (others.get("int8-accuracy-control") or {}).get("int8") or {}
        reverted = ac.get("reverted_to_float")
        if reverted is None:
            return Diagnosis(
                {
                    "method": "NNCF accuracy control",
                    "layers": [],
                    "reason": "accuracy control did not run, so NNCF ranked no layer",
                }
            )
        return Diagnosis(
            {
                "method": "NNCF accuracy control: layers reverted to float to hold sensitivity "
                f"on split '{ac.get('control', {}).get('split')}'",
                "layers": [{"layer": n} for n in reverted],
                "follow_up": "the int8-accuracy-control candidate keeps exactly these layers in "
                "float",
            }
        )

    def bench_variants(self, options: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        if options.get("hint", "both") != "both":
            return []
        return [
            (
                "LATENCY hint only (sync and async on one latency-compiled model)",
                {"hint": "latency"},
            ),
            (
                "THROUGHPUT hint only (sync and async on one throughput-compiled model)",
                {"hint": "throughput"},
            ),
        ]
