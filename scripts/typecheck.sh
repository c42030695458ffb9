#!/bin/sh
# mypy over the TensorRT builder and runtime, code no CPU-only host can run, against NVIDIA's
# published API types (tensorrt-stubs on PyPI): a misspelt TensorRT call or a wrong argument
# fails `make test` without a GPU. Usage: scripts/typecheck.sh [PYTHON]  (needs mypy)
set -eu
PY=${1:-python3}
cd "$(dirname "$0")/.."
VERSION=10.13.0.35.1
DIR=.typecheck/tensorrt-stubs-$VERSION
if [ ! -f "$DIR/ready" ]; then
    rm -rf "$DIR"
    mkdir -p "$DIR"
    # Not `pip install`: the stubs depend on the tensorrt meta-package, whose install needs
    # nvidia-smi, and an installed `tensorrt` stub folder would make `import tensorrt` succeed.
    "$PY" -m pip download -q --no-deps "tensorrt-stubs==$VERSION" -d "$DIR/wheel"
    "$PY" - "$DIR" <<'PYEOF'
import re
import sys
import zipfile
from pathlib import Path

out = Path(sys.argv[1])
[wheel] = (out / "wheel").glob("*.whl")
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(("tensorrt/", "tensorrt_bindings/")):
            z.extract(name, out / "path")
# The generated stub has two syntax errors mypy stops on; patch this copy only.
stub = out / "path" / "tensorrt_bindings" / "tensorrt.pyi"
text = re.sub(r"\bin: ", "in_: ", stub.read_text())
text = text.replace("power: Weights = None, channel_axis: int)", "power: Weights = None, channel_axis: int = 0)")
stub.write_text(text)
PYEOF
    touch "$DIR/ready"
fi
# The TensorRT code is a package (targets/gpu_tensorrt/, with runtime.py) or one module.
CODE=${TYPECHECK_CODE:-targets/gpu_tensorrt}
[ -e "$CODE" ] || CODE=targets/gpu_tensorrt.py
MYPYPATH="$DIR/path:packager/shipped" "$PY" -m mypy --config-file scripts/mypy-tensorrt.ini "$CODE"
