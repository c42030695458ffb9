"""A fuzz loop over a fixed number of mutated ONNX files for model intake (`packager inspect`): every
outcome must be a result or a UserError, never another exception or a crash of the process.

The loop runs in a child process so that a crash in C++ (protobuf, the ONNX checker, shape
inference) fails this test with the input that caused it instead of taking pytest down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import _run

# A fixed number of cases per seed (PACKAGER_FUZZ_CASES=5000 for a long local run).
CASES = int(os.environ.get("PACKAGER_FUZZ_CASES", "200"))

HARNESS = r"""
import json, random, sys, time, traceback
from pathlib import Path

import onnx
from onnx import TensorProto

from packager.core.errors import UserError
from packager.core.model import inspect_model

seed_model, workdir, cases, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
SEED = seed_model.read_bytes()
rng = random.Random(seed)
ODD_INTS = [0, 1, -1, 2, 3, 7, 64, 2**15, 2**31 - 1, 2**31, 2**62, -(2**40)]
OPS = ["Conv", "Relu", "Gemm", "Softmax", "Reshape", "Loop", "If", "Scan", "NoSuchOp", "", "Identity"]


def byte_mutation(data: bytes) -> bytes:
    b = bytearray(data)
    kind = rng.choice(["flip", "truncate", "insert", "splice", "zero"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        b = b[: rng.randrange(len(b))]
    elif kind == "insert":
        at = rng.randrange(len(b))
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == "splice":
        i, j = sorted(rng.randrange(len(b)) for _ in range(2))
        at = rng.randrange(len(b))
        b[at:at] = b[i:j]
    else:
        i = rng.randrange(len(b))
        b[i : i + rng.randint(1, 64)] = bytes(min(64, len(b) - i))
    return bytes(b)


def dims_of(m):
    vis = list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info)
    return [d for vi in vis for d in vi.type.tensor_type.shape.dim]


def proto_mutation(m: onnx.ModelProto) -> None:
    g = m.graph
    kind = rng.choice(
        ["dim", "dim_param", "elem", "op", "drop_node", "rename", "init_dims", "init_type",
         "opset", "ir", "external", "attr", "dup_input", "drop_output", "drop_init", "domain"]
    )
    if kind == "dim" and dims_of(m):
        d = rng.choice(dims_of(m)); d.Clear(); d.dim_value = rng.choice(ODD_INTS)
    elif kind == "dim_param" and dims_of(m):
        d = rng.choice(dims_of(m)); d.Clear(); d.dim_param = rng.choice(["N", "", "?", "x" * 300])
    elif kind == "elem":
        vi = rng.choice(list(g.input) + list(g.output))
        vi.type.tensor_type.elem_type = rng.randrange(0, 30)
    elif kind == "op" and g.node:
        rng.choice(g.node).op_type = rng.choice(OPS)
    elif kind == "drop_node" and g.node:
        del g.node[rng.randrange(len(g.node))]
    elif kind == "rename" and g.node:
        n = rng.choice(g.node)
        if n.input:
            n.input[rng.randrange(len(n.input))] = rng.choice(["", "ghost", g.input[0].name])
    elif kind == "init_dims" and g.initializer:
        t = rng.choice(g.initializer)
        if t.dims:
            t.dims[rng.randrange(len(t.dims))] = rng.choice(ODD_INTS)
    elif kind == "init_type" and g.initializer:
        rng.choice(g.initializer).data_type = rng.randrange(0, 30)
    elif kind == "opset":
        m.opset_import[0].version = rng.choice([0, 1, 7, 13, 21, 99999, -3])
    elif kind == "ir":
        m.ir_version = rng.choice([0, 1, 3, 10, 11, 999, -1])
    elif kind == "external" and g.initializer:
        t = rng.choice(g.initializer)
        t.data_location = TensorProto.EXTERNAL
        loc = rng.choice(["w.bin", "../w.bin", "/etc/passwd", "", "a\x00b", "sub/../../x", "."])
        for key, value in (("location", loc), ("offset", rng.choice(["0", "-5", "x", "99999999"])),
                           ("length", rng.choice(["4", "0", "-1", "1e9", "999999999999"]))):
            e = t.external_data.add(); e.key, e.value = key, value
    elif kind == "attr" and g.node:
        n = rng.choice(g.node)
        if n.attribute:
            a = rng.choice(n.attribute)
            if a.ints:
                a.ints[rng.randrange(len(a.ints))] = rng.choice(ODD_INTS)
            else:
                a.i = rng.choice(ODD_INTS)
    elif kind == "dup_input":
        g.input.append(g.input[0])
    elif kind == "drop_output" and g.output:
        del g.output[0]
    elif kind == "drop_init" and g.initializer:
        del g.initializer[rng.randrange(len(g.initializer))]
    elif kind == "domain":
        m.opset_import[0].domain = rng.choice(["com.evil", "ai.onnx.ml", ""])


counts = {"ok": 0, "user_error": 0}
keep = {"ok": [], "user_error": []}
case = 0
(workdir / "w.bin").write_bytes(bytes(64))
while case < cases:
    case += 1
    if rng.random() < 0.4:
        data = byte_mutation(SEED)
    else:
        m = onnx.load_from_string(SEED)
        for _ in range(rng.randint(1, 3)):
            proto_mutation(m)
        data = m.SerializeToString()
    path = workdir / "case.onnx"
    path.write_bytes(data)  # left behind if the process crashes
    try:
        inspect_model(path)
        outcome = "ok"
    except UserError:
        outcome = "user_error"
    except BaseException:
        crash = workdir / "crash.onnx"
        crash.write_bytes(data)
        print(json.dumps({"case": case, "crash": str(crash), "traceback": traceback.format_exc()}))
        sys.exit(1)
    counts[outcome] += 1
    if len(keep[outcome]) < 3:
        kept = workdir / f"{outcome}-{case}.onnx"
        kept.write_bytes(data)
        keep[outcome].append(str(kept))
print(json.dumps({"cases": case, **counts, "kept": keep}))
"""


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_model_intake(seed: int, tiny_model: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            HARNESS,
            str(tiny_model),
            str(tmp_path),
            str(CASES),
            str(seed),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"intake crashed (exit {proc.returncode}); input kept at {tmp_path / 'case.onnx'}\n"
        f"{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
    )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["cases"] == CASES, summary
    # Both outcomes are reached: the mutations get past the first checks into the real code.
    assert summary["user_error"] >= CASES // 10 and summary["ok"] >= CASES // 20, summary
    # A few survivors and rejects through the real CLI: exit 0 or 2, never a traceback.
    for path in summary["kept"]["ok"] + summary["kept"]["user_error"]:
        r = _run(["inspect", path, "--json"], tmp_path)
        assert r.code in (0, 2) and "Traceback" not in r.stderr, (path, r.code, r.stderr)
        if r.code == 0:
            assert json.loads(r.stdout)["input"]["name"]
        else:
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
