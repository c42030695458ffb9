"""Train the example model on PneumoniaMNIST, choose its threshold on val, evaluate on test,
export ONNX (FP32 and FP16) and write the packager.toml to build it with.

    python -m packager.example.train [--data PATH] [--out DIR] [--epochs N] [--seed S]

Seeded; the default 8 epochs take ~4 min on one CPU core with native bf16, ~2x that in FP32.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import tomllib
import torch
import torch.nn.functional as F

from packager.core.config import Config, parse_config
from packager.core.data import Dataset, load_dataset
from packager.core.hostinfo import has_flag
from packager.core.metrics import clinical, roc_auc, to_probabilities, wilson
from packager.core.progress import Progress
from packager.example.data import find_data
from packager.example.export import export_fp32, to_fp16
from packager.example.model import make_model
from packager.example.run import main_of
from packager.runtime.validate import predict_all
from packager.shipped.ort_session import OrtSession
from packager.shipped.preprocess import Preprocess

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "packager.toml"
DEFAULT_EPOCHS = 8
# Files whose content decides the trained model; the demo's cache key hashes them.
SOURCES = ("model.py", "train.py", "export.py", "packager.toml")


@dataclass
class Settings:
    epochs: int = DEFAULT_EPOCHS
    seed: int = 0
    width: int = 64  # first-stage channels; 64 is ResNet-18, smaller only for smoke tests
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.05  # bounded logits keep FP16/INT8 decisions stable
    limit: int | None = None  # train on a seeded random N-image subset (smoke tests)
    bf16: bool | None = None  # None: autocast to bf16 where the CPU has native bf16
    # Pinned: how torch splits its reductions depends on the thread count, so the same seed
    # gives the same weights only with the same number of threads.
    threads: int = 2

    def resolved_bf16(self) -> bool:
        return (has_flag("avx512_bf16") or has_flag("amx_bf16")) if self.bf16 is None else self.bf16


def example_config() -> Config:
    """The checked-in packager.toml, parsed by packager itself."""
    return parse_config(tomllib.loads(TEMPLATE.read_text()), HERE, TEMPLATE)


def preprocess_of(cfg: Config) -> Preprocess:
    """The Preprocess packager builds from this config for the FP32 model (same fields)."""
    p = cfg.preprocess
    if not (p.size and p.channels and p.layout):
        raise ValueError(f"{TEMPLATE} must pin [preprocess] size, channels and layout")
    return Preprocess(
        size=p.size,
        channels=p.channels,
        layout=p.layout,
        scale=p.scale,
        mean=tuple(p.mean),
        std=tuple(p.std),
        dtype="float32",
        resize=p.resize,
    )


def source_hash() -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode())
        h.update((HERE / name).read_bytes())
    return h.hexdigest()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random rotation, scale and shift: what repositioned X-rays vary by (no flips:
    the heart is on the left)."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(n, generator=gen) * 2 - 1) * 0.1
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.1
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def _scores(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(x), 256):
            out.append(model(x[i : i + 256].contiguous(memory_format=torch.channels_last)).float())
    return torch.cat(out).numpy()


def fit(
    x: np.ndarray,
    y: np.ndarray,
    val: tuple[np.ndarray, np.ndarray],
    s: Settings,
    progress: Progress,
) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Seeded AdamW + one-cycle schedule; the last epoch's weights are kept (no selection on
    val, which stays for the threshold alone)."""
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    model = make_model(width=s.width, seed=s.seed)
    bf16 = s.resolved_bf16()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    xv = torch.from_numpy(val[0])
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
            batch = _augment(xt[idx], gen).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(batch)
            loss = F.cross_entropy(logits.float(), yt[idx], label_smoothing=s.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        probs = to_probabilities(_scores(model, xv, bf16), "logits")[:, 1]
        auc = _auc(val[1], probs)
        row = {
            "epoch": epoch + 1,
            "loss": total / steps,
            "val_auc": auc,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        progress.say(
            f"[train] epoch {epoch + 1}/{s.epochs}: loss {row['loss']:.4f}, val AUC {auc:.4f}, "
            f"{row['seconds']:.1f}s"
        )
    return model.eval(), history


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc(y == 1, p) or float("nan"))


@dataclass
class Threshold:
    value: float
    allowed_misses: int  # val positives the threshold may miss
    val_sensitivity_lower95: float  # Wilson lower bound at the chosen threshold
    margin_met: bool  # False: even catching every val positive cannot prove the target


def choose_threshold(p: np.ndarray, y: np.ndarray, min_sensitivity: float) -> Threshold:
    """The highest threshold whose val sensitivity has a 95% Wilson lower bound at or above
    the gate, placed midway to the next lower val score so tiny runtime differences cannot
    move a val decision."""
    pos = np.sort(p[y == 1])[::-1]
    n = len(pos)
    if n == 0:
        raise ValueError("the val split has no positive images")
    k = next((k for k in range(1, n + 1) if wilson(k, n)[0] >= min_sensitivity), n)
    at = float(pos[k - 1])
    below = p[p < at]
    lower = float(below.max()) if below.size else 0.0
    value = float(np.clip((at + lower) / 2, 1e-6, 1 - 1e-6))
    lo = wilson(int((p[y == 1] >= value).sum()), n)[0]
    return Threshold(value, n - k, lo, lo >= min_sensitivity)


def positive_probs(model_path: Path, pre: Preprocess, ds: Dataset) -> np.ndarray:
    """P(pneumonia) from an exported model on ONNX Runtime CPU (the reference runtime)."""
    with OrtSession(model_path) as runner:
        scores = predict_all(runner, pre(ds.images), 64, None)
    return to_probabilities(scores, "logits")[:, 1]


def metrics(p: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    c = clinical(np.stack([1 - p, p], axis=1), labels, 1, threshold)
    keys = ("n", "positives", "sensitivity", "sensitivity_ci95", "specificity", "accuracy", "auc")
    return {k: getattr(c, k) for k in keys} | {"confusion": c.confusion}


def set_value(text: str, section: str, key: str, value: str) -> str:
    """Replace `key = ...` inside `[section]` of a TOML text, keeping the line's comment."""
    lines, current = text.splitlines(keepends=True), ""
    for i, line in enumerate(lines):
        head = re.match(r"\[([^\]]+)\]\s*(#.*)?$", line.strip())
        if head:
            current = head.group(1).strip()
        elif current == section and re.match(rf"{re.escape(key)}\s*=", line):
            comment = re.search(r"\s+#.*$", line.rstrip("\n"))
            lines[i] = f"{key} = {value}{comment.group(0) if comment else ''}\n"
            return "".join(lines)
    raise ValueError(f"{TEMPLATE} has no `{key} =` in [{section}]")


def rationale(th: dict[str, Any], min_sensitivity: float) -> str:
    """The selection rule behind the threshold, for the sign-off page."""
    return (
        f"chosen on the val split, never the gate split: the highest threshold whose val "
        f"sensitivity has a 95% Wilson lower bound at or above the {min_sensitivity:.0%} gate "
        f"(at most {th['allowed_misses']} val positives missed; lower bound "
        f"{th['val_sensitivity_lower95']:.4f}), placed midway to the next lower val score"
    )


def write_config(out: Path, data: Path, threshold: dict[str, Any]) -> Path:
    """The example's packager.toml with the model, data and the chosen threshold (a Threshold as
    a dict) and its rationale filled in."""
    text = TEMPLATE.read_text()
    gate = example_config().gates.min_sensitivity
    text = set_value(text, "model", "path", json.dumps("model.onnx"))
    text = set_value(text, "data", "path", json.dumps(str(data)))
    text = set_value(text, "labels", "threshold", repr(threshold["value"]))
    text = set_value(text, "labels", "threshold_rationale", json.dumps(rationale(threshold, gate)))
    path = out / "packager.toml"
    path.write_text(text)
    parse_config(tomllib.loads(text), out, path)  # what packager will read must be valid
    return path


def train(data: Path, out: Path, s: Settings, progress: Progress) -> dict[str, Any]:
    """Everything above, in order; returns (and writes) out/training.json."""
    cfg = example_config()
    pre = preprocess_of(cfg)
    names = cfg.labels.names
    train_ds = load_dataset(data, "train", names)
    val_ds, test_ds = load_dataset(data, "val", names), load_dataset(data, "test", names)
    if s.limit:
        train_ds = train_ds.subset(s.limit, s.seed)
    out.mkdir(parents=True, exist_ok=True)
    with progress.step("train", f"preprocessing {len(train_ds)} train images"):
        x, xv = pre(train_ds.images), pre(val_ds.images)
    bf16 = s.resolved_bf16()
    progress.say(
        f"[train] ResNet-18 (width {s.width}), {s.epochs} epochs, seed {s.seed}, "
        f"{'bf16 autocast' if bf16 else 'fp32'} on {torch.get_num_threads()} threads"
    )
    t0 = time.perf_counter()
    model, history = fit(x, train_ds.labels, (xv, val_ds.labels), s, progress)
    train_s = time.perf_counter() - t0
    fp32 = export_fp32(model, out / "model.onnx", pre.size, pre.channels)
    fp16 = to_fp16(fp32, out / "model_fp16.onnx")

    pre16 = Preprocess(**{**asdict(pre), "dtype": "float16"})
    probs = {
        (prec, ds.split): positive_probs(path, p, ds)
        for prec, path, p in (("fp32", fp32, pre), ("fp16", fp16, pre16))
        for ds in (val_ds, test_ds)
    }
    th = choose_threshold(probs["fp32", "val"], val_ds.labels, cfg.gates.min_sensitivity)
    if not th.margin_met:
        progress.say(f"[train] warning: {len(val_ds)} val images cannot show the gate's margin")
    results = {
        prec: {
            ds.split: metrics(probs[prec, ds.split], ds.labels, th.value)
            for ds in (val_ds, test_ds)
        }
        for prec in ("fp32", "fp16")
    }
    flips = int(((probs["fp32", "test"] >= th.value) != (probs["fp16", "test"] >= th.value)).sum())
    summary = {
        "settings": asdict(s) | {"bf16": bf16},
        "data": {"path": str(data), "sha256": train_ds.sha256, "train_n": len(train_ds)},
        "threshold": asdict(th),
        "gate": {"min_sensitivity": cfg.gates.min_sensitivity, "split": cfg.data.split},
        "metrics": results,
        "fp16_test_flips": flips,
        "training_seconds": train_s,
        "history": history,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "source_sha256": source_hash(),
    }
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_config(out, data, asdict(th))
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    th = summary["threshold"]
    lines = [
        f"threshold {th['value']:.6g} (val: at most {th['allowed_misses']} missed positives, "
        f"95% lower bound {th['val_sensitivity_lower95']:.4f}"
        + ("" if th["margin_met"] else ", below the gate: too few val positives")
        + ")",
        f"training {summary['training_seconds']:.0f}s",
    ]
    for prec, splits in summary["metrics"].items():
        for split, m in splits.items():
            lines.append(
                f"{prec} {split:5} sensitivity {m['sensitivity']:.4f}  "
                f"specificity {m['specificity']:.4f}  AUC {m['auc']:.4f}"
            )
    return lines


@click.command()
@click.option("--data", type=click.Path(path_type=Path), default=None, help="pneumoniamnist.npz")
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("dist/example"), show_default=True
)
@click.option("--epochs", default=DEFAULT_EPOCHS, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--width", default=64, show_default=True, help="First-stage channels (64: ResNet-18)."
)
def cli(data: Path | None, out: Path, epochs: int, seed: int, width: int) -> None:
    """Train, choose the threshold on val, evaluate on test, export ONNX FP32 + FP16."""
    path = find_data(data)
    summary = train(path, out.resolve(), Settings(epochs, seed, width), Progress(True))
    click.echo("\n".join([*summary_lines(summary), f"wrote {out / 'packager.toml'}"]))


def main() -> None:
    main_of(cli, "python -m packager.example.train")


if __name__ == "__main__":
    main()
