"""Keep stdout for `--json`: converters (NNCF, onnxruntime.quantization, ONNX Runtime's .ort
tool) print progress on file descriptor 1, some from C++, so Python-level redirects miss it;
libraries that print() go through sys.stdout, which is not fd 1 under a test's CLI runner."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def stdout_to_stderr(show: bool) -> Iterator[None]:
    """Send everything written to stdout (fd 1 and sys.stdout) to stderr when progress is shown
    (`show`), else nowhere."""
    sys.stdout.flush()
    saved = os.dup(1)
    sink = os.dup(2) if show else os.open(os.devnull, os.O_WRONLY)
    os.dup2(sink, 1)
    try:
        with (
            open(os.devnull, "w") as devnull,
            contextlib.redirect_stdout(sys.stderr if show else devnull),
        ):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(sink)
