#!/usr/bin/env python3
"""Streaming validation on cpu-onnxruntime: flat memory and a pipeline that keeps up, in one run.

    python benchmarks/streaming.py [--work DIR] [--n-small 1000] [--n-large 20000] [--n-big 1000]

Synthetic 16-bit PNGs (smooth chest-like fields plus noise, each image distinct) go through
packager.runtime.stream.stream_predict, the path `packager validate` takes: files are read, hashed,
decoded and preprocessed in a thread pool while the bundle's runner infers earlier chunks in its
own subprocess. Three runs, each in a fresh process so its peak RSS is its own:
  512x512 x n-small, 512x512 x n-large, 2048x2048 x n-big.
Each stage is then timed alone on a sample with the same thread pool: decode (read + hash +
PNG inflate), preprocess (resize + normalize), infer (the runner on ready tensors, in-process).
Goals from the issue: peak RSS of n-small and n-large within 10%; end-to-end images/s at least
80% of the slowest stage alone. Numbers are printed, never asserted.

Model: the trained demo model if `packager demo` ran, else an untrained ResNet-18 from
packager/example (3x64x64; speed only, so its gates are relaxed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_png(args: tuple[Path, int, int]) -> None:
    from PIL import Image

    path, size, seed = args
    if path.exists():
        return
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx, cy = rng.uniform(0.3, 0.7, 2)
    field = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / rng.uniform(0.05, 0.2))
    field += 0.3 * np.sin(xx * rng.uniform(5, 15)) * np.cos(yy * rng.uniform(5, 15))
    field = (field - field.min()) / (np.ptp(field) + 1e-6)
    noisy = field * 60000 + rng.integers(0, 512, (size, size))
    Image.fromarray(noisy.astype(np.uint16)).save(path, compress_level=1)


def dataset(root: Path, n: int, size: int, labels_name: str, distinct: int) -> Path:
    """root/img/*.png plus a CSV listing the first n (the 1,000 set is a prefix of the 20,000).
    Past `distinct` files, images are hard links to the first ones (encoding 20,000 PNGs takes
    longer than validating them); every file is still read, hashed and decoded in full."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    jobs = [(root / "img" / f"{i:06d}.png", size, i) for i in range(min(n, distinct))]
    todo = [j for j in jobs if not j[0].exists()]
    if todo:
        print(
            f"  writing {len(todo)} synthetic {size}x{size} 16-bit PNGs into {root} ...", flush=True
        )
        with ProcessPoolExecutor() as pool:
            list(pool.map(make_png, todo, chunksize=32))
    for i in range(distinct, n):
        link = root / "img" / f"{i:06d}.png"
        if not link.exists():
            link.hardlink_to(root / "img" / f"{i % distinct:06d}.png")
    rng = np.random.default_rng(0)
    rows = ["path,label"] + [
        f"img/{i:06d}.png,{'pneumonia' if rng.random() < 0.5 else 'normal'}" for i in range(n)
    ]
    csv = root / labels_name
    csv.write_text("\n".join(rows) + "\n")
    return csv


def bundle(work: Path) -> Path:
    out = work / "dist"
    found = sorted(out.glob("*/cpu-onnxruntime"))
    if found:
        return found[0]
    import tomllib

    from packager.example.data import cache_dir, default_candidates

    trained = sorted((cache_dir() / "example").glob("*/model.onnx"))
    if trained:
        model, speed_only = trained[-1], False
    else:
        from packager.example.export import export_fp32
        from packager.example.model import make_model

        model, speed_only = (
            export_fp32(make_model(), work / "model.onnx", size=64, channels=3),
            True,
        )
        print("  no trained demo model: an untrained ResNet-18 (speed only)")
    data = next((p for p in default_candidates() if p.is_file()), None)
    if data is None:
        sys.exit("PneumoniaMNIST not found (the build validates on it); see packager/example")
    from benchmarks.openvino_vs_reference import toml_text

    cfg = tomllib.loads((REPO / "packager/example/packager.toml").read_text())
    cfg["model"]["path"], cfg["data"]["path"] = str(model), str(data)
    if speed_only:
        cfg["gates"] = {"min_sensitivity": 0.0, "max_sensitivity_drop": 1.0}
    cfg = toml_text(cfg)
    (work / "packager.toml").write_text(cfg)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "packager.cli",
            "build",
            "-t",
            "cpu-onnxruntime",
            "--no-bench",
            "--out",
            str(out),
            "-q",
        ],
        cwd=work,
        capture_output=True,
        text=True,
    )
    if r.returncode not in (0, 1):
        sys.exit(f"build failed: {r.stderr.strip()}")
    return next(out.rglob("cpu-onnxruntime/runtime.json")).parent


def run_stream(bundle_dir: str, data: str, labels: str) -> dict[str, Any]:
    """One streamed validation; this process's and its worker's peak RSS."""
    from packager.core.data import open_dataset
    from packager.runtime.stream import peak_rss_mb, stream_predict
    from packager.shipped.preprocess import Preprocess

    b = Path(bundle_dir)
    runtime = json.loads((b / "runtime.json").read_text())
    pre = Preprocess.from_json(b / "preprocess.json")
    rss0 = peak_rss_mb()
    source = open_dataset(data, "test", runtime["labels"], labels)
    res = stream_predict(
        "cpu-onnxruntime", b, runtime["runner_options"], runtime["fixed_batch"], source, pre, 600
    )
    assert len(res.scores) == len(source) and np.isfinite(res.scores).all()
    return {
        "n": len(source),
        "wall_s": res.timings.wall,
        "images_per_s": len(source) / res.timings.wall,
        "rss_before_mb": rss0,
        "peak_rss_mb": peak_rss_mb(),
        "worker_peak_rss_mb": res.runtime["worker_peak_rss_mb"],
        "sha256": res.sha256,
    }


def run_stages(bundle_dir: str, data: str, labels: str, sample: int) -> dict[str, float]:
    """Each stage alone on `sample` images, with the same thread pool as the stream."""
    from packager.core.data import default_workers, imap_ordered, open_dataset, read_one
    from packager.runtime.runner import ModuleRunner
    from packager.runtime.validate import predict_all
    from packager.shipped.preprocess import Preprocess

    b = Path(bundle_dir)
    runtime = json.loads((b / "runtime.json").read_text())
    pre = Preprocess.from_json(b / "preprocess.json")
    files = open_dataset(data, "test", runtime["labels"], labels)
    n = min(sample, len(files))
    w = default_workers()
    t = time.perf_counter()
    imgs = [img for img, _ in imap_ordered(lambda i: read_one(files, i, None), range(n), w, 2 * w)]
    decode = n / (time.perf_counter() - t)
    t = time.perf_counter()
    xs = list(imap_ordered(lambda a: pre(a[None])[0], imgs, w, 2 * w))
    preprocess = n / (time.perf_counter() - t)
    x = np.stack(xs)
    reps = max(1, 2000 // n)
    runner = ModuleRunner(b, b, runtime["runner_options"])  # the bundle's own runtime.py
    with runner:
        predict_all(runner, x[:64], 64, runtime["fixed_batch"])  # warm-up
        t = time.perf_counter()
        for _ in range(reps):
            predict_all(runner, x, 64, runtime["fixed_batch"])
        infer = reps * n / (time.perf_counter() - t)
    return {"decode": decode, "preprocess": preprocess, "infer": infer}


def child(*args: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        sys.exit(f"{args[0]} failed: {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--stream", "--stages"):
        fn = run_stream if sys.argv[1] == "--stream" else run_stages
        extra = [int(sys.argv[5])] if sys.argv[1] == "--stages" else []
        print(json.dumps(fn(*sys.argv[2:5], *extra)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "packager-stream-bench"
    )
    ap.add_argument("--n-small", type=int, default=1000)
    ap.add_argument("--n-large", type=int, default=20000)
    ap.add_argument("--n-big", type=int, default=1000)
    ap.add_argument("--sample", type=int, default=300, help="images per stage-alone timing")
    ap.add_argument("--distinct", type=int, default=1000, help="distinct 512x512 files")
    ap.add_argument("--runs", default="small,large,big", help="which runs (default: all three)")
    ap.add_argument("--distinct-big", type=int, default=150, help="distinct 2048x2048 files")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {a.work}")
    b = bundle(a.work)
    s512 = a.work / "s512"
    small = dataset(s512, a.n_small, 512, "small.csv", a.distinct)
    large = dataset(s512, a.n_large, 512, "large.csv", a.distinct)
    s2048 = a.work / "s2048"
    big = dataset(s2048, a.n_big, 2048, "big.csv", a.distinct_big)
    runs = [
        (f"512x512 x {a.n_small}", s512, small),
        (f"512x512 x {a.n_large}", s512, large),
        (f"2048x2048 x {a.n_big}", s2048, big),
    ]
    from packager.core.data import default_workers

    pre = json.loads((b / "preprocess.json").read_text())
    print(
        f"bundle {b} (input {pre['channels']}x{pre['size']}x{pre['size']}), "
        f"{default_workers()} decode threads\n"
    )
    head = f"{'run':22} {'peak RSS':>9} {'worker':>8} {'e2e img/s':>10} {'decode':>8} {'prep':>8} {'infer':>8} {'e2e/slowest':>11} {'e2e/serial':>10}"
    print(head)
    rows = {}
    wanted = {"small": 0, "large": 1, "big": 2}
    runs = [runs[wanted[k]] for k in a.runs.split(",")]
    for name, root, csv in runs:
        r = child("--stream", str(b), str(root), str(csv))
        st = child("--stages", str(b), str(root), str(csv), str(a.sample))
        slowest = min(st.values())
        serial = 1 / sum(1 / v for v in st.values())  # one stage after the other, no overlap
        rows[name] = r | {"stages": st}
        print(
            f"{name:22} {r['peak_rss_mb']:7.0f}MB {r['worker_peak_rss_mb']:6.0f}MB "
            f"{r['images_per_s']:10.1f} {st['decode']:8.1f} {st['preprocess']:8.1f} "
            f"{st['infer']:8.1f} {r['images_per_s'] / slowest:10.0%} "
            f"{r['images_per_s'] / serial:9.0%}",
            flush=True,
        )
    small_name, large_name = f"512x512 x {a.n_small}", f"512x512 x {a.n_large}"
    if small_name in rows and large_name in rows:
        growth = rows[large_name]["peak_rss_mb"] / rows[small_name]["peak_rss_mb"] - 1
        print(f"\npeak RSS {a.n_large} vs {a.n_small} images: {growth:+.1%} (goal within 10%)")
    for name, r in rows.items():
        ratio = r["images_per_s"] / min(r["stages"].values())
        serial = r["images_per_s"] * sum(1 / v for v in r["stages"].values())
        print(
            f"{name}: end to end {ratio:.0%} of the slowest stage alone (goal >= 80%), "
            f"{serial:.0%} of the no-overlap bound (each stage alone uses every core here)"
        )
    (a.work / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
