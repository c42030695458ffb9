"""apple-coreml's conversion: the Core ML model's interface decided from the config (the plan),
the translated module exported with torch.export, coremltools.convert, the model's metadata and
descriptions, and the saved .mlpackage made reproducible."""

from __future__ import annotations

import contextlib
import io
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packager.core.target import BuildContext
from packager.core.version import __version__
from packager.shipped.preprocess import Preprocess
from packager.targets.apple_coreml.runtime import PROBS_OUTPUT, SCORES_OUTPUT

CONVERSION_DATE = "com.github.apple.coremltools.conversion_date"  # differs every day
IMAGE_INPUT, TENSOR_INPUT = "image", "input"
LABEL_OUTPUT = "classLabel"


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
    opts = ctx.options
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
    if classifier and ctx.labels.multilabel:
        notes.append(
            "a multi-label model's outputs are independent findings, not one class: a scores "
            "output is used, not a classifier"
        )
        classifier = False
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
    if labels.multilabel:
        each = ", ".join(f"{n} >= {labels.threshold_of(n)}" for n in labels.names)
        decision = f"Decide each finding when its probability meets its threshold: {each}."
    kind = "probabilities" if p.classifier else ctx.output_kind
    summary = m.description or (f"{m.name} {m.version}: {' / '.join(labels.names)} classifier")
    return {
        "author": m.author or "unspecified ([model] author)",
        "license": m.license or "unspecified ([model] license)",
        "short_description": f"{summary.rstrip('.')}. {decision}",
        "version": m.version,
        "user": {
            "name": m.name,
            "threshold": repr(labels.threshold)
            if not labels.multilabel
            else json.dumps({n: labels.threshold_of(n) for n in labels.names}),
            "positive_class": "" if labels.multilabel else labels.positive,
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

    opts = ctx.options
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
        f"{pre.hw[0]}x{pre.hw[1]} {color} image; the model applies [preprocess] itself"
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
