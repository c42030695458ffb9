"""The documents a build writes, typed: report.json, runtime.json, manifest.json and refusal.json
in a bundle, selftest.json (the golden set's tolerance), and the acceptance record the bundle's
own `predict.py --self-test --record` writes at a hospital.

The models are the single source of truth for these files' shape (their status words are the
enums of packager/core/status.py): every producer in packager/ validates its document here right
before writing it (`write`, `checked_text`), so a build that would write a document outside its
model fails instead. The bytes stay those of
`json.dumps(data, indent=2, sort_keys=True)`, so readers that treat the files as plain JSON keep
working. The JSON Schemas in docs/schemas/ are generated from these models
(`python -m packager.core.documents docs/schemas`), so a hospital can check a file with standard
tools; a test keeps them equal to what the models give.

The acceptance record is written by packager/shipped/selftest.py, which ships to hospitals and
may import numpy and the runtime only: its model lives here and checks the record when
`packager selftest` or a build reads it back.

One module per document (report, runtime, manifest, refusal, site, acceptance), the parts they
share in `parts` and the base classes in `base`; every model is re-exported here, so readers say
`documents.Report`.

Sections whose keys belong to something else (a runtime's info(), a target's details, the
config, the clinical evidence) stay open; everything packager itself decides is closed
(an unknown key is an error)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from packager.core.documents.acceptance import (
    Acceptance,
    AcceptanceCheck,
    AcceptanceHost,
    AcceptedBundle,
    DecisionsCheck,
    HostRuntime,
    Integrity,
    IntegrityCheck,
    ManifestCheck,
    PreprocessingCheck,
    ProbabilitiesCheck,
    RuntimeCheck,
    UnreadableCase,
    WorstCase,
)
from packager.core.documents.base import SCHEMA_DIALECT
from packager.core.documents.manifest import (
    DataRef,
    FileEntry,
    Manifest,
    SourceModel,
    Tool,
    ValidatedBy,
)
from packager.core.documents.parts import CheckRecord, Gates, Host, NoRuntime, RuntimeInfo, Step
from packager.core.documents.refusal import Refusal, RefusedModel
from packager.core.documents.report import (
    BenchHost,
    Benchmark,
    BenchRow,
    BenchRun,
    BenchVariant,
    Best,
    BuildHostSelftest,
    Clinical,
    ClinicalMetrics,
    HostState,
    Latency,
    ModelCard,
    NoBenchmark,
    OpenLoop,
    OpenLoopPoint,
    Profile,
    ProfileNotRun,
    ProfileOp,
    Report,
    ReportModel,
    SelftestMeasured,
    SelftestNotRun,
    SelftestSummary,
    Validation,
)
from packager.core.documents.runtime import Runtime, TensorInput
from packager.core.documents.site import (
    BuildClinical,
    Decision,
    NotApplied,
    SiteBundle,
    SiteCheck,
    SiteData,
    SiteErrors,
    SiteGates,
    SiteGrouping,
    SiteLabels,
    SiteRate,
    SiteRates,
    SiteValidation,
    SiteVerdict,
    SubgroupRow,
    Throughput,
)
from packager.core.status import (
    BenchStatus,
    CheckStatus,
    ManifestStatus,
    OutputKind,
    RefusalStatus,
    ReportStatus,
    StepStatus,
    Verdict,
)

__all__ = [
    "BenchStatus",
    "CheckStatus",
    "ManifestStatus",
    "OutputKind",
    "RefusalStatus",
    "ReportStatus",
    "StepStatus",
    "Verdict",
    "Acceptance",
    "AcceptanceCheck",
    "AcceptanceHost",
    "AcceptedBundle",
    "BenchHost",
    "BenchRow",
    "BenchRun",
    "BenchVariant",
    "Benchmark",
    "Best",
    "BuildClinical",
    "BuildHostSelftest",
    "CheckRecord",
    "Clinical",
    "ClinicalMetrics",
    "DataRef",
    "Decision",
    "DecisionsCheck",
    "FileEntry",
    "Gates",
    "Host",
    "HostRuntime",
    "HostState",
    "Integrity",
    "IntegrityCheck",
    "Latency",
    "Manifest",
    "ManifestCheck",
    "ModelCard",
    "NoBenchmark",
    "NoRuntime",
    "NotApplied",
    "OpenLoop",
    "OpenLoopPoint",
    "PreprocessingCheck",
    "ProbabilitiesCheck",
    "Profile",
    "ProfileNotRun",
    "ProfileOp",
    "Refusal",
    "RefusedModel",
    "Report",
    "ReportModel",
    "Runtime",
    "RuntimeCheck",
    "RuntimeInfo",
    "SCHEMA_DIALECT",
    "SelftestMeasured",
    "SelftestNotRun",
    "SelftestSummary",
    "SiteBundle",
    "SiteCheck",
    "SiteData",
    "SiteErrors",
    "SiteGates",
    "SiteGrouping",
    "SiteLabels",
    "SiteRate",
    "SiteRates",
    "SiteValidation",
    "SiteVerdict",
    "SourceModel",
    "Step",
    "SubgroupRow",
    "TensorInput",
    "Throughput",
    "Tool",
    "UnreadableCase",
    "ValidatedBy",
    "Validation",
    "WorstCase",
]
SCHEMAS: dict[str, type[BaseModel]] = {
    "report": Report,
    "runtime": Runtime,
    "manifest": Manifest,
    "acceptance": Acceptance,
    "refusal": Refusal,
    "selftest": SelftestSummary,
    "site-validation": SiteValidation,
}


def dumps(data: dict[str, Any]) -> str:
    """The one layout of every document packager writes."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def checked_text(model: type[BaseModel], data: dict[str, Any]) -> str:
    """`data` in the one layout, validated against `model` (a mismatch is packager's bug:
    pydantic's error, with its traceback). Every writer of a document goes through here."""
    text = dumps(data)
    model.model_validate_json(text)  # the text itself: keys are strings, tuples are arrays
    return text


def write(path: Path, model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """Validate `data` against `model`, then write it. Returns `data` unchanged."""
    path.write_text(checked_text(model, data))
    return data


def read(path: Path, model: type[BaseModel]) -> dict[str, Any]:
    """A document read back as the plain dict its readers use, validated against `model`
    (pydantic.ValidationError when it is not one; json.JSONDecodeError when not JSON)."""
    text = path.read_text()
    model.model_validate_json(text)
    return json.loads(text)


def schema_name(model: type[BaseModel]) -> str:
    """The name of `model`'s published schema: NAME.schema.json."""
    return next(k for k, m in SCHEMAS.items() if m is model)


def load(path: Path, model: type[BaseModel], fix: str) -> dict[str, Any]:
    """A document handed to packager (a bundle's, a record): the plain dict, or a one-line
    UserError naming the first mismatch with its model, where to get its JSON Schema, and
    `fix`."""
    from pydantic import ValidationError

    from packager.core.errors import UserError

    try:
        return read(path, model)
    except ValidationError as exc:
        raise UserError(mismatch(path, model, exc, fix)) from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from None


def mismatch(where: Path, model: type[BaseModel], exc: Any, fix: str) -> str:
    """The one line for a pydantic.ValidationError of `model` on the document at `where`."""
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return f"{where} is not valid JSON ({first['msg']}); {fix}"
    at = ".".join(str(p) for p in first["loc"]) or "top level"
    name = schema_name(model)
    # docs/ is not installed: name the command that writes the schema instead of a repo path.
    return (
        f"{where} is not a packager {name} document ({at}: {first['msg']}; its JSON Schema: "
        f"`python -m packager.core.documents DIR` writes DIR/{name}.schema.json); {fix}"
    )


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"$schema": SCHEMA_DIALECT, **model.model_json_schema()}


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, model in SCHEMAS.items():
        path = folder / f"{name}.schema.json"
        path.write_text(dumps(json_schema(model)))
        paths.append(path)
    return paths
