"""Targets registered by name through the `packager.targets` entry-point group."""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from packager.core.errors import Unavailable, UserError
from packager.core.schema import hint

if TYPE_CHECKING:
    from packager.core.target import Target

GROUP = "packager.targets"


def _is_reference(ep: EntryPoint) -> bool:
    try:
        return bool(getattr(ep.load(), "is_reference", False))
    except ImportError:
        return False


@cache
def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            raise UserError(f"two packages register the target '{ep.name}'; uninstall one of them")
        found[ep.name] = ep
    # The reference first: it is what every other target is compared with.
    return dict(sorted(found.items(), key=lambda kv: (not _is_reference(kv[1]), kv[0])))


@cache
def reference() -> Target:
    """The target every other one is compared with: the one whose class says `is_reference`."""
    refs = [n for n, ep in _entry_points().items() if _is_reference(ep)]
    if len(refs) != 1:
        raise UserError(f"exactly one target must be the reference, found {refs or 'none'}")
    return get(refs[0])


def names() -> list[str]:
    return list(_entry_points())


def check_name(name: str) -> None:
    eps = _entry_points()
    if not eps:
        raise UserError(
            f"unknown target '{name}': no targets are registered in the '{GROUP}' entry points; "
            "reinstall packager (pip install -e .)"
        )
    if name not in eps:
        raise UserError(f"unknown target '{name}'{hint(name, eps)}; see `packager targets`")


@cache
def get(name: str) -> Target:
    """Load one target (only its own module is imported, so one broken plugin stays local)."""
    eps = _entry_points()
    check_name(name)
    try:
        cls = eps[name].load()
    except ImportError as exc:  # a plugin whose runtime package is not installed
        raise Unavailable(f"target '{name}' cannot load here: {exc}") from None
    if cls.name != name:
        raise UserError(f"entry point '{name}' loads a target named '{cls.name}'")
    return cls()


def loadable() -> tuple[dict[str, Target], dict[str, str]]:
    """Targets that load, and the reason for each that does not."""
    ok, broken = {}, {}
    for n in names():
        try:
            ok[n] = get(n)
        except Unavailable as exc:
            broken[n] = str(exc)
    return ok, broken
