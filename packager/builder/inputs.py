"""What decides a build's result, hashed: the keys of the build cache (packager.builder.cache) and
of "up to date".

- conversion: the model, the target's typed Options, preprocessing, the calibration data, the
  validation split and any other split the target's conversion reads (Target.data_splits), the
  converter, runtime and image decoder versions installed, packager's version and the target's
  own code; the host facts the target's conversion depends on (Target.conversion_host: the GPU
  a TensorRT engine is built for); of the config, what the conversion reads: [labels], [model] (its path aside), the
  sensitivity drop INT8 accuracy control holds (each finding's too).
- validation: the bundle's files as converted and installed (artifact, code, runtime.json), the
  validation data, the config the gates and evidence read, the runtime versions and packager's
  code. Reused only when all of them are byte-identical.
- benchmark: the bundle's files as converted and installed, [bench], the images it feeds, the
  host's kind (CPU model, cores, ISA flags, OS, Python), the runtime versions and packager's code.
  A benchmark measured on a busy host, or with a window that never settled, is never stored.
- inputs: everything of a build (the conversion key, the whole config but the output folder,
  --no-bench); recorded in manifest.json, so an unchanged build finds its bundle up to date."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from packager.builder.cache import cache_key
from packager.builder.session import Session
from packager.core.hostinfo import host_facts
from packager.core.target import Target
from packager.core.version import __version__
from packager.shipped.integrity import file_sha256

# Every converter, runtime and image decoder a build may use: a change of any one invalidates
# all keys (coarse, never wrong). The data hashes are of the files, so the decoders that turn
# them into pixels are versioned here.
DISTRIBUTIONS = (
    "numpy",
    "pillow",
    "pydicom",
    "pylibjpeg",  # with its two plugins: compressed DICOM (preprocess.DICOM_DECODERS)
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-extensions",
    "openvino",
    "nncf",
    "coremltools",
    "torch",
    "tensorrt",
    "cuda-python",  # the engine's buffers, with tensorrt (gpu-tensorrt's requirements)
    "scipy",
    "scikit-learn",
    "statsmodels",
    "protobuf",  # prints config.pbtxt (text_format), with tritonclient's ModelConfig
    "tritonclient",
)
PACKAGER = Path(__file__).resolve().parents[1]


@cache
def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _tree_sha256(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


@cache
def code_sha256(target: type[Target]) -> dict[str, str]:
    """The target's own package, and the packager code every build runs (shipped included)."""
    own = Path(inspect.getfile(target)).resolve().parent
    return {"target": _tree_sha256(own), "packager": _tree_sha256(PACKAGER)}


def options_dict(opts: Any) -> dict[str, Any]:
    return dataclasses.asdict(opts)


def calibration_sha256(s: Session) -> str:
    """The data file's sha256; for a folder, the calibration split's own hash (it is read)."""
    if Path(s.cfg.data.path).is_file():
        # the npz's hash as this session read it: a cache by path would go stale when the file
        # is rewritten between two builds of one process (the Python API)
        return s.validation.sha256
    return s.dataset(s.cfg.data.calibration_split).sha256


def conversion_key(s: Session, t: Target, opts: Any) -> str:
    cfg = s.cfg
    return cache_key(
        {
            "kind": "conversion",
            "target": t.name,
            "model_sha256": s.info.sha256,
            "options": options_dict(opts),
            "preprocess": s.preprocess.to_json(),
            "calibration": {
                "data": calibration_sha256(s),
                "split": cfg.data.calibration_split,
                "size": cfg.data.calibration_size,
                "seed": cfg.data.seed,
            },
            # a conversion may read the validation images (Core ML's translation check,
            # edge-ort's shape check) and other splits its target names (OpenVINO's control
            # split): each by its own hash, whatever the calibration split's is
            "validation": {"sha256": s.validation.sha256, "split": cfg.data.split},
            "splits": {name: s.dataset(name).sha256 for name in t.data_splits(opts)},
            "host": t.conversion_host(opts),  # e.g. the GPU a TensorRT engine is built for
            # what a conversion reads of the config (BuildContext): labels and [model] (Core ML
            # metadata, Triton names), and the one gate INT8 accuracy control holds; the other
            # gates only decide validation, so changing them re-validates without converting
            # (a multi-label model's accuracy control holds each finding to its own limit)
            "labels": dataclasses.asdict(cfg.labels),
            "model": dataclasses.asdict(cfg.model) | {"path": None},
            "max_sensitivity_drop": cfg.gates.max_sensitivity_drop,
            "finding_max_sensitivity_drop": {
                name: over["max_sensitivity_drop"]
                for name, over in cfg.gates.findings.items()
                if "max_sensitivity_drop" in over
            },
            "versions": versions(),
            "packager": __version__,
            "code": code_sha256(type(t)),
        }
    )


def validation_key(s: Session, t: Target, files: dict[str, str]) -> str:
    """`files`: {name: sha256} of the bundle folder as validation finds it."""
    cfg = s.cfg.to_dict()
    return cache_key(
        {
            "kind": "validation",
            "target": t.name,
            "files": files,
            "data": {"sha256": s.validation.sha256, "split": s.validation.split},
            "config": {k: cfg[k] for k in ("labels", "gates", "data", "preprocess")}
            | {"data": cfg["data"] | {"path": None}},
            "versions": versions(),
            "packager": __version__,
            "code": code_sha256(type(t)),
        }
    )


def benchmark_key(s: Session, t: Target, files: dict[str, str]) -> str:
    """`files`: {name: sha256} of the bundle folder as converted and installed (what the
    runtime loads). The host is its CPU model, core count, ISA flags, OS and Python: a
    benchmark is reused only on a machine of the same kind."""
    return cache_key(
        {
            "kind": "benchmark",
            "target": t.name,
            "files": files,
            "bench": s.cfg.to_dict()["bench"] | {"reuse": None},  # how to reuse, not what
            "fixed_batch": s.info.fixed_batch,
            "inputs": hashlib.sha256(s.x.tobytes()).hexdigest(),  # what the benchmark feeds
            "host": host_facts(),
            "versions": versions(),
            "packager": __version__,
            "code": code_sha256(type(t)),
        }
    )


def inputs_key(s: Session, t: Target, opts: Any, bench: bool) -> str:
    cfg = s.cfg.to_dict()
    return cache_key(
        {
            "kind": "inputs",
            "conversion": conversion_key(s, t, opts),
            "data": {"sha256": s.validation.sha256, "split": s.validation.split},
            "config": {k: v for k, v in cfg.items() if k not in ("output",)}
            | {"model": cfg["model"] | {"path": None}, "data": cfg["data"] | {"path": None}},
            "bench": bench,
        }
    )


def bundle_hashes(bdir: Path) -> dict[str, str]:
    return {
        p.relative_to(bdir).as_posix(): file_sha256(p)
        for p in sorted(bdir.rglob("*"))
        if p.is_file()
    }
