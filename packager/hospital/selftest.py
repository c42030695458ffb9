"""`packager selftest BUNDLE` on arrival at a hospital: packager checks the bundle's files,
signature and code hashes first, and only then runs the bundle's own self-test."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from packager.builder.bundle import safe_extract
from packager.builder.verify import check_bundle
from packager.core import documents
from packager.core.errors import PackagerError, UserError
from packager.shipped import selftest as shipped


def arrival(
    path: Path, record: Path | None, max_gb: float | None, pubkey: Path | None = None
) -> tuple[int, str, dict]:
    """`packager selftest BUNDLE`: packager's own check of the bundle first (packager.builder.verify:
    files, signature, code hashes, config), then, only if it passes, the bundle's own
    `predict.py --self-test` in a fresh interpreter (a tarball is extracted safely first).
    Returns (exit code, summary line, the acceptance record, which states what the verdict rests
    on: the signature checked with `pubkey`, or the manifest sha256 to compare with the
    release's)."""
    with tempfile.TemporaryDirectory(prefix="packager-selftest-") as tmp:
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
            bundle = safe_extract(path, Path(tmp), max_gb)
            default = path.with_name(path.name.removesuffix(".gz").removesuffix(".tar"))
        elif path.is_dir():
            bundle, default = path, path.resolve()  # `packager selftest .` names its folder
        else:
            raise UserError(f"{path} is neither a bundle directory nor a .tar.gz; pass one")
        rec = (record or default.with_name(default.name + ".acceptance.json")).resolve()
        checked = check_bundle(bundle, pubkey)
        first = {
            "name": "integrity",
            "status": "passed" if checked.ok else "failed",
            "checked_by": "packager",
            "problems": checked.problems,
        }
        if not checked.ok:  # no file of the bundle runs: the record is packager's alone
            result = shipped.new_record(bundle, checked.manifest, [first], checked.integrity())
        else:
            # -P (Python >= 3.11): the bundle folder is not put on sys.path even before
            # predict.py's first line takes it off.
            safe = ["-P"] if sys.version_info >= (3, 11) else []
            cmd = [sys.executable, *safe, str(bundle / "predict.py"), "--self-test"]
            rec.unlink(missing_ok=True)  # an earlier run's record is not this run's
            proc = subprocess.run([*cmd, "--record", str(rec)], capture_output=True, text=True)
            if not rec.exists():
                lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines() or ["no output"]
                line = lines[-1].removeprefix("error: ")
                if proc.returncode == 2:
                    raise UserError(line)
                raise PackagerError(f"the self-test ended with exit code {proc.returncode}: {line}")
            result = read_record(rec)
            result["checks"].insert(0, first)
            result["integrity"] = checked.integrity()
    rec.write_text(documents.checked_text(documents.Acceptance, result))
    code = {"accepted": 0, "rejected": 1}.get(result["verdict"], 3)
    return code, shipped.summary_line(result, rec), result


def read_record(path: Path) -> dict[str, Any]:
    """An acceptance record, checked against packager.core.documents.Acceptance: one that does not
    match was not written by a bundle of this packager version (a one-line error)."""
    return documents.load(
        path,
        documents.Acceptance,
        "it is not a packager acceptance record: run the self-test of a bundle built by this "
        "packager version",
    )
