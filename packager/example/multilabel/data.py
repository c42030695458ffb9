"""Multi-label data from PneumoniaMNIST: one real finding, the others SYNTHETIC.

Finding 1, `pneumonia`, is PneumoniaMNIST's own label (read by radiologists in the source
dataset). Every other finding is synthetic: a deterministic function of the 28x28 pixels, cut at a
quantile of its train-split values, so its "ground truth" is exact and cheap but has no clinical
meaning. They exist to exercise multi-label packaging (per-finding thresholds, gates, metrics),
never to claim anything about chest X-rays. On the float pixels x (0..255) of one image:

- `bright`: mean(x) above the train-split median (~50% positives);
- `asymmetric`: |mean(left 14 columns) - mean(right 14 columns)| above its train 70th percentile
  (~30% positives).

The 14-finding set (the DenseNet-121-sized benchmark) adds eleven more, same construction:

- `bright_<row>_<col>` for the 3x3 grid with row/column bounds [0, 9), [9, 19), [19, 28): that
  region's mean above its train quantile, the quantiles cycling 50%, 70%, 90% in row-major order
  (~50%, 30%, 10% positives);
- `high_contrast`: std(x) above its train 70th percentile;
- `top_heavy`: mean(top 14 rows) - mean(bottom 14 rows), signed, above its train 80th percentile.

"Above" is strict (>). The images are copied unchanged; the labels are (N, K) int64 0/1 in the
order of `finding_names(K)`. The npz is written wherever the caller says (an output folder or the
cache), never into the repository.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
FINDINGS = ("pneumonia", "bright", "asymmetric")
GRID_BOUNDS = (0, 9, 19, 28)  # row and column bounds of the 3x3 grid (28 px images)
GRID_NAMES = ("upper", "middle", "lower"), ("left", "centre", "right")
REGION_QUANTILES = (0.5, 0.7, 0.9)

Feature = Callable[[np.ndarray], np.ndarray]  # float images (N, H, W) -> one value per image


def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=(1, 2))


def _asymmetry(x: np.ndarray) -> np.ndarray:
    half = x.shape[2] // 2
    return np.abs(_mean(x[:, :, :half]) - _mean(x[:, :, half:]))


def _region(row: int, col: int) -> Feature:
    r0, r1 = GRID_BOUNDS[row], GRID_BOUNDS[row + 1]
    c0, c1 = GRID_BOUNDS[col], GRID_BOUNDS[col + 1]
    return lambda x: _mean(x[:, r0:r1, c0:c1])


def _contrast(x: np.ndarray) -> np.ndarray:
    return x.std(axis=(1, 2))


def _top_heavy(x: np.ndarray) -> np.ndarray:
    half = x.shape[1] // 2
    return _mean(x[:, :half]) - _mean(x[:, half:])


def _synthetic() -> list[tuple[str, Feature, float]]:
    """(name, feature, train quantile of its cut) of every synthetic finding, in label order."""
    found: list[tuple[str, Feature, float]] = [
        ("bright", _mean, 0.5),
        ("asymmetric", _asymmetry, 0.7),
    ]
    for i in range(9):
        row, col = divmod(i, 3)
        name = f"bright_{GRID_NAMES[0][row]}_{GRID_NAMES[1][col]}"
        found.append((name, _region(row, col), REGION_QUANTILES[i % 3]))
    return [*found, ("high_contrast", _contrast, 0.7), ("top_heavy", _top_heavy, 0.8)]


SYNTHETIC = _synthetic()
SIZES = (len(FINDINGS), 1 + len(SYNTHETIC))  # the two finding sets: 3 and 14


def finding_names(findings: int) -> tuple[str, ...]:
    if findings not in SIZES:
        raise ValueError(f"{findings} findings: the example has {SIZES[0]} or {SIZES[1]}")
    return ("pneumonia", *(name for name, _, _ in SYNTHETIC[: findings - 1]))


def _features(images: np.ndarray, findings: int) -> np.ndarray:
    x = images.astype(np.float64)
    return np.stack([f(x) for _, f, _ in SYNTHETIC[: findings - 1]], axis=1)


def cuts(train_images: np.ndarray, findings: int) -> np.ndarray:
    """Each synthetic finding's cut: its quantile over the train split (never val or test)."""
    values = _features(train_images, findings)
    qs = [q for _, _, q in SYNTHETIC[: findings - 1]]
    return np.array([np.quantile(values[:, i], q) for i, q in enumerate(qs)])


def labels(images: np.ndarray, pneumonia: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """(N, 1 + len(cut)) int64: the real pneumonia label, then each synthetic finding."""
    synthetic = _features(images, 1 + len(cut)) > cut
    return np.column_stack([np.asarray(pneumonia).reshape(-1), synthetic]).astype(np.int64)


def write_multilabel(src: Path, dest: Path, findings: int = len(FINDINGS)) -> Path:
    """PneumoniaMNIST at `src` -> a multi-label npz at `dest`: {split}_images unchanged and
    {split}_labels (N, findings). Written to a temporary name and renamed (parallel tests)."""
    finding_names(findings)  # refuses an unknown size
    with np.load(src) as d:
        data = {k: d[k] for k in d.files}
    cut = cuts(data["train_images"], findings)
    out: dict[str, np.ndarray] = {}
    for split in SPLITS:
        images = data[f"{split}_images"]
        out[f"{split}_images"] = images
        out[f"{split}_labels"] = labels(images, data[f"{split}_labels"], cut)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.npz")
    np.savez_compressed(tmp, **out)  # type: ignore[arg-type]
    tmp.replace(dest)
    return dest
