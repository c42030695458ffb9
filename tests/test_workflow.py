"""The release workflow: valid GitHub Actions (the JSON schema check-jsonschema vendors, so
offline), and every `packager` command line in it parses with the real CLI."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from ruamel.yaml import YAML

from packager.cli import cli
from packager.core import registry
from tests.conftest import must_have

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
SEPARATORS = {";", "&&", "||", "|", "(", ")", "do", "then", "else"}


def _check_jsonschema() -> str:
    exe = Path(sys.executable).with_name("check-jsonschema")
    found = str(exe) if exe.exists() else shutil.which("check-jsonschema")
    if not found:
        must_have("check-jsonschema is not installed (pip install -e '.[dev]')")
    return found


def _schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_check_jsonschema(), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _workflow() -> dict[str, Any]:
    return YAML(typ="safe").load(WORKFLOW.read_text())


def _run_scripts(wf: dict[str, Any]) -> list[str]:
    return [step["run"] for job in wf["jobs"].values() for step in job["steps"] if "run" in step]


def _substitute(script: str) -> str:
    """`$( ... )` (balanced) and `${{ ... }}` -> X: the value is unknown until run time."""
    script = re.sub(r"\$\{\{.*?\}\}", "X", script)
    out, depth = [], 0
    i = 0
    while i < len(script):
        if script.startswith("$(", i):
            depth += 1
            if depth == 1:
                out.append("X")
            i += 2
            continue
        if depth:
            depth += {"(": 1, ")": -1}.get(script[i], 0)
        else:
            out.append(script[i])
        i += 1
    return "".join(out)


def packager_calls(script: str) -> list[list[str]]:
    """Argument lists of every `packager ...` command in a shell script."""
    calls = []
    for line in _substitute(script).replace("\\\n", " ").splitlines():
        if not re.search(r"\bpackager\b", line):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        for i, tok in enumerate(tokens):
            if tok == "packager" and (i == 0 or tokens[i - 1] in SEPARATORS):
                args = []
                for t in tokens[i + 1 :]:
                    if t in SEPARATORS:
                        break
                    args.append(t)
                calls.append(args)
    return calls


def test_workflow_matches_the_github_workflow_schema() -> None:
    r = _schema_check(WORKFLOW)
    assert r.returncode == 0, r.stdout + r.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "release.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on:", "runs_on:", 1))
    r = _schema_check(broken)
    assert r.returncode != 0, "the schema check accepted a job without runs-on"


def test_every_packager_command_in_the_workflow_parses() -> None:
    calls = [c for s in _run_scripts(_workflow()) for c in packager_calls(s)]
    used = {c[0] for c in calls}
    assert {"build", "validate", "compare", "verify"} <= used, used
    for args in calls:
        name, rest = args[0], args[1:]
        assert name in cli.commands, f"`packager {name}` is not a command"
        try:
            cli.commands[name].make_context(f"packager {name}", list(rest))
        except click.UsageError as exc:
            pytest.fail(f"`packager {' '.join(args)}` does not parse: {exc}")


def test_packager_calls_finds_commands_after_shell_separators() -> None:
    script = (
        'for t in a b; do packager verify "$t"; done\n'
        'x=1 && packager build \\\n --data "$(f "$(g)")" --all\n'
        "echo packager is not a call"
    )
    assert packager_calls(script) == [["verify", "$t"], ["build", "--data", "X", "--all"]]


def test_build_matrix_covers_every_registered_target() -> None:
    matrix = _workflow()["jobs"]["build"]["strategy"]["matrix"]["include"]
    assert sorted(e["target"] for e in matrix) == sorted(registry.names())
    runners = {e["target"]: e["runner"] for e in matrix}
    assert "gpu" in runners["gpu-tensorrt"] and "self-hosted" in runners["gpu-tensorrt"]


def test_every_downloaded_artifact_is_uploaded() -> None:
    steps = [s for job in _workflow()["jobs"].values() for s in job["steps"]]
    uploaded = {
        s["with"]["name"] for s in steps if s.get("uses", "").startswith("actions/upload-artifact")
    }
    # Matrix names resolve per entry.
    matrix = _workflow()["jobs"]["build"]["strategy"]["matrix"]["include"]
    uploaded |= {e["artifact"] for e in matrix}
    for s in steps:
        if s.get("uses", "").startswith("actions/download-artifact"):
            w = s["with"]
            if "name" in w:
                assert w["name"] in uploaded, w["name"]
            else:
                prefix = w["pattern"].rstrip("*")
                assert any(u.startswith(prefix) for u in uploaded), w["pattern"]


def test_gpu_and_mac_runners_run_their_target_test_modules() -> None:
    """Engine and Core ML code can only run on those runners: their pytest modules run there."""
    wf = _workflow()
    gpu = next(
        e
        for e in wf["jobs"]["build"]["strategy"]["matrix"]["include"]
        if e["target"] == "gpu-tensorrt"
    )
    assert (REPO / gpu["tests"]).is_file()
    build_runs = [s["run"] for s in wf["jobs"]["build"]["steps"] if "run" in s]
    assert any("pytest" in r and "${{ matrix.tests }}" in r for r in build_runs)
    mac = wf["jobs"]["coreml"]
    assert "macos" in mac["runs-on"]
    mac_runs = [s["run"] for s in mac["steps"] if "run" in s]
    module = "tests/targets/test_apple_coreml.py"
    assert (REPO / module).is_file() and any("pytest" in r and module in r for r in mac_runs)
