"""Files copied verbatim into bundles: predict.py and selftest.py into every bundle, ort_session.py
into those whose runtime.py uses ONNX Runtime. They import only numpy, the standard library and
their runtime, never packager, so a hospital runs exactly the code that was validated."""

import sys
from pathlib import Path

SHIPPED = Path(__file__).parent

# Inside a bundle these modules and each target's runtime.py import one another by bare name
# (`from predict import infer_all`); the build side resolves the same names from here.
if str(SHIPPED) not in sys.path:
    sys.path.append(str(SHIPPED))
