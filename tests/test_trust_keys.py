"""The build cache's keys (packager/builder/inputs.py): everything that decides a conversion, a
validation or a benchmark changes its key, one input at a time, and what does not decide it
leaves the key alone. Each key is also recomputed from its documented parts with hashlib and
json; the code hash by an os.walk of its own, the versions by importlib.metadata, bundle and data
hashes by hashlib. In-process, on tiny ONNX models written here and the real PneumoniaMNIST npz
(a key takes milliseconds; docs/mutation.md)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import packager
from packager.builder import inputs
from packager.builder.session import Session
from packager.core.config import parse_config
from packager.core.hostinfo import host_facts
from packager.core.progress import Progress
from packager.core.registry import get
from packager.targets import cpu_onnxruntime, edge_ort
from tests.models import PRE
from tests.multilabel_fixture import FINDINGS, write_data

ORT = get("cpu-onnxruntime")
EDGE = get("edge-ort")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(parts: dict[str, Any]) -> str:
    """The key as the cache module documents it: sha256 of sorted-key, space-free JSON."""
    return sha(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode())


def write_model(path: Path, outputs: int = 2, batch: int | str = "N", gain: float = 1.0) -> Path:
    """(N, 3, 32, 32) -> channel means -> a linear layer; a Sigmoid after it for 3 outputs."""
    w = (np.arange(3 * outputs, dtype=np.float32).reshape(3, outputs) - 2) * gain
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "W", "B"], ["logits" if outputs == 3 else "output"]),
    ]
    if outputs == 3:
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["output"]))
    g = helper.make_graph(
        nodes,
        "keys",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, outputs])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(outputs, "f4"), "B")],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def tree(folder: Path) -> str:
    """Every .py file under `folder` by os.walk: its path from there, a NUL, its bytes."""
    found = [
        (Path(d) / n).relative_to(folder).as_posix()
        for d, _, names in os.walk(folder)
        for n in names
        if n.endswith(".py")
    ]
    h = hashlib.sha256()
    for rel in sorted(found, key=lambda r: r.split("/")):
        h.update(rel.encode() + b"\0" + (folder / rel).read_bytes())
    return h.hexdigest()


def installed() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in inputs.DISTRIBUTIONS:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, data_path: Path) -> Path:
    d = tmp_path_factory.mktemp("keys")
    write_model(d / "model.onnx")
    shutil.copyfile(data_path, d / "data.npz")
    return d


Open = Callable[..., Session]


@pytest.fixture(scope="module")
def session(root: Path) -> Open:
    """session(**sections) opens a Session on the tiny model and data with those config tables
    over the base config."""

    def make(**over: Any) -> Session:
        base = {
            "model": {"path": str(root / "model.onnx"), "name": "tiny", "version": "1.0.0"},
            "data": {"path": str(root / "data.npz")},
            "output": {"dir": str(root / "dist")},
        }
        return Session.open(parse_config(merged(base, over), root), Progress(False))

    return make


def rewritten(src: Path, dst: Path, split: str) -> Path:
    """A copy of the npz whose `split` images have one pixel changed."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[f"{split}_images"] = arrays[f"{split}_images"].copy()
    arrays[f"{split}_images"][0, 0, 0] ^= 1
    np.savez(dst, **arrays)
    return dst


def conversion(s: Session, t: Any = ORT, opts: Any = None) -> str:
    return inputs.conversion_key(s, t, t.Options() if opts is None else opts)


# --- versions, code, bundle and data hashes ----------------------------------------------------


def test_versions_are_what_importlib_metadata_reads() -> None:
    got = inputs.versions()
    assert got == installed() and list(got) == list(inputs.DISTRIBUTIONS)
    assert got["numpy"] == np.__version__ and got["onnx"] == onnx.__version__


# packager's dependencies that decide no conversion, validation or benchmark result
DECIDE_NOTHING = {
    "click": "the command line",
    "jinja2": "the report's HTML",
    "matplotlib": "the report's figures",
    "psutil": "whether the host was busy (a busy benchmark is never stored)",
    "cryptography": "signing",
    "model-signing": "signing",
    "pyopenssl": "signing",
    "cyclonedx-python-lib": "the SBOM",
    "pydantic": "config parsing (the parsed values are in the keys)",
    "pooch": "the example's download",
}


def test_every_dependency_that_decides_a_result_is_versioned() -> None:
    """Read from packager's installed metadata, the runtime extras included: whatever is not
    named above as deciding nothing must be in the keys' versions."""
    needed = set()
    for req in requires("packager") or []:
        extra = re.search(r'extra == "([a-z]+)"', req)
        if extra is None or extra.group(1) not in ("dev", "example", "all"):
            match = re.match(r"[A-Za-z0-9._-]+", req)
            assert match is not None
            needed.add(match.group(0).lower())
    assert needed - set(DECIDE_NOTHING) <= set(inputs.DISTRIBUTIONS)
    assert {"pydicom", "tensorrt", "coremltools"} <= needed  # the metadata was read
    assert not set(DECIDE_NOTHING) & set(inputs.DISTRIBUTIONS)


def test_a_tree_hash_is_each_python_files_path_and_bytes_in_order(tmp_path: Path) -> None:
    assert inputs._tree_sha256(tmp_path) == sha(b"")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "c.py").write_bytes(b"y = 1\n")
    (tmp_path / "b.py").write_bytes(b"x = 2\n")
    (tmp_path / "notes.txt").write_bytes(b"not code")
    (tmp_path / "a" / "c.pyc").write_bytes(b"\0compiled")
    assert inputs._tree_sha256(tmp_path) == sha(b"a/c.py\0y = 1\nb.py\0x = 2\n")


def test_the_code_hash_is_the_targets_package_and_packagers_own_walk() -> None:
    targets = Path(cpu_onnxruntime.__file__).parent
    assert inputs.code_sha256(type(ORT)) == {
        "target": tree(targets),
        "packager": tree(Path(packager.__file__).parent),
    }
    edge = inputs.code_sha256(type(EDGE))
    assert edge["target"] == tree(Path(edge_ort.__file__).parent) != tree(targets)


def test_bundle_hashes_are_each_files_sha256_by_its_posix_path(tmp_path: Path) -> None:
    assert inputs.bundle_hashes(tmp_path) == {}
    files = {"model.onnx": b"\x08\x07", "code/runtime.py": b"print()\n", "a/b/c.json": b"{}"}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    (tmp_path / "empty").mkdir()
    assert inputs.bundle_hashes(tmp_path) == {n: sha(d) for n, d in files.items()}


def test_the_calibration_hash_of_an_npz_is_the_files_sha256(session: Open, root: Path) -> None:
    assert inputs.calibration_sha256(session()) == sha((root / "data.npz").read_bytes())


def test_a_data_file_rewritten_in_place_gets_a_new_calibration_hash(
    session: Open, root: Path, tmp_path: Path
) -> None:
    """One process, two builds (the Python API): the second reads the file as it is now."""
    data = tmp_path / "data.npz"
    shutil.copyfile(root / "data.npz", data)
    before = session(data={"path": str(data)})
    first = conversion(before)
    rewritten(root / "data.npz", data, "train")
    after = session(data={"path": str(data)})
    assert inputs.calibration_sha256(after) == sha(data.read_bytes())
    assert conversion(after) != first


def image_folder(folder: Path, source: Path) -> Path:
    """<split>/<class>/<i>.png, two images of each class per split, from the npz."""
    with np.load(source) as z:
        for split in ("train", "val", "test"):
            images, labels = z[f"{split}_images"], z[f"{split}_labels"].reshape(-1)
            for cls, name in enumerate(("normal", "pneumonia")):
                (folder / split / name).mkdir(parents=True)
                for i in np.flatnonzero(labels == cls)[:2]:
                    Image.fromarray(images[i]).save(folder / split / name / f"{i}.png")
    return folder


def folder_hash(base: Path) -> str:
    """The folder hash as packager.core.data.FolderHash documents it (no CSV)."""
    h = hashlib.sha256(b"packager-folder-v2\n\n")
    for label, name in enumerate(("normal", "pneumonia")):
        for f in sorted((base / name).iterdir()):
            h.update(f"{name}/{f.name}\t{label}\t{sha(f.read_bytes())}\n".encode())
    return h.hexdigest()


def test_the_calibration_hash_of_a_folder_is_its_calibration_splits_own(
    session: Open, root: Path, tmp_path: Path
) -> None:
    folder = image_folder(tmp_path / "images", root / "data.npz")
    s = session(data={"path": str(folder)})
    assert inputs.calibration_sha256(s) == folder_hash(folder / "train")
    val = session(data={"path": str(folder), "calibration_split": "val"})
    assert inputs.calibration_sha256(val) == folder_hash(folder / "val")
    key = conversion(s)
    Image.new("L", (28, 28), 7).save(next((folder / "val" / "normal").iterdir()))
    assert conversion(session(data={"path": str(folder)})) == key  # a split nobody reads
    Image.new("L", (28, 28), 7).save(next((folder / "train" / "normal").iterdir()))
    calibrated = conversion(session(data={"path": str(folder)}))
    assert calibrated != key
    # the validation split too: a conversion may read it (Core ML's translation check)
    Image.new("L", (28, 28), 7).save(next((folder / "test" / "normal").iterdir()))
    assert conversion(session(data={"path": str(folder)})) not in (key, calibrated)


# --- the keys, recomputed from their documented parts ----------------------------------------


def common(t: Any) -> dict[str, Any]:
    """What every key holds: the installed versions, packager's version, the code hash."""
    own = Path(sys.modules[type(t).__module__].__file__ or "").parent
    code = {"target": tree(own), "packager": tree(Path(packager.__file__).parent)}
    return {"versions": installed(), "packager": version("packager"), "code": code}


def conversion_parts(s: Session, root: Path, t: Any) -> dict[str, Any]:
    card = {"intended_use": "", "indications": [], "contraindications": []}
    model = {"name": "tiny", "version": "1.0.0", "author": "", "license": "", "description": ""}
    return {
        "kind": "conversion",
        "target": t.name,
        "model_sha256": sha((root / "model.onnx").read_bytes()),
        "options": dataclasses.asdict(t.Options()),
        "preprocess": s.preprocess.to_json(),
        "calibration": {
            "data": sha((root / "data.npz").read_bytes()),
            "split": "train",
            "size": 300,
            "seed": 0,
        },
        "validation": validation_data(root),
        "splits": {},
        "host": {},
        "labels": dataclasses.asdict(s.cfg.labels),
        "model": model | {"path": None, "card": card},
        "max_sensitivity_drop": s.cfg.gates.max_sensitivity_drop,
        "finding_max_sensitivity_drop": {},
    } | common(t)


FILES = {"model.onnx": sha(b"model"), "runtime.json": sha(b"{}"), "code/runtime.py": sha(b"")}


def validation_data(root: Path) -> dict[str, str]:
    return {"sha256": sha((root / "data.npz").read_bytes()), "split": "test"}


def test_the_conversion_key_is_its_documented_parts(session: Open, root: Path) -> None:
    s = session()
    assert conversion(s, EDGE) == canonical(conversion_parts(s, root, EDGE))


def test_the_validation_key_is_its_documented_parts(session: Open, root: Path) -> None:
    s = session()
    cfg = s.cfg.to_dict()
    config = {k: cfg[k] for k in ("labels", "gates", "preprocess")}
    parts = {
        "kind": "validation",
        "target": "cpu-onnxruntime",
        "files": FILES,
        "data": validation_data(root),
        "config": config | {"data": cfg["data"] | {"path": None}},
    } | common(ORT)
    assert inputs.validation_key(s, ORT, FILES) == canonical(parts)


def test_the_benchmark_key_is_its_documented_parts(session: Open, root: Path) -> None:
    s = session()
    with np.load(root / "data.npz") as z:
        x = PRE(z["test_images"])  # the tiny model's preprocessing, given by hand
    parts = {
        "kind": "benchmark",
        "target": "cpu-onnxruntime",
        "files": FILES,
        "bench": s.cfg.to_dict()["bench"] | {"reuse": None},
        "fixed_batch": None,
        "inputs": sha(x.tobytes()),
        "host": host_facts(),
    } | common(ORT)
    assert inputs.benchmark_key(s, ORT, FILES) == canonical(parts)


def test_the_inputs_key_is_its_documented_parts(session: Open, root: Path) -> None:
    s = session()
    cfg = s.cfg.to_dict()
    del cfg["output"]
    cfg["model"]["path"] = cfg["data"]["path"] = None
    for bench in (True, False):
        parts = {
            "kind": "inputs",
            "conversion": canonical(conversion_parts(s, root, ORT)),
            "data": validation_data(root),
            "config": cfg,
            "bench": bench,
        }
        assert inputs.inputs_key(s, ORT, ORT.Options(), bench) == canonical(parts)


# --- one input at a time, and what is not one -------------------------------------------------

CARD = {
    "[model] name": {"model": {"name": "other"}},
    "[model] version": {"model": {"version": "2.0.0"}},
    "[model] description": {"model": {"description": "a test model"}},
    "[model.card]": {"model": {"card": {"intended_use": "triage"}}},
}
OUTPUT = {"output folder": {"output": {"dir": "/tmp/elsewhere"}}}
SELFTEST = {"[selftest]": {"selftest": {"synthetic": 8}}}
PREPROCESS = {
    "[preprocess] mean": {"preprocess": {"mean": [0.4]}},
    "[preprocess] resize": {"preprocess": {"resize": "nearest"}},
}
LABELS = {
    "[labels] threshold": {"labels": {"threshold": 0.3}},
    "[labels] names": {"labels": {"names": ["healthy", "pneumonia"]}},
    "[labels] output": {"labels": {"output": "logits"}},
}
CALIBRATION = {
    "calibration split": {"data": {"calibration_split": "val"}},
    "calibration size": {"data": {"calibration_size": 100}},
    "seed": {"data": {"seed": 1}},
}
BENCH = {
    "[bench] seconds": {"bench": {"seconds": 0.5}},
    "[bench] batch_sizes": {"bench": {"batch_sizes": [1, 2]}},
    "[bench] warmup": {"bench": {"warmup": 3}},
    "[bench] min_iterations": {"bench": {"min_iterations": 7}},
    "[bench] timeout_s": {"bench": {"timeout_s": 60.0}},
    "[bench] max_seconds": {"bench": {"max_seconds": 9.0}},
    "[bench.open_loop]": {"bench": {"open_loop": {"sla_ms": 9.0}}},
}
REUSE = {
    "[bench] reuse never": {"bench": {"reuse": "never"}},
    "always": {"bench": {"reuse": "always"}},
}
DROP = {"max_sensitivity_drop": {"gates": {"max_sensitivity_drop": 0.02}}}
GATE = {"[gates] min_sensitivity": {"gates": {"min_sensitivity": 0.5}}}
SPLIT = {"[data] split": {"data": {"split": "val"}}}
DATA = {"[data] shareable": {"data": {"shareable": True}}}


def keys(s: Session) -> dict[str, str]:
    return {
        "conversion": conversion(s),
        "validation": inputs.validation_key(s, ORT, FILES),
        "benchmark": inputs.benchmark_key(s, ORT, FILES),
        "inputs": inputs.inputs_key(s, ORT, ORT.Options(), True),
    }


# For each config change, the keys it must change (the others must stay): conversion reads the
# card, labels, preprocessing, calibration, the validation split and its one gate; validation the labels, gates, [data]
# and preprocessing; a benchmark [bench] but `reuse`, and the images it feeds; inputs all of it
# but the output folder.
CHANGES = [
    *[(n, c, {"conversion", "inputs"}) for n, c in CARD.items()],
    *[(n, c, set()) for n, c in OUTPUT.items()],
    *[(n, c, {"inputs"}) for n, c in SELFTEST.items()],
    *[(n, c, {"conversion", "validation", "benchmark", "inputs"}) for n, c in PREPROCESS.items()],
    *[(n, c, {"conversion", "validation", "inputs"}) for n, c in LABELS.items()],
    *[(n, c, {"conversion", "validation", "inputs"}) for n, c in CALIBRATION.items()],
    *[(n, c, {"conversion", "validation", "inputs"}) for n, c in DROP.items()],
    *[(n, c, {"validation", "inputs"}) for n, c in (GATE | DATA).items()],
    *[(n, c, {"conversion", "validation", "benchmark", "inputs"}) for n, c in SPLIT.items()],
    *[(n, c, {"benchmark", "inputs"}) for n, c in BENCH.items()],
    *[(n, c, {"inputs"}) for n, c in REUSE.items()],
    ("[targets] table", {"targets": {"edge-ort": {"threads": 2}}}, {"inputs"}),
]


@pytest.mark.parametrize(("change", "over", "changed"), CHANGES, ids=[c[0] for c in CHANGES])
def test_a_config_change_moves_exactly_the_keys_it_decides(
    session: Open, change: str, over: dict[str, Any], changed: set[str]
) -> None:
    before, after = keys(session()), keys(session(**over))
    assert {k for k in before if before[k] != after[k]} == changed, change


def test_the_model_decides_a_conversion_by_its_bytes_not_its_path(
    session: Open, root: Path, tmp_path: Path
) -> None:
    base = keys(session())
    copied = shutil.copyfile(root / "model.onnx", tmp_path / "copy.onnx")
    assert keys(session(model={"path": str(copied)})) == base
    other = keys(session(model={"path": str(write_model(tmp_path / "other.onnx", gain=2.0))}))
    # the bundle files, not the source model, decide validation and benchmark
    assert {k for k in base if base[k] != other[k]} == {"conversion", "inputs"}
    fixed = keys(session(model={"path": str(write_model(tmp_path / "b8.onnx", batch=8))}))
    assert {k for k in base if base[k] != fixed[k]} == {"conversion", "benchmark", "inputs"}


def test_the_data_decides_by_its_bytes_not_its_path(
    session: Open, root: Path, tmp_path: Path
) -> None:
    base = keys(session())
    copied = shutil.copyfile(root / "data.npz", tmp_path / "copy.npz")
    assert keys(session(data={"path": str(copied)})) == base
    for split in ("train", "test"):
        other = rewritten(root / "data.npz", tmp_path / f"{split}.npz", split)
        got = keys(session(data={"path": str(other)}))
        # the npz is one file: its hash is the calibration data and the validation data alike;
        # the benchmark feeds the test images, so only a change of those moves its key
        moved = {"conversion", "validation", "inputs"} | (
            {"benchmark"} if split == "test" else set()
        )
        assert {k for k in base if base[k] != got[k]} == moved, split


def test_the_target_its_options_and_the_bundle_files_decide(session: Open) -> None:
    s = session()
    base = keys(s)
    assert conversion(s, EDGE, dataclasses.replace(EDGE.Options(), threads=2)) != conversion(
        s, EDGE
    )
    assert conversion(s, EDGE, dataclasses.replace(EDGE.Options(), quantize="dynamic")) != (
        conversion(s, EDGE)
    )
    assert inputs.inputs_key(s, ORT, ORT.Options(), False) != base["inputs"]
    renamed = copy.copy(ORT)
    renamed.__dict__["name"] = "other"  # the same code under another name
    assert conversion(s, renamed) != base["conversion"]
    for key in (inputs.validation_key, inputs.benchmark_key):
        assert key(s, renamed, FILES) != key(s, ORT, FILES)
        for files in (
            FILES | {"model.onnx": sha(b"other")},
            FILES | {"extra.bin": sha(b"")},
            {("model.bin" if n == "model.onnx" else n): h for n, h in FILES.items()},
        ):
            assert key(s, ORT, files) != key(s, ORT, FILES)


def test_the_hosts_kind_decides_a_benchmark(session: Open, monkeypatch: pytest.MonkeyPatch) -> None:
    s = session()
    here = inputs.benchmark_key(s, ORT, FILES)
    monkeypatch.setattr(os, "cpu_count", lambda: 97)  # a host with other cores
    assert inputs.benchmark_key(s, ORT, FILES) != here


def test_a_findings_own_sensitivity_drop_decides_its_conversion(root: Path, tmp_path: Path) -> None:
    """INT8 accuracy control of a multi-label model holds each finding to its own limit
    ([gates.findings.<name>] over [gates]); the finding's other gates decide validation only."""
    data, _ = write_data(root / "data.npz", tmp_path / "findings.npz", limit=40)
    model = write_model(tmp_path / "findings.onnx", outputs=3)

    def key(findings: dict[str, Any]) -> str:
        cfg = {
            "model": {"path": str(model)},
            "data": {"path": str(data)},
            "labels": {"task": "multilabel", "names": FINDINGS},
            "gates": {"findings": findings},
        }
        return conversion(Session.open(parse_config(cfg, tmp_path), Progress(False)))

    base = key({})
    assert key({"bright": {"min_sensitivity": 0.5}}) == base
    drops = [key({"bright": {"max_sensitivity_drop": d}}) for d in (0.02, 0.1)]
    drops.append(key({"upper": {"max_sensitivity_drop": 0.02}}))
    assert len({base, *drops}) == 4


def test_the_splits_a_target_reads_decide_its_conversion(session: Open, root: Path) -> None:
    """OpenVINO's INT8 accuracy control reads its control split: that split's own hash is a
    part of the key (for an image folder, the calibration split's hash would not cover it)."""
    ov = get("cpu-openvino")
    s = session()
    control = ov.Options(precision="int8", int8_mode="accuracy-control", control_split="val")
    ptq = ov.Options(precision="int8")
    assert ov.data_splits(ptq) == () and ov.data_splits(control) == ("val",)
    want = conversion_parts(s, root, ov) | {
        "options": dataclasses.asdict(control),
        "splits": {"val": s.dataset("val").sha256},
    }
    assert conversion(s, ov, control) == canonical(want)
    other = dataclasses.replace(control, control_split="train")
    assert conversion(s, ov, other) != conversion(s, ov, control)


def test_the_gpu_a_tensorrt_engine_is_built_for_decides_its_conversion(
    session: Open, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TensorRT engine runs on the GPU that built it only: a cache shared between hosts must
    not hand one GPU's engine to another. The GPU's facts are a part of gpu-tensorrt's key; no
    other target's key reads the GPU."""
    import packager.targets.gpu_tensorrt as trt_target
    from packager.targets.gpu_tensorrt.runtime import Gpu

    trt, s = get("gpu-tensorrt"), session()
    here = trt.conversion_host(trt.Options())
    assert here == {"gpu": None}  # this host: no CUDA (the test suite runs on CPU hosts)
    assert conversion(s, trt) == canonical(conversion_parts(s, root, trt) | {"host": here})
    keys = {conversion(s, trt), conversion(s, EDGE)}
    for name, cc in (("NVIDIA L4", "8.9"), ("NVIDIA A100", "8.0")):
        gpu = Gpu(name, cc, 24000)
        monkeypatch.setattr(trt_target, "cuda_host", lambda gpu=gpu: (gpu, ""))
        facts = {"gpu": {"name": name, "compute_capability": cc, "memory_mb": 24000}}
        assert trt.conversion_host(trt.Options()) == facts
        keys |= {conversion(s, trt), conversion(s, EDGE)}
        # the portable form (no engine) is the same whatever the GPU: its key is shared
        portable = trt.Options(engine="skip")
        assert trt.conversion_host(portable) == {"gpu": None}
        keys.add(conversion(s, trt, portable))
    # gpu-tensorrt: one key per GPU, and one for the portable form; edge-ort: one key
    assert len(keys) == 5
