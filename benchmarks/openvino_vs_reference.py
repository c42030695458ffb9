#!/usr/bin/env python3
"""cpu-openvino (fp32 and INT8) against the cpu-onnxruntime reference, in one run.

    python benchmarks/openvino_vs_reference.py [--model model.onnx] [--data pneumoniamnist.npz]

Every bundle is built, validated and benchmarked by `packager build` itself (the CLI a release
pipeline runs), from the packager.toml beside the model (else packager/example/packager.toml).
The goals are then judged over interleaved rounds: each round re-benchmarks the reference and the
INT8 bundle with `packager bench` and runs OpenVINO's own benchmark_app on the INT8 IR with the
same performance hint and precision (the harness must not lose what the runtime gives), so every
ratio compares numbers taken under the same load; each ratio's median over the rounds is the
result.
Numbers come from this machine and are printed, never asserted: on a shared CPU they are noisy.

Model: --model, else the trained demo model in the packager cache (`packager demo` makes it),
else a freshly initialised ResNet-18 from packager/example/model.py (speed only: its
sensitivity is meaningless, so the clinical gates are relaxed and the run says so).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tomllib

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from packager.example.data import cache_dir, default_candidates  # noqa: E402

EXAMPLE_TOML = REPO / "packager" / "example" / "packager.toml"
WITHIN = 0.10  # packager's throughput must be within 10% of benchmark_app's
LATENCY_WITHIN = 0.05  # and its batch-1 p50 within 5% of benchmark_app's default (async) API


def demo_model() -> Path | None:
    """The newest trained example model in the packager cache, if `packager demo` ran."""
    found = sorted((cache_dir() / "example").glob("*/model.onnx"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def untrained_model(dest: Path) -> Path:
    from packager.example.export import export_fp32
    from packager.example.model import make_model

    return export_fp32(make_model(), dest / "model.onnx", size=64, channels=3)


def toml_text(cfg: dict[str, Any]) -> str:
    """The config as TOML (tomli-w: nested tables such as [model.card] included)."""
    import tomli_w

    return tomli_w.dumps(cfg)


def packager_build(config: Path, out: Path, targets: list[str], int8: bool) -> dict[str, dict]:
    """`packager build` in a subprocess; the report of each target, published or failed."""
    cmd = [sys.executable, "-m", "packager.cli", "build", "--config", str(config), "--out"]
    cmd += [str(out), "--force", "--json", *(a for t in targets for a in ("-t", t))]
    if int8:
        cmd.append("--int8")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        sys.exit(f"packager build failed (exit {proc.returncode}): {proc.stderr.strip()}")
    reports = {}
    for r in json.loads(proc.stdout)["results"]:
        if not r["bundle"]:
            sys.exit(f"{r['target']}: {r['status']} — {r['reason']}")
        reports[r["target"]] = json.loads((Path(r["bundle"]) / "report.json").read_text())
        reports[r["target"]]["bundle_dir"] = r["bundle"]
    return reports


def built_reports(out: Path, targets: list[str]) -> dict[str, dict]:
    """The reports of bundles an earlier run of this script built into `out` (--reuse)."""
    reports = {}
    for target in targets:
        found = sorted(out.glob(f"*/{target}/report.json"))
        if not found:
            sys.exit(f"--reuse: no {target} bundle under {out}; run once without --reuse")
        reports[target] = json.loads(found[0].read_text())
        reports[target]["bundle_dir"] = str(found[0].parent)
    return reports


def best(report: dict) -> tuple[float, int, str]:
    """Best throughput over the main run and every benchmark variant: (samples/s, batch, label)."""
    b = report["benchmark"]
    if b["status"] != "ok":
        sys.exit(f"{report['target']} was not benchmarked: {b['reason']}")
    runs = [("main", b["batches"])] + [(v["label"], v["batches"]) for v in b["variants"]]
    return max(
        (row["throughput_sps"], row["batch_size"], label) for label, rows in runs for row in rows
    )


def p50_batch1(report: dict) -> float:
    row = next((r for r in report["benchmark"]["batches"] if r["batch_size"] == 1), None)
    if row is None:
        sys.exit("the goals compare batch-1 latency; this model takes a fixed batch size")
    return row["latency_ms"]["p50"]


def packager_bench(bundle: Path, sizes: list[int], seconds: float) -> dict[int, dict]:
    """`packager bench BUNDLE`: the bundle's own runner, as the build measured it."""
    cmd = [sys.executable, "-m", "packager.cli", "bench", str(bundle), "--json"]
    cmd += ["--batch-sizes", ",".join(map(str, sizes)), "--seconds", str(seconds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True)
    return {row["batch_size"]: row for row in json.loads(proc.stdout)["batches"]}


def fmt(values: list[float], digits: int = 0) -> str:
    return "/".join(f"{v:.{digits}f}" for v in values)


def benchmark_app(
    xml: Path, shape: list[int], hint: str, api: str | None, seconds: int
) -> tuple[float, float]:
    """(throughput samples/s, median latency ms) from OpenVINO's benchmark_app; `api` None is
    its default (async)."""
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    cmd = [exe, "-m", str(xml), "-d", "CPU", "-hint", hint] + (["-api", api] if api else [])
    cmd += ["-infer_precision", "f32", "-data_shape", json.dumps(shape).replace(" ", "")]
    cmd += ["-inference_only", "true", "-t", str(seconds)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    fps = re.search(r"Throughput:\s+([\d.]+) FPS", out)
    median = re.search(r"Median:\s+([\d.]+) (us|ms|s)\b", out)  # the unit follows the size
    if not (fps and median):
        sys.exit(f"cannot read benchmark_app's output:\n{out[-2000:]}")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[median.group(2)]
    return float(fps.group(1)), float(median.group(1)) * scale


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="ONNX model (default: the demo ResNet-18)")
    ap.add_argument("--data", type=Path, help="PneumoniaMNIST npz (default: ../shared/data)")
    ap.add_argument("--out", type=Path, help="where the bundles go (default: a temporary dir)")
    ap.add_argument(
        "--reuse", action="store_true", help="re-measure the bundles already built in --out"
    )
    ap.add_argument("--batch-sizes", default="1,8,16,32,64")
    ap.add_argument("--seconds", type=float, default=2.0, help="per batch size and mode")
    ap.add_argument("--app-seconds", type=int, default=3, help="each benchmark_app run")
    ap.add_argument("--reps", type=int, default=12, help="interleaved measurement rounds")
    ap.add_argument(
        "--speed-only", action="store_true", help="relax the clinical gates (untrained models)"
    )
    args = ap.parse_args()
    if args.reuse and not args.out:
        ap.error("--reuse needs --out DIR (where an earlier run built the bundles)")

    data = args.data or next((p for p in default_candidates() if p.is_file()), None)
    if data is None or not data.is_file():
        sys.exit("PneumoniaMNIST not found; pass --data PATH")
    work = args.out or Path(tempfile.mkdtemp(prefix="ov-vs-ref-"))
    work.mkdir(parents=True, exist_ok=True)
    model, speed_only = args.model or demo_model(), args.speed_only
    if model is None:
        model, speed_only = untrained_model(work), True
        print("No trained demo model (run `packager demo`): using an untrained ResNet-18;")
        print("its clinical numbers mean nothing, so the gates are relaxed. Speed only.\n")

    # The demo model's own config carries the threshold its training chose on the val split.
    beside = model.parent / "packager.toml"
    cfg = tomllib.loads((beside if beside.is_file() else EXAMPLE_TOML).read_text())
    cfg["model"]["path"] = str(model.resolve())
    cfg["data"]["path"] = str(data.resolve())
    cfg["bench"] = {"batch_sizes": [int(b) for b in args.batch_sizes.split(",")]}
    cfg["bench"]["seconds"] = args.seconds
    # fp32 here means fp32 whatever the model's own config ships; --int8 then switches it.
    targets = cfg.setdefault("targets", {})
    targets["cpu-openvino"] = {**targets.get("cpu-openvino", {}), "precision": "fp32"}
    if speed_only:
        cfg["gates"] = {"min_sensitivity": 0.0, "max_sensitivity_drop": 1.0}
    config = work / "packager.toml"
    config.write_text(toml_text(cfg))

    fp32_targets = ["cpu-onnxruntime", "cpu-openvino"]
    if args.reuse:
        print(f"re-measuring the bundles in {work}")
        fp32 = built_reports(work / "fp32", fp32_targets)
        int8 = built_reports(work / "int8", ["cpu-openvino"])["cpu-openvino"]
    else:
        print(f"model {model}\nbuilding into {work} (seconds per batch size: {args.seconds})")
        fp32 = packager_build(config, work / "fp32", fp32_targets, False)
        int8 = packager_build(config, work / "int8", ["cpu-openvino"], True)["cpu-openvino"]
    ref, ov32 = fp32["cpu-onnxruntime"], fp32["cpu-openvino"]

    host = ref["benchmark"]["host"]
    print(f"\nhost: {host['cpu']}, {host['cores']} cores, {' '.join(host['flags'])}")
    print(f"{'bundle':22} {'status':8} {'sens':>7} {'drop':>7} {'b1 p50 ms':>10} best samples/s")
    for name, r in (
        ("cpu-onnxruntime", ref),
        ("cpu-openvino fp32", ov32),
        ("cpu-openvino int8", int8),
    ):
        tput, bs, label = best(r)
        c = r["clinical"]
        print(
            f"{name:22} {r['status']:8} {c['sensitivity']:7.4f} {c['sensitivity_drop'] or 0:7.4f} "
            f"{p50_batch1(r):10.3f} {tput:9.1f} (batch {bs}, {label})"
        )

    ref_best, int8_best = best(ref), best(int8)
    print(
        f"\nFrom the build reports (one measurement each): INT8 best throughput / reference "
        f"{int8_best[0] / ref_best[0]:.2f}x, batch-1 p50 {p50_batch1(int8) / p50_batch1(ref):.2f}"
    )
    if int8.get("details", {}).get("int8"):
        print("INT8:", next(n for n in int8["notes"] if n.startswith("INT8")))

    # The goals are ratios of noisy numbers on a shared CPU, so they are judged on rounds that
    # interleave every measurement (reference, INT8 bundle, benchmark_app on the same IR): each
    # round's ratios come from numbers taken under the same load; each ratio's median counts.
    # Throughput at each bundle's best batch size from its build; benchmark_app with the
    # THROUGHPUT hint (what packager's async queue runs) and, for batch 1, the LATENCY hint on its
    # default API (async, one request: the runtime's best; `-api sync` is itself slower).
    ref_bundle, bundle = Path(ref["bundle_dir"]), Path(int8["bundle_dir"])
    pre = json.loads((bundle / "preprocess.json").read_text())
    dims = [pre["channels"], pre["size"], pre["size"]]
    if pre["layout"] == "NHWC":
        dims = [pre["size"], pre["size"], pre["channels"]]
    ref_bs, bs = ref_best[1], int8_best[1]
    xml = bundle / "model.xml"
    keys = ("speedup", "latency", "app_t", "app_l", "app_clock", "app_wall", "overhead")
    rounds: dict[str, list[float]] = {k: [] for k in keys}
    print(f"\n{args.reps} interleaved rounds (reference batch {ref_bs}, INT8 batch {bs}):")
    app_s = args.app_seconds
    steps: dict[str, Callable[[], Any]] = {
        "ref": lambda: packager_bench(ref_bundle, sorted({1, ref_bs}), args.seconds),
        "int8": lambda: packager_bench(bundle, sorted({1, bs}), args.seconds),
        "app_t": lambda: benchmark_app(xml, [bs, *dims], "throughput", "async", app_s)[0],
        "app_l": lambda: benchmark_app(xml, [1, *dims], "latency", None, app_s),
    }
    for i in range(args.reps):
        # Every second round runs the steps in reverse, so a drifting machine favours no one.
        names = list(steps) if i % 2 == 0 else list(steps)[::-1]
        got = {name: steps[name]() for name in names}
        r_ref, r_int8, app_t = got["ref"], got["int8"], got["app_t"]
        # One request in flight (LATENCY hint): 1 / its throughput is its wall time per call.
        app_fps, app_l = got["app_l"]
        t_int8, l_int8 = r_int8[bs]["throughput_sps"], r_int8[1]["latency_ms"]["p50"]
        clock = r_int8[1]["runtime_latency_ms"]["p50"]  # OpenVINO's timer, as benchmark_app's
        rounds["speedup"].append(t_int8 / r_ref[ref_bs]["throughput_sps"])
        rounds["latency"].append(l_int8 / r_ref[1]["latency_ms"]["p50"])
        rounds["app_t"].append(t_int8 / app_t)
        rounds["app_l"].append(l_int8 / app_l)
        rounds["app_clock"].append(clock / app_l)
        rounds["app_wall"].append(l_int8 / (1e3 / app_fps))
        rounds["overhead"].append(l_int8 / clock)
        print(
            f"  {i + 1}: reference {r_ref[ref_bs]['throughput_sps']:.0f}/s "
            f"{r_ref[1]['latency_ms']['p50']:.3f} ms | INT8 {t_int8:.0f}/s {l_int8:.3f} ms "
            f"(OpenVINO clock {clock:.3f}) | "
            f"benchmark_app {app_t:.0f}/s {app_l:.3f} ms"
        )

    def line(key: str, text: str, goal: str, ok: bool) -> bool:
        values = rounds[key]
        print(
            f"  {text:58} {statistics.median(values):5.2f}  (rounds {fmt(values, 2)}"
            + (f"; goal {goal}: {'met' if ok else 'NOT met'})" if goal else ")")
        )
        return ok

    med = {k: statistics.median(v) for k, v in rounds.items()}
    print("\nMedian over the rounds:")
    ok = line("speedup", "INT8 best throughput / reference best", ">= 4x", med["speedup"] >= 4)
    ok &= line(
        "latency", "INT8 batch-1 p50 / reference batch-1 p50", "<= 0.5", med["latency"] <= 0.5
    )
    ok &= line(
        "app_t",
        "packager / benchmark_app throughput (INT8)",
        f">= {1 - WITHIN:.2f}",
        med["app_t"] >= 1 - WITHIN,
    )
    ok &= line(
        "app_l",
        "packager / benchmark_app batch-1 latency",
        f"<= {1 + LATENCY_WITHIN:.2f}",
        med["app_l"] <= 1 + LATENCY_WITHIN,
    )
    # benchmark_app reports OpenVINO's own timer (InferRequest.latency); packager times the
    # whole Python call. Both readings of the same packager calls split the gap in two.
    line("app_clock", "  same clock as benchmark_app (OpenVINO's request timer)", "", True)
    line("app_wall", "  wall clock both sides (benchmark_app: 1 / its throughput)", "", True)
    line("overhead", "  harness overhead (wall / OpenVINO timer, same calls)", "", True)
    print(f"\nEvery goal met by the medians: {'yes' if ok else 'no'}")
    print("\nShared CPU: rerun for stable numbers; nothing here is asserted.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
