"""Is an optional runtime installed here? One answer, naming the extra that installs it."""

from __future__ import annotations

from importlib.util import find_spec


def missing(modules: dict[str, str], extra: str) -> str:
    """'' when every module (import name -> distribution name) can be imported here, else e.g.
    "coremltools and torch are not installed; pip install 'packager[coreml]'"."""
    absent = [dist for module, dist in modules.items() if find_spec(module) is None]
    if not absent:
        return ""
    verb = "is" if len(absent) == 1 else "are"
    return f"{' and '.join(absent)} {verb} not installed; pip install 'packager[{extra}]'"
