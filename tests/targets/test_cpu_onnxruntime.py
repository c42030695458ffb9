"""The reference target on models from other sources: fixed batch, NHWC, Softmax, FP16, old opset."""

import json
from pathlib import Path

import pytest

from tests.conftest import copy_project

BUNDLE = Path("dist/tiny-1.0.0/cpu-onnxruntime")


@pytest.mark.parametrize(
    ("name", "variant"),
    [
        ("fixed4", {"batch": 4}),
        ("nhwc_softmax_opset11", {"layout": "NHWC", "softmax": True, "opset": 11}),
        ("fp16", {"dtype": "float16"}),
    ],
)
def test_reference_handles_model_variants(project, cli, make_model, name, variant) -> None:
    root = project(model=make_model(name, **variant))
    r = cli("build", "-t", "cpu-onnxruntime", cwd=root)
    assert r.code == 0, r.stderr
    report = json.loads((root / BUNDLE / "report.json").read_text())
    assert report["status"] == "passed" and report["clinical"]["sensitivity"] >= 0.98
    sizes = [b["batch_size"] for b in report["benchmark"]["batches"]]
    assert sizes == ([4] if variant.get("batch") == 4 else [1, 8])
    expected = "probabilities" if variant.get("softmax") else "logits"
    assert report["clinical"]["output"] == expected


def test_validate_and_bench_an_existing_bundle(reference_project, cli, data_path, tmp_path) -> None:
    # the session's `build -t cpu-onnxruntime --no-bench`, copied: validate publishes in place
    root = copy_project(reference_project, tmp_path / "project")
    bundle = root / BUNDLE
    r = cli("validate", bundle, "--data", data_path, "--json", cwd=root)
    assert r.code == 0, r.stderr
    assert r.json["status"] == "passed" and r.json["clinical"]["flipped"] == []
    assert cli("verify", bundle, cwd=root).code == 0  # manifest rewritten with the new report
    r = cli("bench", bundle, "--batch-sizes", "1,2", "--seconds", "0.05", "--json", cwd=root)
    assert r.code == 0, r.stderr
    assert [b["batch_size"] for b in r.json["batches"]] == [1, 2]
    # ONNX Runtime does not time its own calls: no runtime-clock column is invented for it.
    assert all("runtime_latency_ms" not in b for b in r.json["batches"])


def test_loading_a_bundle_runtime_leaves_the_import_path_alone(default_build, tmp_path) -> None:
    """A host process (the build, the tests) that loads a bundle's runtime.py keeps its own
    sys.path: a bundle folder left on it made its triton/ folder shadow a real `triton`."""
    import importlib.util
    import shutil
    import sys

    from packager.shipped.predict import import_runtime
    from tests.conftest import bundle_dir

    root, _ = default_build("cpu-onnxruntime")
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_dir(root, "cpu-onnxruntime"), bundle)
    (bundle / "tests_marker_pkg").mkdir(exist_ok=True)  # any folder in a bundle is importable
    before = list(sys.path)
    module = import_runtime(bundle)
    assert hasattr(module, "open_runtime")
    assert sys.path == before
    assert importlib.util.find_spec("tests_marker_pkg") is None
