"""`packager demo`: train (or reuse) the example model, then the same build as
`packager build --all` over every target this host can build, then the comparison."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import click

from packager.builder.cache import Cache
from packager.builder.pipeline import build
from packager.builder.session import Session
from packager.builder.signing import check_private_key, keygen
from packager.builder.state import TargetResult
from packager.core import registry
from packager.core.config import load_config
from packager.core.data import file_sha256
from packager.core.errors import GateFailed, UserError
from packager.core.progress import Progress
from packager.example.data import cache_dir, find_data
from packager.example.run import cached
from packager.example.train import (
    HERE,
    Settings,
    source_hash,
    summary_lines,
    train,
    write_config,
)
from packager.reports.compare import write_comparison

MODEL_FILES = ("model.onnx", "model_fp16.onnx", "training.json")
# The demo's signing key, made once in the example folder (beside the bundles, never in one).
# A real release keeps its key in a secret store (docs/signing.md).
DEMO_KEY = "demo-signing.key"


SIGN_SECTION = f"""
# Every bundle is signed before it is published, with the demo's key (made once).
[sign]
key = "{DEMO_KEY}"
"""


def demo_key(example: Path) -> Path:
    key = example / DEMO_KEY
    if not key.exists():
        keygen(key)
    return key


def cache_key(data: Path, s: Settings) -> str:
    """Content of the data, the settings and the training code: any change retrains."""
    parts = [file_sha256(data), asdict(s) | {"bf16": s.resolved_bf16()}, source_hash()]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def trained_model(data: Path, s: Settings, progress: Progress) -> Path:
    """A folder with the trained model files, from the cache when this exact run was done."""
    final = cache_dir() / "example" / cache_key(data, s)
    return cached(final, MODEL_FILES, lambda tmp: train(data, tmp, s, progress), progress)


def run_demo(
    data: Path | None,
    out: Path,
    epochs: int | None,
    progress: Progress,
    *,
    width: int = 64,
    limit: int | None = None,
    targets: list[str] | None = None,
    bench_seconds: float | None = None,
) -> None:
    """The example end to end. `width`, `limit`, `targets` and `bench_seconds` shrink it to a
    smoke run (tests); the defaults are the seed's model and `--all`."""
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs {epochs}: train for at least 1 epoch")
    path = find_data(data)
    s = Settings(width=width, limit=limit)
    if epochs is not None:
        s.epochs = epochs
    out = out.resolve()
    example = out / "example"
    example.mkdir(parents=True, exist_ok=True)
    cached = trained_model(path, s, progress)
    for name in MODEL_FILES:
        shutil.copyfile(cached / name, example / name)
    summary = json.loads((example / "training.json").read_text())
    config = write_config(example, path, summary["threshold"])
    key = demo_key(example)
    with config.open("a") as f:  # the rebuild command below signs with it too
        f.write(SIGN_SECTION)
    sla = out / "sla.toml"
    shutil.copyfile(HERE / "sla.toml", sla)

    cfg = load_config(config)
    cfg.output.dir = str(out)
    if bench_seconds is not None:  # a smoke run: the open-loop rates as short as the rest
        cfg.bench.seconds = bench_seconds
        cfg.bench.open_loop.seconds = bench_seconds
    session = Session.open(cfg, progress)
    names = targets or registry.names()
    # rebuilt every time (force), reusing the cache's conversions and validations
    explicit = targets is not None
    results = build(session, names, True, True, False, explicit, cache=Cache())
    comparison = write_comparison(out, sla)
    click.echo("\n".join(_report(summary, results, config, key, comparison, sla)))
    failed = [r.target for r in results if r.status in ("failed", "error")]
    if failed:
        raise GateFailed(f"gate failed for {', '.join(failed)}; see {comparison[0]}")


def _report(
    summary: dict,
    results: list[TargetResult],
    config: Path,
    key: Path,
    comparison: list[Path],
    sla: Path,
) -> list[str]:
    fingerprint = check_private_key(key)
    lines = ["example model:", *(f"  {line}" for line in summary_lines(summary))]
    lines += ["targets:"]
    lines += [f"  {r.target:16} {r.status:14} {r.bundle or r.reason}" for r in results]
    lines += [
        f"project     {config}  (rebuild: packager build --config {config} --all --force)",
        f"signed with {key}  (give hospitals {key.name}.pub; fingerprint {fingerprint})",
        f"sla         {sla}",
        *(f"comparison  {p}" for p in comparison),
    ]
    return lines
