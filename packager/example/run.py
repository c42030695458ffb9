"""What both examples' training commands share: a trained folder cached under its key, and the
command-line entry with packager's exit codes."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from packager.core.errors import PackagerError
from packager.core.progress import Progress


def cached(
    final: Path, files: Sequence[str], make: Callable[[Path], object], progress: Progress
) -> Path:
    """`final` when it holds every one of `files`, else `make(tmp)` then `tmp` renamed to it (so
    a half-made folder is never found under the key)."""
    if all((final / f).is_file() for f in files):
        progress.say(f"[train] reusing the trained model in {final}")
        return final
    tmp = final.parent / f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        make(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def main_of(cli: click.Command, prog: str) -> None:
    """Run `cli`: a PackagerError exits with its code in one line, a usage error with 2."""
    try:
        cli.main(prog_name=prog, standalone_mode=False)
    except PackagerError as exc:
        click.echo(f"train: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
