"""The reference example: the seed's ResNet-18 (shape, FLOPs, export), threshold selection on
val, finding / downloading the data, a short real training run and the demo end to end.
Training runs use a narrow model on a small train subset so the suite stays fast."""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from packager.builder.session import resolve_preprocess
from packager.core.config import load_config
from packager.core.errors import UserError
from packager.core.metrics import wilson
from packager.core.model import inspect_model
from packager.core.progress import Progress
from packager.example.data import find_data
from packager.example.demo import run_demo
from packager.example.export import export_fp32, to_fp16
from packager.example.model import make_model
from packager.example.train import (
    Settings,
    choose_threshold,
    example_config,
    preprocess_of,
    set_value,
    train,
)
from packager.shipped.ort_session import OrtSession
from tests.conftest import REPO, assert_user_error

SMOKE = Settings(epochs=1, width=8, limit=256, batch_size=64)


@pytest.fixture(scope="module")
def trained(data_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("example")
    return out, train(data_path, out, SMOKE, Progress(False))


def test_model_is_resnet18_without_the_224_upsampling(tmp_path: Path) -> None:
    model = make_model().eval()
    # torchvision's resnet18(num_classes=2) has exactly this many parameters.
    assert sum(p.numel() for p in model.parameters()) == 11_177_538
    with torch.no_grad():
        assert model(torch.zeros(3, 3, 64, 64)).shape == (3, 2)
    info = inspect_model(export_fp32(model, tmp_path / "m.onnx", 64, 3))
    assert (info.input.name, info.output.name, info.opset) == ("input", "output", 17)
    assert info.batch == "dynamic" and info.input.shape[1:] == [3, 64, 64]
    # At 224x224 ResNet-18 is ~3.6 GFLOPs; at 64x64 it is ~0.30, inside the seed's 0.4 budget.
    assert 0.25 < info.gflops_per_sample < 0.4
    assert not any(op in info.ops for op in ("Resize", "Upsample", "BatchNormalization"))


def test_fp16_export_keeps_the_fp32_outputs(tmp_path: Path) -> None:
    model = make_model(width=8).eval()
    fp32 = export_fp32(model, tmp_path / "m.onnx", 64, 3)
    fp16 = to_fp16(fp32, tmp_path / "m16.onnx")
    info = inspect_model(fp16)
    assert info.input.dtype == info.output.dtype == "float16" and info.batch == "dynamic"
    x = np.random.default_rng(0).normal(size=(5, 3, 64, 64)).astype(np.float32)
    with OrtSession(fp32) as a, OrtSession(fp16) as b:
        ya, yb = a.infer(x), b.infer(x.astype(np.float16))
    assert yb.shape == (5, 2)
    np.testing.assert_allclose(yb, ya, atol=2e-2 * max(1.0, float(np.abs(ya).max())))


def test_threshold_keeps_the_wilson_lower_bound_above_the_gate() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(389, int), np.zeros(135, int)]
    p = np.r_[rng.uniform(0.2, 1.0, 389), rng.uniform(0.0, 0.6, 135)]
    th = choose_threshold(p, y, 0.98)
    tp = int((p[y == 1] >= th.value).sum())
    assert tp == 389 - th.allowed_misses and th.margin_met
    assert wilson(tp, 389)[0] >= 0.98 > wilson(tp - 1, 389)[0]  # the highest such threshold
    # Midway to the next lower score: no val score sits on the threshold.
    assert np.min(np.abs(p - th.value)) > 0


def test_threshold_on_too_few_positives_catches_them_all_and_says_so() -> None:
    p = np.array([0.9, 0.8, 0.7, 0.1, 0.2])
    th = choose_threshold(p, np.array([1, 1, 1, 0, 0]), 0.98)
    assert (th.allowed_misses, th.margin_met) == (0, False)
    assert 0.2 < th.value < 0.7


def test_set_value_replaces_one_key_in_its_section_and_keeps_the_comment() -> None:
    text = '[labels]\nnames = ["a", "b"]\nthreshold = 0.5  # note\n[gates]\nthreshold = 1\n'
    assert set_value(text, "labels", "threshold", "0.25") == text.replace(
        "threshold = 0.5  # note", "threshold = 0.25  # note"
    )
    with pytest.raises(ValueError):
        set_value(text, "model", "path", '"x"')


# ---- data ------------------------------------------------------------------------------


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str, list[str]]]:
    """A local HTTP server over a folder (the download code path, without the internet), and
    the paths it was asked for. pooch has no file:// downloader, so this is the offline way."""
    root = tmp_path / "www"
    root.mkdir()
    asked: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:
            asked.append(self.path)
            super().do_GET()

        def log_message(self, *args: Any) -> None:  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()
    server.server_close()


def test_find_data_prefers_the_flag_then_the_candidates_in_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    b.write_bytes(b"x")
    assert find_data(None, [a, b], url="http://127.0.0.1:9/") == b.resolve()
    a.write_bytes(b"y")
    assert find_data(None, [a, b], url="http://127.0.0.1:9/") == a.resolve()
    assert find_data(b, [a]) == b.resolve()
    with pytest.raises(UserError, match="does not exist"):
        find_data(tmp_path / "missing.npz", [a])


def test_download_checks_the_hash_retries_and_leaves_nothing_half_written(
    http_dir: tuple[Path, str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, url, asked = http_dir
    payload = b"not really an npz"
    (root / "p.npz").write_bytes(payload)
    cache = tmp_path / "cache"
    monkeypatch.setenv("PACKAGER_CACHE", str(cache))
    with pytest.raises(UserError) as exc:
        find_data(None, [], url=f"{url}/p.npz", known_hash="md5:" + "0" * 32, retries=1)
    msg = str(exc.value)
    assert "\n" not in msg and "does not match the known hash" in msg and "--data" in msg
    assert hashlib.md5(payload).hexdigest() in msg  # the hash it got, computed here
    assert asked == ["/p.npz", "/p.npz"]  # the first attempt and one retry
    assert not list(cache.iterdir())  # no partial file left behind
    for known in ("md5:" + hashlib.md5(payload).hexdigest(), hashlib.sha256(payload).hexdigest()):
        got = find_data(None, [], url=f"{url}/p.npz", known_hash=known)
        assert got == cache / "pneumoniamnist.npz" and got.read_bytes() == payload
        got.unlink()


def test_a_copy_found_is_used_without_a_download(
    http_dir: tuple[Path, str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url, asked = http_dir
    monkeypatch.setenv("PACKAGER_CACHE", str(tmp_path / "cache"))
    shared = tmp_path / "shared" / "pneumoniamnist.npz"
    shared.parent.mkdir()
    shared.write_bytes(b"a copy, whatever its hash")
    assert find_data(None, [shared], url=f"{url}/p.npz") == shared.resolve()
    assert asked == [] and not (tmp_path / "cache").exists()


def test_offline_without_data_is_one_line_saying_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PACKAGER_CACHE", str(tmp_path))
    with pytest.raises(UserError) as exc:
        find_data(None, [tmp_path / "none.npz"], url="http://127.0.0.1:9/x.npz", retries=0)
    msg = str(exc.value)
    assert "\n" not in msg and "zenodo.org" in msg and "--data" in msg


# ---- training --------------------------------------------------------------------------


def test_training_writes_models_metrics_and_a_config_packager_reads(
    trained: tuple[Path, dict[str, Any]],
) -> None:
    out, summary = trained
    for name in ("model.onnx", "model_fp16.onnx", "training.json", "packager.toml"):
        assert (out / name).is_file(), name
    assert json.loads((out / "training.json").read_text()) == json.loads(json.dumps(summary))
    cfg = load_config(out / "packager.toml")
    assert cfg.model.path == str(out / "model.onnx")
    assert cfg.labels.threshold == summary["threshold"]["value"]
    # The threshold was chosen on val: val sensitivity holds the gate there.
    val = summary["metrics"]["fp32"]["val"]
    assert val["sensitivity"] >= cfg.gates.min_sensitivity
    assert {"val", "test"} == set(summary["metrics"]["fp16"])
    assert summary["metrics"]["fp32"]["test"]["n"] == 624
    assert summary["data"]["train_n"] == SMOKE.limit


def test_training_preprocessing_is_the_one_packager_validates_with(
    trained: tuple[Path, dict[str, Any]],
) -> None:
    out, _ = trained
    cfg = load_config(out / "packager.toml")
    assert resolve_preprocess(cfg, inspect_model(out / "model.onnx")) == preprocess_of(
        example_config()
    )


def test_train_cli_bad_data_is_a_one_line_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "packager.example.train",
            "--data",
            str(tmp_path / "no.npz"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "no.npz" in r.stderr


def test_packager_demo_bad_input_is_a_user_error(cli: Callable[..., Any], tmp_path: Path) -> None:
    assert_user_error(cli("demo", "--data", tmp_path / "no.npz", cwd=tmp_path), "no.npz")
    assert_user_error(cli("demo", "--epochs", "0", cwd=tmp_path), "--epochs")


# ---- the demo --------------------------------------------------------------------------


def test_demo_builds_compares_and_reuses_the_trained_model(
    data_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PACKAGER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "dist"
    kw: dict[str, Any] = {
        "width": 8,
        "limit": 256,
        "targets": ["cpu-onnxruntime"],
        "bench_seconds": 0.05,
    }
    run_demo(data_path, out, 1, Progress(True), **kw)
    first = capsys.readouterr()
    bundle = out / "pneumonia-resnet18-1.0.0" / "cpu-onnxruntime"
    report = json.loads((bundle / "report.json").read_text())
    assert report["status"] == "passed", report["reason"]
    assert (
        report["clinical"]["threshold"]
        == json.loads((out / "example" / "training.json").read_text())["threshold"]["value"]
    )
    for name in ("comparison.md", "comparison.html", "sla.toml"):
        assert (out / name).is_file(), name
        assert str(out / name) in first.out
    assert str(bundle) in first.out and "reusing" not in first.err

    # Signed by default: with the demo key made once beside the bundles, never in one.
    key = out / "example" / "demo-signing.key"
    pub = key.with_name(key.name + ".pub")
    verified = subprocess.run(
        [sys.executable, "-m", "packager.cli", "verify", str(bundle), "--pubkey", str(pub)],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0 and "signature valid" in verified.stdout, verified.stderr
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(pub), "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    assert hashlib.sha256(der).hexdigest() in (bundle / "README.md").read_text()
    assert not any("demo-signing" in p.name for p in bundle.resolve().rglob("*"))
    key_bytes = key.read_bytes()

    run_demo(data_path, out, 1, Progress(True), **kw)
    second = capsys.readouterr()
    assert "reusing the trained model" in second.err and "[train] epoch" not in second.err
    assert key.read_bytes() == key_bytes  # made once, kept
