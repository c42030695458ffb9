"""Runner x dataset -> clinical metrics and gate checks; the same code for every target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from packager.core.config import FRACTION_GATES, Config
from packager.core.errors import UserError
from packager.core.gates import on_bounds, sensitivity_gates
from packager.core.metrics import Clinical, clinical, to_probabilities
from packager.core.status import Basis
from packager.core.target import Check
from packager.runtime.runner import Infers
from packager.shipped.predict import infer_all


def predict_all(
    runner: Infers, x: np.ndarray, batch_size: int, fixed_batch: int | None
) -> np.ndarray:
    """Scores for every row of `x`: the bundles' own batching (predict.py's infer_all)."""
    return infer_all(runner, x, batch_size, fixed_batch)


def save_validation(
    bdir: Path, labels: np.ndarray, probs: np.ndarray, reference: np.ndarray | None
) -> None:
    """validation.npz: per-image probabilities behind the report (plots, later re-validation)."""
    arrays = {"labels": labels, "probs": probs.astype(np.float32)}
    if reference is not None:
        arrays["reference"] = reference.astype(np.float32)
    np.savez(bdir / "validation.npz", **arrays)


def output_kind(cfg: Config, ends_with_softmax: bool) -> str:
    """What the model's outputs hold: "probabilities", or logits that a softmax ("logits") or,
    for a multi-label model, a sigmoid per finding ("sigmoid-logits") turns into them."""
    kind = cfg.labels.output
    if kind == "auto":
        kind = "probabilities" if ends_with_softmax else "logits"
    return "sigmoid-logits" if kind == "logits" and cfg.labels.multilabel else kind


def model_probabilities(scores: np.ndarray, cfg: Config, kind: str) -> np.ndarray:
    """The model's scores as probabilities, one column per [labels] name."""
    probs = to_probabilities(scores, kind)
    if probs.shape[1] != len(cfg.labels.names):
        raise UserError(
            f"the model gives {probs.shape[1]} scores but [labels] names lists "
            f"{len(cfg.labels.names)} classes; list one name per output"
        )
    return probs


def evaluate(
    scores: np.ndarray, labels: np.ndarray, cfg: Config, kind: str, reference: np.ndarray | None
) -> tuple[np.ndarray, Clinical]:
    """One class per image: the positive class against the rest (multi-label models are
    validated per finding, packager/builder/stages/findings.py)."""
    probs = model_probabilities(scores, cfg, kind)
    return probs, clinical(
        probs, labels, cfg.labels.positive_index, cfg.labels.threshold, reference, cfg.labels.names
    )


# A subgroup gate's name carries its subgroup: min_subgroup_sensitivity[site=B]; a custom
# metric's is custom:<name>:<min|max>.
CLINICAL_GATES = ("finite_outputs", *FRACTION_GATES, "paired_alpha")


def is_clinical_gate(name: str) -> bool:
    return name.split("[", 1)[0] in CLINICAL_GATES or name.startswith("custom:")


def gate_checks(
    c: Clinical, cfg: Config, has_reference: bool, paired: dict[str, Any] | None = None
) -> list[Check]:
    """finite_outputs and the sensitivity gates, the same for every target, deciding on 95%
    bounds where [gates] decide_on = "ci" (a build's default is "point"); `paired` is the
    evidence's paired tables, the interval of the sensitivity drop."""
    finite = Check(
        "finite_outputs",
        c.finite,
        True,
        c.finite,
        "" if c.finite else "NaN or Inf scores",
        decided_on=Basis.every,
    )
    bounds = on_bounds(cfg.gates, "point")
    return [finite, *sensitivity_gates(c, cfg.gates, paired, bounds, has_reference)]
