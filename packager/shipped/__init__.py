"""Files copied verbatim into bundles: predict.py, selftest.py and integrity.py into every bundle,
ort_session.py into those whose runtime.py uses ONNX Runtime. They import only numpy, the standard
library and their runtime, never packager, so a hospital runs exactly the code that was validated.

Inside a bundle these modules and each target's runtime.py import one another by bare name
(`from predict import infer_all`), bound by predict.load_module to siblings it loaded by path
(the bundle folder is never on sys.path). In packager's own process the same bare names are
packager's files, found before sys.path is searched: never a same-named file of the working
directory, which `python -m packager` puts first on sys.path and which may be a bundle folder
that packager has not checked yet."""

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

SHIPPED = Path(__file__).parent
NAMES = frozenset({"predict", "selftest", "integrity", "ort_session"})


class ShippedFinder(importlib.abc.MetaPathFinder):
    """Resolves the bare shipped names, and only them, to the files in this folder."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if path is None and fullname in NAMES:
            return importlib.machinery.PathFinder.find_spec(fullname, [str(SHIPPED)])
        return None


if not any(type(f).__name__ == ShippedFinder.__name__ for f in sys.meta_path):
    sys.meta_path.insert(0, ShippedFinder())
