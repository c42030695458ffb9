"""Typed errors; the CLI maps each to one line on stderr and an exit code."""

from __future__ import annotations

from packager.core.status import RefusalStatus


class PackagerError(Exception):
    """Base of every error the user should see as one line (never a traceback)."""

    exit_code = 2


class UserError(PackagerError):
    """Bad input or usage: the message names the problem and the fix."""

    exit_code = 2


class GateFailed(PackagerError):
    """A clinical or SLA gate failed: nothing is published."""

    exit_code = 1


class Unavailable(PackagerError):
    """The target cannot run on this host (missing package, no CUDA, not macOS)."""

    exit_code = 3


class ModelRefused(PackagerError):
    """A target's runtime or converter cannot take this model (its operators, opset or data
    types): that target's status, with a one-line reason; the other targets go on. `log` is the
    converter's own full report, kept under DIR/.failed/."""

    exit_code = 4
    status: RefusalStatus = RefusalStatus.unsupported_model

    def __init__(self, reason: str, log: str = "") -> None:
        super().__init__(reason)
        self.log = log


class ConversionFailed(ModelRefused):
    """A target's converter failed on this model for another reason than a refused operator."""

    status = RefusalStatus.conversion_failed
