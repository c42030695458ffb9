"""edge-ort: ONNX Runtime's mobile format (.ort) for Android, iOS and small ARM boxes — the
reduced-build operator config, the NNAPI / CoreML usability report, optional INT8 and an optional
second model that takes encoded PNG/JPEG bytes (pre-processing inside the graph).

The steps live beside this file: convert.py (INT8, the .ort conversion, the usability report)
and preprocessing.py (the image-bytes model); runtime.py is what ships."""

from __future__ import annotations

import json
import tempfile
from dataclasses import field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import onnx

from packager.convert.ort_quant import OFFENDING_SQNR_DB, qdq_layer_errors
from packager.convert.ort_support import ort_accepts
from packager.core.errors import UserError
from packager.core.model import ModelInfo, load_model, opset_of
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
from packager.targets.edge_ort.convert import (
    convert_to_ort,
    mobile_usability,
    ort_version,
    quantized,
)
from packager.targets.edge_ort.preprocessing import extensions_version, image_model, pre_only

MODEL = "model.ort"
IMAGE_MODEL = "model_image.ort"
CONFIG = "required_operators.config"
IMAGE_CONFIG = "required_operators_image.config"
USABILITY = "mobile_usability.txt"
IMAGE_REPORT = "image_model_validation.json"
IMAGE_AGREEMENT = "image_model_agreement"  # the gate line
IN_GRAPH_PREPROCESSING = "in-graph pre-processing"  # measured only
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
            model = quantized(source, opts.quantize, ctx, work / "model.onnx")
            style, platform = opts.optimization_style, opts.target_platform
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
            convert_to_ort(work / "model.onnx", stage / MODEL, stage / CONFIG, style, platform)
            details["ort_size_mb"] = _mb(stage / MODEL)
            if opts.quantize != "none":
                onnx.save(source, str(work / "float.onnx"))
                convert_to_ort(
                    work / "float.onnx", work / "float.ort", work / "float.config", style, platform
                )
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
                    work / "model_image.onnx",
                    stage / IMAGE_MODEL,
                    stage / IMAGE_CONFIG,
                    style,
                    platform,
                    custom_ops=True,
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
            CrossCheck(IN_GRAPH_PREPROCESSING, "image-bytes", inputs="images", scratch=pre_only),
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


def _mb(path: Path) -> float:
    return path.stat().st_size / 2**20
