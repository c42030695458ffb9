"""A multi-label model as one binary problem per finding: each finding's column of the
probabilities and labels, its own threshold and its own gates ([gates] with
[gates.findings.<name>] over it). Every binary metric, gate and piece of evidence then runs on a
finding unchanged, and a gate line carries the finding in its name: min_sensitivity[finding=x]."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from packager.core.config import Config, LabelsConfig
from packager.core.target import Check


@dataclass(frozen=True)
class Finding:
    name: str
    index: int  # the model output (and labels column) it reads
    threshold: float


def findings(labels: LabelsConfig) -> list[Finding]:
    """Every finding of a multi-label model, in output order; none for one class per image."""
    if not labels.multilabel:
        return []
    return [Finding(n, i, labels.threshold_of(n)) for i, n in enumerate(labels.names)]


def binary(probs: np.ndarray, f: Finding) -> np.ndarray:
    """(N, 2) [1 - p, p] of the finding: the shape every binary metric reads (positive = 1)."""
    p = np.asarray(probs, np.float64)[:, f.index]
    return np.stack([1.0 - p, p], axis=1)


def config_for(cfg: Config, f: Finding) -> Config:
    """The config of the finding as a binary model: its threshold, its gates (model-wide custom
    gates stay with the model, checked once)."""
    labels = LabelsConfig(
        task="binary",
        names=[f"not {f.name}", f.name],
        positive=f.name,
        threshold=f.threshold,
        output="probabilities",
        threshold_rationale=cfg.labels.threshold_rationale,
    )
    gates = dataclasses.replace(cfg.gates.for_finding(f.name), custom={}, classes={})
    return dataclasses.replace(cfg, labels=labels, gates=gates)


def named(checks: list[Check], f: Finding) -> list[Check]:
    """The finding's gate lines, each named for it."""
    return [dataclasses.replace(c, name=f"{c.name}[finding={f.name}]") for c in checks]
