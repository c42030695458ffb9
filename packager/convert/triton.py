"""Triton Inference Server model repositories: write `<root>/<model>/config.pbtxt` plus
`<root>/<model>/<version>/<files>`, and read a config back. The config is Triton's own ModelConfig
protobuf message, printed and parsed by protobuf's text_format, so its escaping is the library's.
Target-neutral: any platform or backend, GPU or CPU."""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from google.protobuf import text_format

from packager.core.errors import UserError

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

DATA_TYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
}
# The file each platform/backend loads from <model>/<version>/ unless default_model_filename says.
DEFAULT_FILES = {
    "tensorrt_plan": "model.plan",
    "onnxruntime_onnx": "model.onnx",
    "onnxruntime": "model.onnx",
    "tensorrt": "model.plan",
    "openvino": "model.xml",
}


@dataclass
class Tensor:
    """One input or output. `dims` leave out the batch axis when max_batch_size > 0; -1 marks a
    variable dimension."""

    name: str
    dtype: str  # numpy name: "float32", "float16", ...
    dims: list[int]

    @classmethod
    def from_shape(cls, name: str, dtype: str, shape: list[int | str], batched: bool) -> Tensor:
        """From an ONNX shape (symbolic dims as str); `batched` drops the leading batch axis."""
        dims = [d if isinstance(d, int) and d > 0 else -1 for d in shape]
        return cls(name, dtype, dims[1:] if batched else dims)

    @property
    def data_type(self) -> str:
        if self.dtype not in DATA_TYPES:
            raise UserError(
                f"tensor '{self.name}' is {self.dtype}, which Triton has no type for; export "
                "the model with one of " + ", ".join(DATA_TYPES)
            )
        return DATA_TYPES[self.dtype]


@dataclass
class Accelerator:
    """An execution accelerator of the backend, e.g. ("tensorrt", {"precision_mode": "FP16"})."""

    name: str
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass
class TritonModel:
    name: str
    inputs: list[Tensor]
    outputs: list[Tensor]
    platform: str = ""  # "tensorrt_plan", "onnxruntime_onnx", ... (or set backend)
    backend: str = ""  # "openvino", "onnxruntime", "python", ...
    max_batch_size: int = 0  # 0: the model's own batch axis is in dims (fixed batch)
    preferred_batch_sizes: list[int] = field(default_factory=list)
    max_queue_delay_us: int = 0
    dynamic_batching: bool = True  # only meaningful when max_batch_size > 0
    instance_kind: Literal["KIND_GPU", "KIND_CPU"] = "KIND_GPU"
    instance_count: int = 1
    warmup_batch_sizes: list[int] = field(default_factory=lambda: [1])  # []: no warm-up
    gpu_accelerators: list[Accelerator] = field(default_factory=list)
    cpu_accelerators: list[Accelerator] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)  # model-level string parameters
    default_model_filename: str = ""
    version: int = 1

    def check(self) -> None:
        """Refuse what Triton would refuse at load time, naming the field."""
        if not self.name or self.name in (".", "..") or any(c in self.name for c in "/\\\0\n"):
            raise UserError(
                f"Triton model name {self.name!r} must be a plain directory name; set [model] name"
            )
        if not (self.platform or self.backend):
            raise UserError(f"Triton model '{self.name}': set a platform or a backend")
        if self.max_batch_size < 0:
            raise UserError(f"max_batch_size = {self.max_batch_size} must be 0 or more")
        if self.instance_count < 1 or self.version < 1:
            raise UserError("instance count and model version must be 1 or more")
        for b in self.preferred_batch_sizes:
            if not 1 <= b <= max(self.max_batch_size, 1):
                raise UserError(
                    f"preferred batch size {b} is outside 1..max_batch_size "
                    f"({self.max_batch_size}); lower it or raise max_batch_size"
                )
        for b in self.warmup_batch_sizes:
            if not 1 <= b <= max(self.max_batch_size, 1):
                raise UserError(f"warm-up batch size {b} is outside 1..{self.max_batch_size}")
        for t in [*self.inputs, *self.outputs]:
            t.data_type  # noqa: B018 - raises for types Triton lacks
            if not t.dims or any(d == 0 or d < -1 for d in t.dims):
                raise UserError(f"tensor '{t.name}' has dims {t.dims}; use sizes > 0 or -1")
        if self.warmup_batch_sizes:
            for t in self.inputs:
                if -1 in t.dims:
                    raise UserError(
                        f"input '{t.name}' has a variable dimension {t.dims}; warm-up needs a "
                        "concrete shape (set warmup_batch_sizes = [] or fix the export)"
                    )

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0 and self.dynamic_batching

    @property
    def model_filename(self) -> str:
        return self.default_model_filename or DEFAULT_FILES.get(self.platform or self.backend, "")


def model_config(model: TritonModel) -> ModelConfig:
    """The model as Triton's ModelConfig message. Fields at their proto3 default (0, "", false)
    are left unset, which Triton reads exactly as if they were written out."""
    # tritonclient.grpc imports grpc and numpy: loaded when a config is built, not with the CLI.
    from tritonclient.grpc import model_config_pb2 as pb

    model.check()
    cfg = pb.ModelConfig(
        name=model.name,
        platform=model.platform,
        backend=model.backend,
        default_model_filename=model.default_model_filename,
        max_batch_size=model.max_batch_size,
    )
    for tensors, dest in ((model.inputs, cfg.input), (model.outputs, cfg.output)):
        for t in tensors:
            dest.add(name=t.name, data_type=pb.DataType.Value(t.data_type), dims=t.dims)
    if model.batching:
        cfg.dynamic_batching.SetInParent()  # present even with every field at its default
        cfg.dynamic_batching.preferred_batch_size.extend(model.preferred_batch_sizes)
        cfg.dynamic_batching.max_queue_delay_microseconds = model.max_queue_delay_us
    kind = pb.ModelInstanceGroup.Kind.Value(model.instance_kind)
    cfg.instance_group.add(count=model.instance_count, kind=kind)
    accelerators = cfg.optimization.execution_accelerators
    for a in model.gpu_accelerators:
        accelerators.gpu_execution_accelerator.add(name=a.name, parameters=a.parameters)
    for a in model.cpu_accelerators:
        accelerators.cpu_execution_accelerator.add(name=a.name, parameters=a.parameters)
    for key, value in model.parameters.items():
        cfg.parameters[key].string_value = value
    for b in model.warmup_batch_sizes:
        warmup = cfg.model_warmup.add(
            name=f"batch-{b}", batch_size=b if model.max_batch_size > 0 else 1
        )
        for t in model.inputs:
            warmup.inputs[t.name].CopyFrom(
                pb.ModelWarmup.Input(
                    data_type=pb.DataType.Value(t.data_type), dims=t.dims, zero_data=True
                )
            )
    return cfg


def render_config(model: TritonModel) -> str:
    """config.pbtxt's text: the message in protobuf text format, UTF-8 (the default of
    protobuf 6, explicit for older ones), repeated numbers on one line as Triton's docs write."""
    return text_format.MessageToString(
        model_config(model), as_utf8=True, use_short_repeated_primitives=True
    )


def write_repository(root: Path, model: TritonModel, files: dict[str, Path]) -> Path:
    """Write `root/<name>/config.pbtxt` and copy each source file to `root/<name>/<version>/<dest>`
    (`files` maps dest name -> source; a source already there stays). Returns the model's folder."""
    text = render_config(model)
    if model.model_filename and model.model_filename not in files:
        raise UserError(
            f"Triton model '{model.name}' loads {model.model_filename} but the repository gets "
            f"{sorted(files)}; name the file so or set default_model_filename"
        )
    mdir = root / model.name
    vdir = mdir / str(model.version)
    vdir.mkdir(parents=True, exist_ok=True)
    for dest, src in files.items():
        target = (vdir / dest).resolve()
        if not target.is_relative_to(vdir.resolve()):
            raise UserError(f"repository file name {dest!r} escapes the model's version folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target != Path(src).resolve():
            shutil.copyfile(src, target)
    (mdir / "config.pbtxt").write_text(text, encoding="utf-8")
    return mdir


def parse_config(source: Path | str) -> ModelConfig:
    """A config.pbtxt (path or text) parsed with Triton's ModelConfig protobuf."""
    from tritonclient.grpc import model_config_pb2

    text = source.read_text(encoding="utf-8") if isinstance(source, Path) else source
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        where = f"{source}: " if isinstance(source, Path) else ""
        raise UserError(f"{where}not a valid Triton model config ({exc})") from None


def check_repository(root: Path) -> list[str]:
    """Problems of a model repository: each config parses with Triton's schema, its name matches
    its folder, and the file its platform or backend loads is in a numbered version folder."""
    problems = []
    configs = sorted(root.glob("*/config.pbtxt"))
    if not configs:
        return [f"{root}: no <model>/config.pbtxt"]
    for path in configs:
        mdir = path.parent
        try:
            cfg = parse_config(path)
        except UserError as exc:
            problems.append(str(exc))
            continue
        if cfg.name and cfg.name != mdir.name:
            problems.append(f"{path}: name {cfg.name!r} differs from its folder {mdir.name!r}")
        versions = [d for d in mdir.iterdir() if d.is_dir() and d.name.isdigit()]
        if not versions:
            problems.append(f"{mdir}: no numbered version folder")
        fname = cfg.default_model_filename or DEFAULT_FILES.get(cfg.platform or cfg.backend, "")
        for v in versions:
            if fname and not (v / fname).is_file():
                problems.append(f"{v}: missing {fname}")
    return problems


def serve_commands(model: TritonModel, repo: str = "triton", image_tag: str = "<yy.mm>") -> dict:
    """Shell lines that serve the repository and load-test it (for bundle READMEs)."""
    gpus = "--gpus all " if model.instance_kind == "KIND_GPU" else ""
    image = f"nvcr.io/nvidia/tritonserver:{image_tag}-py3"
    batch = max(model.preferred_batch_sizes or [1]) if model.max_batch_size > 0 else 1
    server = (
        f"docker run --rm {gpus}-p 8000:8000 -p 8001:8001 -p 8002:8002 "
        f'-v "$PWD/{repo}:/models" {image} tritonserver --model-repository=/models'
    )
    perf = (
        f"docker run --rm --net host {image}-sdk perf_analyzer -m {shlex.quote(model.name)} "
        f"-i grpc -u localhost:8001 -b {batch} --concurrency-range 1:8:2 --percentile=95"
    )
    return {"tritonserver": server, "perf_analyzer": perf}
