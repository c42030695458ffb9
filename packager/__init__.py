"""packager: one ONNX medical-imaging classifier packaged for many runtimes, each bundle
re-validated and benchmarked on its own runtime. The Python API (packager.api) is reached from
here: packager.builder, selftest, validate, verify, compare; loaded on first use, so
`import packager` stays light."""

from typing import Any

from packager.core.version import __version__

API = ("build", "selftest", "validate", "verify", "compare", "BuildResults")
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        from packager import api

        return getattr(api, name)
    raise AttributeError(f"module 'packager' has no attribute {name!r}")
