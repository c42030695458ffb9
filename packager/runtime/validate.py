"""Runner x dataset -> clinical metrics and gate checks; the same code for every target."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from packager.core.config import FRACTION_GATES, Config
from packager.core.errors import UserError
from packager.core.metrics import Clinical, clinical, to_probabilities
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
    if cfg.labels.output != "auto":
        return cfg.labels.output
    return "probabilities" if ends_with_softmax else "logits"


def evaluate(
    scores: np.ndarray, labels: np.ndarray, cfg: Config, kind: str, reference: np.ndarray | None
) -> tuple[np.ndarray, Clinical]:
    probs = to_probabilities(scores, kind)
    if probs.shape[1] != len(cfg.labels.names):
        raise UserError(
            f"the model gives {probs.shape[1]} scores but [labels] names lists "
            f"{len(cfg.labels.names)} classes; list one name per output"
        )
    return probs, clinical(
        probs, labels, cfg.labels.positive_index, cfg.labels.threshold, reference
    )


# A subgroup gate's name carries its subgroup: min_subgroup_sensitivity[site=B]; a custom
# metric's is custom:<name>:<min|max>.
CLINICAL_GATES = ("finite_outputs", *FRACTION_GATES, "paired_alpha")


def is_clinical_gate(name: str) -> bool:
    return name.split("[", 1)[0] in CLINICAL_GATES or name.startswith("custom:")


def gate_checks(c: Clinical, cfg: Config, has_reference: bool) -> list[Check]:
    """The clinical gates (CLINICAL_GATES), the same for every target."""
    g = cfg.gates
    checks = [
        Check("finite_outputs", c.finite, True, c.finite, "" if c.finite else "NaN or Inf scores"),
        Check(
            "min_sensitivity",
            round(c.sensitivity, 6),
            g.min_sensitivity,
            c.sensitivity >= g.min_sensitivity,
        ),
    ]
    if has_reference and c.sensitivity_drop is not None:
        checks.append(
            Check(
                "max_sensitivity_drop",
                round(c.sensitivity_drop, 6),
                g.max_sensitivity_drop,
                c.sensitivity_drop <= g.max_sensitivity_drop + 1e-12,
            )
        )
    return checks
