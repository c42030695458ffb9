"""`packager verify`, and packager's own check of a bundle before any of its code runs (`packager selftest`, `packager
validate`). A bundle's self-test is its own code checking itself; this is packager checking it:

- every file against manifest.json (missing, changed, added; links and refused names);
- the signature: with a public key, model-signing checks it (a missing model.sig then fails
  too); without one, a model.sig there must still list exactly the files as they are (it cannot
  show who signed, but a file changed and re-hashed into the manifest after signing shows);
- report.json's `code` hashes against the code files, and no Python file besides them;
- the manifest's recorded config (labels, threshold, gates) against runtime.json, selftest.json
  and report.json, so a gate or threshold edited in one place only is caught.

Nothing here imports or executes a file from the bundle: JSON is parsed, files are hashed."""

from __future__ import annotations

import base64
import binascii
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packager.builder.bundle import SIGNATURE, listing, safe_extract
from packager.builder.signing import check_signature, key_fingerprint
from packager.core.errors import GateFailed, UserError
from packager.shipped import integrity
from packager.shipped.selftest import integrity_basis


@dataclass
class Checked:
    manifest: dict[str, Any]
    problems: list[str]
    fingerprint: str | None = None  # the key's, when the signature verified with it
    manifest_sha256: str | None = None  # set when every check passed

    @property
    def ok(self) -> bool:
        return not self.problems

    def integrity(self) -> dict[str, Any]:
        """The acceptance record's `integrity`: what this check lets a verdict rest on."""
        sha = self.manifest_sha256 if self.ok else None
        return integrity_basis(sha, self.fingerprint if self.ok else None, checked_by="packager")


def check_bundle(bundle: Path, pubkey: Path | None = None) -> Checked:
    """Every problem packager finds in `bundle` with its own code (see the module docstring).
    A bad key or a signature in packager 0.1.0's format is a one-line UserError."""
    manifest, problems = integrity.check(bundle)
    checked = Checked(manifest, problems)
    if pubkey is not None:
        status = check_signature(bundle, pubkey)
        if status == "valid":
            checked.fingerprint = key_fingerprint(pubkey)
        else:
            problems.append(f"signature: {status}")
    elif (bundle / SIGNATURE).is_file() and manifest:
        problems += _unkeyed_signature_problems(bundle)
    if not manifest:
        return checked
    docs = {name: _json_object(bundle / name) for name in ("runtime.json", "report.json")}
    docs["selftest.json"] = _json_object(bundle / "selftest.json")
    for name, doc in docs.items():
        if isinstance(doc, str):
            problems.append(f"{name}: {doc}")
    runtime, report, golden = (d if isinstance(d, dict) else {} for d in docs.values())
    problems += _code_problems(bundle, report.get("code"))
    problems += _config_problems(manifest.get("config"), runtime, report, golden)
    if checked.ok:
        checked.manifest_sha256 = integrity.file_sha256(bundle / integrity.MANIFEST)
    return checked


def require(bundle: Path, pubkey: Path | None = None) -> Checked:
    """check_bundle, for commands that then run the bundle's code (`validate`, `bench`): a
    problem is one line and exit 1 (GateFailed), before anything of the bundle ran."""
    checked = check_bundle(bundle, pubkey)
    if not checked.ok:
        more = f" (and {len(checked.problems) - 3} more)" if len(checked.problems) > 3 else ""
        raise GateFailed(
            f"{bundle} does not verify, so none of its code was run: "
            f"{'; '.join(checked.problems[:3])}{more}"
        )
    return checked


def _unkeyed_signature_problems(bundle: Path) -> list[str]:
    """model.sig's signed statement (an in-toto statement in a DSSE envelope, model-signing's
    v1.0 predicate: every file's sha256) against the files, without checking who signed it."""
    try:
        envelope = json.loads((bundle / SIGNATURE).read_bytes())["dsseEnvelope"]
        statement = json.loads(base64.b64decode(envelope["payload"], validate=True))
        signed = {
            r["name"]: {"sha256": r["digest"]}
            for r in statement["predicate"]["resources"]
            if r["algorithm"] == "sha256"
        }
    except (ValueError, RecursionError, KeyError, TypeError, binascii.Error):
        return [f"{SIGNATURE}: unreadable (not a model-signing signature)"]
    # Signed too, though the manifest cannot list itself.
    actual = integrity.listing(bundle) | {integrity.MANIFEST: bundle / integrity.MANIFEST}
    return [f"{SIGNATURE}: {p} since it was signed" for p in integrity.compare(signed, actual)]


def _json_object(path: Path) -> dict[str, Any] | str:
    """A JSON object, or why the file is not one (hostile files included: nested past the
    parser, a list, not UTF-8)."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return "missing"
    except (ValueError, RecursionError):
        return "unreadable (not JSON, or nested too deep)"
    return data if isinstance(data, dict) else "unreadable (not a JSON object)"


def _code_problems(bundle: Path, code: Any) -> list[str]:
    """report.json's `code` ({file: sha256} of the code the bundle was validated with) against
    the files; a Python file it does not list is code nobody validated."""
    if not isinstance(code, dict) or not code:
        return ["report.json: no `code` hashes; rebuild the bundle with this packager version"]
    problems = []
    for name, sha in sorted(code.items()):
        path = bundle / name
        if not (path.is_file() and not path.is_symlink()):
            problems.append(f"report.json code: {integrity.printable(name)} is missing")
        elif integrity.file_sha256(path) != sha:
            problems.append(
                f"report.json code: {integrity.printable(name)} differs from the code the bundle "
                "was validated with"
            )
    for path in sorted(bundle.rglob("*.py")):
        rel = path.relative_to(bundle).as_posix()
        if rel not in code:
            problems.append(f"report.json code: {integrity.printable(rel)} is not code it lists")
    return problems


def _config_problems(
    config: Any, runtime: dict[str, Any], report: dict[str, Any], golden: dict[str, Any]
) -> list[str]:
    """The manifest's config (packager.toml as built) against what the bundle runs on and
    reports: labels and threshold in runtime.json and selftest.json, gate limits in report.json."""
    if not isinstance(config, dict):
        return ["manifest.json: no recorded config; rebuild the bundle with this packager version"]
    labels = config.get("labels") if isinstance(config.get("labels"), dict) else {}
    multilabel = labels.get("task") == "multilabel"
    names = [n for n in labels.get("names") or [] if isinstance(n, str)] if multilabel else []
    positive = None if multilabel else labels.get("positive")
    pairs = [
        ("labels", labels.get("names"), "runtime.json", runtime.get("labels")),
        ("positive", positive, "runtime.json", runtime.get("positive")),
        ("threshold", labels.get("threshold"), "runtime.json", runtime.get("threshold")),
        ("threshold", labels.get("threshold"), "selftest.json", golden.get("threshold")),
        ("task", labels.get("task") if multilabel else None, "runtime.json", runtime.get("task")),
    ]
    if multilabel:
        own = labels.get("thresholds") if isinstance(labels.get("thresholds"), dict) else {}
        each = {n: own.get(n, labels.get("threshold")) for n in names}
        pairs += [
            ("thresholds", each, "runtime.json", runtime.get("thresholds")),
            ("thresholds", each, "selftest.json", golden.get("thresholds")),
            ("positive_index", None, "selftest.json", golden.get("positive_index")),
        ]
    gates = config.get("gates") if isinstance(config.get("gates"), dict) else {}
    checks = (report.get("gates") or {}).get("checks") if isinstance(report, dict) else None
    limits = {
        c.get("name"): c.get("limit")
        for c in (checks if isinstance(checks, list) else [])
        if isinstance(c, dict)
    }
    pairs += [
        (f"gates.{name}", value, "report.json", limits[name])
        for name, value in sorted(gates.items())
        if name in limits
    ]
    # a multi-label bundle's gates, one line per finding: [gates] with its [gates.findings] over it
    over = gates.get("findings") if isinstance(gates.get("findings"), dict) else {}
    for n in names:
        mine = {**gates, **(over.get(n) if isinstance(over.get(n), dict) else {})}
        pairs += [
            (f"gates.{key} for {n}", value, "report.json", limits[f"{key}[finding={n}]"])
            for key, value in sorted(mine.items())
            if f"{key}[finding={n}]" in limits
        ]
    return [
        f"{where}: {what} is {integrity.printable(repr(theirs))} but manifest.json's config "
        f"says {integrity.printable(repr(ours))}"
        for what, ours, where, theirs in pairs
        if ours != theirs
    ]


@dataclass
class VerifyResult:
    path: str
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    signature: str = "not checked"
    signed: bool = False  # a model.sig is there (whether it was checked or not)
    manifest: dict[str, Any] = field(default_factory=dict)

    def fail(self, msg: str) -> None:
        self.ok = False
        self.problems.append(msg)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "problems": self.problems,
            "signature": self.signature,
            "signed": self.signed,
            "target": self.manifest.get("target"),
            "files": len(self.manifest.get("files", {})),
        }


def verify(path: Path, pubkey: Path | None = None, max_gb: float | None = None) -> VerifyResult:
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        with tempfile.TemporaryDirectory(prefix="packager-verify-") as tmp:
            result = verify(safe_extract(path, Path(tmp), max_gb), pubkey)
            result.path = str(path)
            return result
    if not path.is_dir():
        raise UserError(f"{path} is neither a bundle directory nor a .tar.gz; pass one of them")
    result = VerifyResult(str(path), signed=(path / SIGNATURE).is_file())
    try:
        manifest = integrity.read_manifest(path)
    except FileNotFoundError:
        raise UserError(f"{path} has no {integrity.MANIFEST}; is it a packager bundle?") from None
    except integrity.BadBundle as exc:
        result.fail(str(exc))
        return result
    result.manifest = manifest
    for problem in integrity.compare(manifest["files"], listing(path)):
        result.fail(problem)
    if pubkey is not None:
        result.signature = check_signature(path, pubkey)
        if result.signature != "valid":
            result.fail(f"signature: {result.signature}")
    return result
