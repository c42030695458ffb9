"""Files copied verbatim into bundles: predict.py, selftest.py and integrity.py into every bundle,
ort_session.py into those whose runtime.py uses ONNX Runtime. They import only numpy, the standard library and
their runtime, never packager, so a hospital runs exactly the code that was validated."""

import sys
from pathlib import Path

SHIPPED = Path(__file__).parent

# Inside a bundle these modules and each target's runtime.py import one another by bare name
# (`from predict import infer_all`), bound by predict.load_module to siblings it loaded by path
# (the bundle folder is never on sys.path); the build side resolves the same names from here,
# packager's own folder, after the standard library and site-packages.
if str(SHIPPED) not in sys.path:
    sys.path.append(str(SHIPPED))
