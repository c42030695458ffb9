"""cpu-openvino's serving files: a Triton model repository for the OpenVINO backend and an
OpenVINO Model Server config that pins the inference precision."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from packager.convert.triton import Tensor, TritonModel, serve_commands, write_repository
from packager.core.target import BuildContext

OVMS_IMAGE = "openvino/model_server:latest"


def write_serving(ctx: BuildContext, stage: Path, runtime_config: dict[str, Any]) -> dict:
    """A Triton model repository for the OpenVINO backend (OVMS reads the same <name>/1/ layout)
    and an OVMS config that pins the precision."""
    info, name = ctx.model, ctx.model_config.name
    precision = runtime_config["inference_precision"]
    params = {"PERFORMANCE_HINT": "LATENCY"}
    if precision == "bf16":
        params["HINT_BF16"] = "YES"
    if runtime_config["threads"]:
        params["INFERENCE_NUM_THREADS"] = str(runtime_config["threads"])
    fixed = info.fixed_batch is not None
    model = TritonModel(
        name=name,
        backend="openvino",
        # The OpenVINO backend pads every batched request up to max_batch_size; with 0 the
        # client's own batch axis goes through unchanged (the IR takes any batch).
        max_batch_size=0,
        inputs=[Tensor.from_shape(info.input.name, info.input.dtype, info.input.shape, False)],
        outputs=[Tensor.from_shape(info.output.name, info.output.dtype, info.output.shape, False)],
        instance_kind="KIND_CPU",
        warmup_batch_sizes=[1] if fixed else [],
        parameters=params,
    )
    write_repository(
        stage / "triton",
        model,
        {"model.xml": stage / "model.xml", "model.bin": stage / "model.bin"},
    )
    plugin = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if runtime_config["threads"]:
        plugin["INFERENCE_NUM_THREADS"] = str(runtime_config["threads"])
    ovms = {
        "model_config_list": [
            {"config": {"name": name, "base_path": f"/models/{name}", "plugin_config": plugin}}
        ]
    }
    (stage / "ovms_config.json").write_text(json.dumps(ovms, indent=2, sort_keys=True) + "\n")
    cmds = serve_commands(model)
    cmds["ovms"] = (
        f'docker run --rm -p 9000:9000 -p 8000:8000 -v "$PWD/triton:/models:ro" '
        f'-v "$PWD/ovms_config.json:/config.json:ro" {OVMS_IMAGE} '
        "--config_path /config.json --port 9000 --rest_port 8000"
    )
    return {
        "triton_parameters": params,
        "triton_pins_precision": precision == "bf16",
        "ovms_plugin_config": plugin,
        "commands": cmds,
    }
