"""cpu-openvino: OpenVINO IR on the CPU plugin, with the inference precision pinned to the one the
bundle was validated at, and optional INT8 through NNCF (post-training, or accuracy-controlled on
sensitivity so the quantizer keeps in float whatever layers it must).

The steps live beside this file: convert.py (OpenVINO's frontend), quantize.py (NNCF INT8) and
serve.py (Triton and OpenVINO Model Server files); runtime.py is what ships."""

from __future__ import annotations

from dataclasses import field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

from packager.core.errors import Unavailable, UserError
from packager.core.installed import missing
from packager.core.model import ModelInfo
from packager.core.schema import Threads, typed
from packager.core.target import (
    PRE_QUANTIZED,
    Availability,
    BuildContext,
    BuildOutput,
    Candidate,
    Check,
    Diagnosis,
    Status,
    Target,
)
from packager.targets.cpu_openvino.convert import convert_source, frontend_check, refusals
from packager.targets.cpu_openvino.quantize import int8_note, quantize
from packager.targets.cpu_openvino.serve import write_serving

# What each bundle precision computes in on the CPU. fp16 and int8 IRs keep f32 activations for
# everything that is not quantized; only bf16 lowers the arithmetic itself.
INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f32", "int8": "f32", "bf16": "bf16"}


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

    def data_splits(self, options: Any) -> tuple[str, ...]:
        accuracy_control = options.precision == "int8" and options.int8_mode == "accuracy-control"
        return (options.control_split,) if accuracy_control else ()

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
            notes.append(int8_note(details["int8"]))
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
        details["serving"] = write_serving(ctx, stage, runtime_config)
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
