"""Targets registered by name through the `packager.targets` entry-point group."""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from packager.errors import UserError
from packager.schema import hint

if TYPE_CHECKING:
    from targets.base import Target

GROUP = "packager.targets"
REFERENCE = "cpu-onnxruntime"


@cache
def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            raise UserError(f"two packages register the target '{ep.name}'; uninstall one of them")
        found[ep.name] = ep
    # The reference first: it is what every other target is compared with.
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != REFERENCE, kv[0])))


def names() -> list[str]:
    return list(_entry_points())


@cache
def get(name: str) -> Target:
    """Load one target (only its own module is imported, so one broken plugin stays local)."""
    eps = _entry_points()
    if name not in eps:
        raise UserError(f"unknown target '{name}'{hint(name, eps)}; see `packager targets`")
    cls = eps[name].load()
    if cls.name != name:
        raise UserError(f"entry point '{name}' loads a target named '{cls.name}'")
    return cls()


def registered() -> dict[str, Target]:
    return {n: get(n) for n in names()}
