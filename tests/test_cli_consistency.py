"""The CLI's own consistency (issue: fits the user's pipeline): help in workflow order with
whole summaries, a misspelt target refused before any model or data is read, a positional
argument named as such, and `compare --json` the same document as `--format json`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Result, assert_user_error


def test_help_lists_commands_in_workflow_order(cli: Callable[..., Result], tmp_path: Path) -> None:
    r = cli("--help", cwd=tmp_path)
    assert r.code == 0
    body = r.stdout.split("Commands, in workflow order:")[1]
    names = [ln.split()[0] for ln in body.splitlines() if ln.startswith("  ") and ln[2] != " "]
    assert names[:10] == [
        "inspect",
        "targets",
        "build",
        "compare",
        "verify",
        "keygen",
        "sign",
        "selftest",
        "validate",
        "bench",
    ]
    assert "..." not in body  # summaries are whole, not truncated


def test_a_misspelt_target_is_refused_before_loading_anything(
    cli: Callable[..., Result], tmp_path: Path
) -> None:
    """No model and no dataset exist here: the target name is what the error must be about."""
    (tmp_path / "packager.toml").write_text('[model]\npath = "missing.onnx"\n')
    r = cli("build", "-t", "cpu-openvno", cwd=tmp_path)
    assert_user_error(r, "unknown target 'cpu-openvno'", "cpu-openvino")


def test_inspect_names_its_positional_argument(cli: Callable[..., Result], tmp_path: Path) -> None:
    r = cli("inspect", "nope.onnx", cwd=tmp_path)
    assert_user_error(r, "nope.onnx", "MODEL argument")
    assert "--model" not in r.stderr


def test_compare_json_flag_equals_format_json(
    default_dist: tuple[Path, Result], cli: Callable[..., Result]
) -> None:
    root, _ = default_dist
    a = cli("compare", root / "dist", "--json", cwd=root)
    b = cli("compare", root / "dist", "--format", "json", cwd=root)
    assert a.code == b.code == 0, a.stderr + b.stderr
    assert json.loads(a.stdout) == json.loads(b.stdout)


def test_ctrl_c_inside_an_extension_import_counts_as_an_interrupt() -> None:
    """What onnxruntime's pybind11 init raises when Ctrl-C lands inside it (seen in the
    interrupt test): an ImportError caused by the KeyboardInterrupt. Any other error is not."""
    from packager.cli import _caused_by_interrupt

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as ki:
            raise ImportError("initialization failed") from ki
    except ImportError as exc:
        assert _caused_by_interrupt(exc)
    assert not _caused_by_interrupt(ImportError("initialization failed"))
