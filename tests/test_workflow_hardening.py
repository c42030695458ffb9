"""The release workflow signs what it builds, so it is hardened (issue 24 item 10): zizmor's own
offline audit finds nothing, and the same audit still finds each weakness when it is put back
(so the clean result is not a tool that looks at nothing). The YAML is also read directly: every
action pinned by a full commit SHA with its tag in a comment, no checkout that keeps its token,
no cache anywhere."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.conftest import must_have

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
RELEASE = WORKFLOWS / "release.yml"
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")
TAG_COMMENT = re.compile(r"uses:\s*(\S+)\s+#\s*(v\d+\.\d+\.\d+)\s*$")


def _zizmor(target: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("zizmor")
    found = str(exe) if exe.exists() else shutil.which("zizmor")
    if not found:
        must_have("zizmor is not installed (pip install -e '.[dev]')")
    return subprocess.run(
        [found, "--offline", "--no-progress", "--format", "plain", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _steps(wf: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for job in wf["jobs"].values() for s in job["steps"]]


def test_zizmor_finds_nothing_in_the_workflows() -> None:
    r = _zizmor(WORKFLOWS)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "No findings" in r.stdout + r.stderr


@pytest.mark.parametrize(
    ("weaken", "audit"),
    [
        # one action back on a moving tag
        (
            lambda s: re.sub(r"actions/checkout@[0-9a-f]{40}", "actions/checkout@v4", s, count=1),
            "unpinned-uses",
        ),
        # one checkout that keeps the token in .git (uploaded with dist/ or read by a later step)
        (
            lambda s: s.replace("        with:\n          persist-credentials: false\n", "", 1),
            "artipacked",
        ),
        # a cache restored into the job that signs and publishes
        (
            lambda s: s.replace(
                "      - run: python -m pip install -e .\n",
                "      - uses: actions/cache@v4\n"
                "        with:\n          path: ~/.cache/pip\n          key: pip\n"
                "      - run: python -m pip install -e .\n",
            ),
            "cache-poisoning",
        ),
    ],
    ids=["unpinned", "persisted-credentials", "cache"],
)
def test_zizmor_finds_each_weakness_put_back(weaken: Any, audit: str, tmp_path: Path) -> None:
    text = RELEASE.read_text()
    weakened = weaken(text)
    assert weakened != text
    (tmp_path / "release.yml").write_text(weakened)
    r = _zizmor(tmp_path / "release.yml")
    assert r.returncode != 0, r.stdout
    assert f"[{audit}]" in r.stdout, r.stdout


def test_every_action_is_pinned_by_commit_with_its_tag() -> None:
    wf = YAML(typ="safe").load(RELEASE.read_text())
    uses = [s["uses"] for s in _steps(wf) if "uses" in s]
    assert len(uses) >= 15, uses
    unpinned = [u for u in uses if not PINNED.match(u)]
    assert not unpinned, f"not pinned to a 40-hex commit: {unpinned}"
    # the tag a human reads next to each SHA, and one SHA per (action, tag)
    lines = [ln for ln in RELEASE.read_text().splitlines() if re.search(r"^\s*(- )?uses:", ln)]
    tagged = [TAG_COMMENT.search(ln) for ln in lines]
    assert all(tagged), [ln for ln, m in zip(lines, tagged, strict=True) if not m]
    sha_of: dict[tuple[str, str], set[str]] = {}
    for m in tagged:
        assert m is not None
        action, sha = m.group(1).split("@")
        sha_of.setdefault((action, m.group(2)), set()).add(sha)
    assert all(len(v) == 1 for v in sha_of.values()), sha_of


def test_no_checkout_persists_credentials_and_no_job_caches() -> None:
    wf = YAML(typ="safe").load(RELEASE.read_text())
    steps = _steps(wf)
    checkouts = [s for s in steps if s.get("uses", "").startswith("actions/checkout@")]
    assert len(checkouts) == len(wf["jobs"]), "one checkout per job"
    assert all(s.get("with", {}).get("persist-credentials") is False for s in checkouts)
    assert not [s for s in steps if s.get("uses", "").startswith("actions/cache")]
    setups = [s for s in steps if s.get("uses", "").startswith("actions/setup-python@")]
    assert setups and not [s for s in setups if "cache" in s.get("with", {})]
