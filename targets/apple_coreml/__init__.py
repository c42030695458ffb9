"""apple-coreml: a Core ML ML Program (.mlpackage) for iPhone, iPad and Mac.

coremltools dropped its ONNX converter (6.0), so the path is ONNX -> PyTorch (our own translation,
onnx_to_torch/ beside this file) -> torch.export -> coremltools.convert. Core ML predictions only run
on macOS, so verification is split by what each host can do:

- every host: the intermediate PyTorch module is compared with ONNX Runtime on the validation
  split (max |p| difference and flipped decisions, a gate), and the saved .mlpackage spec is
  read back and checked (inputs, outputs, class labels, metadata, weight precision);
- elsewhere than macOS: the clinical gates run on that intermediate module, labelled as a proxy,
  and the report says `not-validated`; `packager validate BUNDLE --data ...` on a Mac completes it;
- macOS: validation and benchmark on Core ML itself through coremltools' prediction API.

The steps live beside this file: convert.py (the plan, torch.export, coremltools.convert, the
metadata) and checks.py (the spec read back, the translation check); runtime.py is what ships.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal

from packager.core.errors import UserError
from packager.core.installed import missing
from packager.core.model import ModelInfo, load_model
from packager.core.schema import typed
from packager.core.target import (
    Availability,
    BuildContext,
    BuildOutput,
    Candidate,
    Proxy,
    Status,
    Target,
)
from packager.targets.apple_coreml.checks import read_spec, spec_checks, translation_check
from packager.targets.apple_coreml.convert import (
    convert,
    describe,
    export,
    image_scale_bias,
    make_reproducible,
    metadata,
    plan,
    quiet,
    wrap,
)
from packager.targets.apple_coreml.runtime import NOT_MAC

MODEL = "model.mlpackage"
INTERMEDIATE = "intermediate/model.pt2"
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
        """The translation's own operator table (onnx_to_torch/) against the model."""
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
