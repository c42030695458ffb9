"""Train the multi-label example, choose each finding's threshold on val, evaluate on val and
test with ONNX Runtime, export ONNX ending in a Sigmoid and write the packager.toml to build it.

    python -m packager.example.multilabel.train --out DIR [--data PATH] [--epochs N] [--limit N]

DIR receives multilabel.npz (data.py: pneumonia is real, the other findings synthetic),
model.onnx, training.json and packager.toml. Seeded, torch pinned to 2 threads, FP32.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from packager.core.data import file_sha256
from packager.core.progress import Progress
from packager.example.data import cache_dir, find_data
from packager.example.export import export_fp32
from packager.example.model import ResNet18
from packager.example.multilabel.data import write_multilabel
from packager.example.multilabel.project import (
    HERE,
    MIN_VAL_SENSITIVITY,
    finding_names,
    preprocess,
    write_config,
)
from packager.example.run import cached, main_of
from packager.shipped.ort_session import OrtSession
from packager.shipped.predict import infer_all

DEFAULT_EPOCHS = 4
FILES = ("multilabel.npz", "model.onnx", "training.json", "packager.toml")
# Files whose content decides the trained model; the cache key hashes them.
SOURCES = [HERE / n for n in ("data.py", "train.py", "project.py", "packager.toml")] + [
    HERE.parent / n for n in ("model.py", "export.py")
]


@dataclass
class Settings:
    epochs: int = DEFAULT_EPOCHS
    seed: int = 0
    width: int = 16  # first-stage channels (64 would be a full ResNet-18)
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    limit: int | None = None  # train on a seeded random N-image subset (smoke tests)
    threads: int = 2  # pinned: torch's reductions, hence the weights, depend on it


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)])


def fit(
    x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray], s: Settings, p: Progress
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Seeded AdamW + one-cycle, BCE with logits on every finding, last epoch kept (val is for
    the thresholds). No geometric augmentation: a shift or rotation would change the synthetic
    findings, which are exact functions of the pixels."""
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    model = ResNet18(num_classes=y.shape[1], width=s.width, in_channels=x.shape[1])
    model = model.to(memory_format=torch.channels_last)
    xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    yt = torch.from_numpy(y).float()
    xv = torch.from_numpy(val[0]).contiguous(memory_format=torch.channels_last)
    bs = min(s.batch_size, len(xt))
    steps = len(xt) // bs
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=s.lr, total_steps=s.epochs * steps, pct_start=0.2
    )
    history = []
    for epoch in range(s.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(steps):
            idx = order[i * bs : (i + 1) * bs]
            batch = xt[idx].contiguous(memory_format=torch.channels_last)
            loss = F.binary_cross_entropy_with_logits(model(batch), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        aucs = [auc(val[1][:, k], col) for k, col in enumerate(_logits(model, xv).numpy().T)]
        row = {"epoch": epoch + 1, "loss": total / steps, "val_auc": aucs}
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        p.say(
            f"[train] epoch {epoch + 1}/{s.epochs}: loss {row['loss']:.4f}, val AUC "
            f"{' '.join(f'{a:.3f}' for a in aucs)}, {row['seconds']:.1f}s"
        )
    return model.eval(), history


def auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC (scikit-learn); None when the split has only one class of this finding."""
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else None


def choose_threshold(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The highest threshold missing at most floor(5%) of the val positives, placed midway to
    the next lower val score so rounding in another runtime cannot move a val decision."""
    pos = np.sort(p[y == 1])[::-1]
    if pos.size == 0:
        raise ValueError("a finding has no positive image in the val split")
    allowed = math.floor((1 - MIN_VAL_SENSITIVITY) * pos.size)
    at = float(pos[pos.size - allowed - 1])
    below = p[p < at]
    value = float(np.clip((at + (below.max() if below.size else 0.0)) / 2, 1e-6, 1 - 1e-6))
    caught = int((p[y == 1] >= value).sum())
    return {
        "value": value,
        "allowed_misses": allowed,
        "val_positives": int(pos.size),
        "val_sensitivity": caught / pos.size,
    }


def finding_metrics(p: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, Any]:
    """Counts at `threshold` (p >= threshold is positive) and the AUC, for one finding."""
    pred, pos = p >= threshold, y == 1
    tp, fn = int((pred & pos).sum()), int((~pred & pos).sum())
    tn, fp = int((~pred & ~pos).sum()), int((pred & ~pos).sum())
    return {
        "n": int(y.size),
        "positives": tp + fn,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "auc": auc(y, p),
        "confusion": {"tp": tp, "fn": fn, "tn": tn, "fp": fp},
    }


def onnx_probabilities(model: Path, x: np.ndarray) -> np.ndarray:
    """(N, K) probabilities from the exported model on ONNX Runtime CPU (the reference)."""
    with OrtSession(model) as runner:
        return infer_all(runner, x, 64, None)


def train(src: Path, out: Path, s: Settings, progress: Progress) -> dict[str, Any]:
    """Everything above, in order; returns (and writes) out/training.json."""
    out.mkdir(parents=True, exist_ok=True)
    names = finding_names()
    npz = write_multilabel(src, out / "multilabel.npz", len(names))
    pre = preprocess()
    with np.load(npz) as d:
        split = {k: (pre(d[f"{k}_images"]), d[f"{k}_labels"]) for k in ("train", "val", "test")}
    x, y = split["train"]
    if s.limit:
        keep = np.sort(np.random.default_rng(s.seed).permutation(len(x))[: s.limit])
        x, y = x[keep], y[keep]
    progress.say(
        f"[train] ResNet-18 (width {s.width}), {len(names)} findings, {len(x)} images, "
        f"{s.epochs} epochs, seed {s.seed}, {s.threads} threads"
    )
    t0 = time.perf_counter()
    model, history = fit(x, y, split["val"], s, progress)
    seconds = time.perf_counter() - t0
    onnx_path = export_fp32(nn.Sequential(model, nn.Sigmoid()), out / "model.onnx", pre.size, 1)
    probs = {k: onnx_probabilities(onnx_path, split[k][0]) for k in ("val", "test")}
    findings: dict[str, Any] = {}
    for i, name in enumerate(names):
        th = choose_threshold(probs["val"][:, i], split["val"][1][:, i])
        findings[name] = {"threshold": th} | {
            k: finding_metrics(probs[k][:, i], split[k][1][:, i], th["value"])
            for k in ("val", "test")
        }
    summary = {
        "settings": asdict(s),
        "data": {"source": str(src), "source_sha256": file_sha256(src), "train_n": len(x)},
        "findings": findings,
        "training_seconds": seconds,
        "history": history,
        "torch": torch.__version__,
        "source_sha256": source_hash(),
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_config(out, {n: f["threshold"] for n, f in findings.items()})
    return summary


def source_hash() -> str:
    h = hashlib.sha256()
    for path in SOURCES:
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def trained_model(src: Path, s: Settings, progress: Progress) -> Path:
    """A folder holding FILES for this data, these settings and this code, from the cache when
    this exact run was done (the paths in its packager.toml are relative, so it moves whole)."""
    key = json.dumps([file_sha256(src), asdict(s), source_hash()], sort_keys=True)
    final = cache_dir() / "example-multilabel" / hashlib.sha256(key.encode()).hexdigest()[:20]
    return cached(final, FILES, lambda tmp: train(src, tmp, s, progress), progress)


def summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = [f"training {summary['training_seconds']:.0f}s ({summary['data']['train_n']} images)"]
    for name, f in summary["findings"].items():
        lines.append(f"{name}: threshold {f['threshold']['value']:.6g}")
        for k in ("val", "test"):
            m = f[k]
            lines.append(
                f"  {k:4} ({m['n']}, {m['positives']} positives) sensitivity "
                f"{_num(m['sensitivity'])}  specificity {_num(m['specificity'])}  "
                f"AUC {_num(m['auc'])}"
            )
    return lines


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


@click.command()
@click.option("--data", type=click.Path(path_type=Path), default=None, help="pneumoniamnist.npz")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--epochs", default=DEFAULT_EPOCHS, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True)
@click.option("--limit", type=click.IntRange(min=64), default=None, help="Train on N images.")
def cli(data: Path | None, out: Path, epochs: int, seed: int, limit: int | None) -> None:
    """Train, choose per-finding thresholds on val, evaluate on val and test, export ONNX."""
    s = Settings(epochs=epochs, seed=seed, limit=limit)
    summary = train(find_data(data), out.resolve(), s, Progress(True))
    click.echo("\n".join([*summary_lines(summary), f"wrote {out / 'packager.toml'}"]))


def main() -> None:
    main_of(cli, "python -m packager.example.multilabel.train")


if __name__ == "__main__":
    main()
