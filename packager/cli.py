"""The command line: parse, call, print, exit code. A user error is one line; a bug a traceback."""

from __future__ import annotations

import errno
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from packager.core.errors import GateFailed, PackagerError, Unavailable
from packager.core.progress import Progress
from packager.core.status import ReportStatus
from packager.core.version import __version__

if TYPE_CHECKING:  # pydantic loads only for commands that read a config (~0.1 s)
    from packager.core.config import Config


def emit(data: Any, as_json: bool, text: str) -> None:
    """One JSON document on stdout with --json, else the human text."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str) if as_json else text)


def max_size_option(fn: Callable) -> Callable:
    return click.option(
        "--max-size-gb",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Refuse a tarball that expands past this many GB (default 16; stops gzip bombs).",
    )(fn)


def json_option(fn: Callable) -> Callable:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document on stdout."
    )(fn)


def sign_option(fn: Callable) -> Callable:
    return click.option(
        "--sign",
        type=click.Path(path_type=Path),
        default=None,
        help="EC private key (PEM, `packager keygen`) that signs every bundle before it is "
        "published (default: [sign] key in packager.toml).",
    )(fn)


def quiet_option(fn: Callable) -> Callable:
    fn = click.option(
        "--quiet", "-q", is_flag=True, help="No progress on stderr (--progress none)."
    )(fn)
    return click.option(
        "--progress",
        "progress_mode",
        type=click.Choice(["auto", "rich", "plain", "none"]),
        default=None,
        help="Progress on stderr: rich bars on a terminal, plain lines (CI logs; GitHub Actions "
        "groups), or none. Default: $PACKAGER_PROGRESS, else auto (rich on a terminal, plain "
        "otherwise).",
    )(fn)


def progress_mode_of(quiet: bool, mode: str | None) -> str | None:
    return "none" if quiet else mode


def data_options(fn: Callable) -> Callable:
    fn = click.option(
        "--labels",
        "labels_csv",
        type=click.Path(path_type=Path),
        default=None,
        help="CSV path,label[,split][,metadata...] for an image folder (default DATA/labels.csv).",
    )(fn)
    fn = click.option(
        "--split", default=None, help="Dataset split to validate on (default: test)."
    )(fn)
    return click.option(
        "--data",
        type=click.Path(path_type=Path),
        default=None,
        help="MedMNIST .npz, or an image folder (PNG/TIFF/DICOM) root/<class>/* or with a CSV.",
    )(fn)


def config_options(fn: Callable) -> Callable:
    @click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        default=None,
        help="packager.toml (default: ./packager.toml or [tool.packager] in ./pyproject.toml).",
    )
    @click.option("--model", type=click.Path(path_type=Path), default=None, help="The ONNX model.")
    @data_options
    @functools.wraps(fn)
    def wrapper(
        config_path: Path | None,
        model: Path | None,
        data: Path | None,
        split: str | None,
        labels_csv: Path | None,
        **kw: Any,
    ) -> Any:
        from packager.core.config import load_config, override

        cfg = load_config(config_path)
        override(cfg, "data", "labels", str(labels_csv.resolve()) if labels_csv else None)
        override(cfg, "model", "path", str(model.resolve()) if model else None)
        override(cfg, "data", "path", str(data.resolve()) if data else None)
        override(cfg, "data", "split", split)
        return fn(cfg=cfg, **kw)

    return wrapper


class Workflow(click.Group):
    """`packager --help` lists the commands in the order a release uses them, each summary
    whole."""

    ORDER = (
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
        "cache",
        "demo",
    )

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: (self.ORDER.index(n) if n in self.ORDER else 99, n))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [
            (name, cmd.get_short_help_str(limit=1000))
            for name in self.list_commands(ctx)
            if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden
        ]
        with formatter.section("Commands, in workflow order"):
            formatter.write_dl(rows)


@click.group(cls=Workflow, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="packager")
def cli() -> None:
    """Package one ONNX medical-imaging classifier for many runtimes.

    Every bundle is re-validated for clinical sensitivity on its own runtime and benchmarked
    there. Exit codes: 0 ok, 1 a gate failed, 2 bad input, 3 the target cannot run here,
    4 a target cannot take this model (build: the others are still built; 1 > 4 > 3).
    """


@cli.command()
@config_options
@click.option("--target", "-t", "target_names", multiple=True, help="Target to build (repeatable).")
@click.option("--all", "all_targets", is_flag=True, help="Every target this host can build.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Output directory (default: dist)."
)
@click.option("--int8", is_flag=True, help="INT8 for targets that support it.")
@click.option(
    "--precision",
    type=click.Choice(["auto"]),
    default=None,
    help="auto: try every precision each target offers, ship the best passing every gate.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Build again even when a bundle is up to date, or was built from other inputs "
    "(published as a new generation; the cache is still used).",
)
@click.option("--no-bench", is_flag=True, help="Skip benchmarks (validation still runs).")
@click.option(
    "--no-cache",
    is_flag=True,
    help="Neither reuse nor store conversions and validations ($PACKAGER_CACHE, default "
    "~/.cache/packager).",
)
@sign_option
@json_option
@quiet_option
def build(
    cfg: Config,
    target_names: tuple[str, ...],
    all_targets: bool,
    out: Path | None,
    int8: bool,
    precision: str | None,
    force: bool,
    no_bench: bool,
    no_cache: bool,
    sign: Path | None,
    as_json: bool,
    quiet: bool,
    progress_mode: str | None,
) -> None:
    """Convert, validate, benchmark and bundle the model for each target; with --sign (or
    [sign] key) each bundle is signed before it is published. A bundle built before from the
    same inputs is up to date and not rebuilt."""
    from packager.api import build as run_build

    if bool(target_names) == all_targets:
        raise click.UsageError("name targets with --target NAME (repeatable) or pass --all")
    built = run_build(
        cfg,
        target_names,
        out,
        all_targets=all_targets,
        int8=int8,
        precision=precision,
        force=force,
        bench=not no_bench,
        cache=not no_cache,
        sign=sign,
        progress=progress_mode_of(quiet, progress_mode),
    )
    lines = [f"{r.target:16} {r.status:17} {r.bundle or r.reason}" for r in built.results]
    emit({"results": [r.to_dict() for r in built.results]}, as_json, "\n".join(lines))
    built.raise_for_status()


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@json_option
def inspect(model: Path, as_json: bool) -> None:
    """Check an ONNX model and show its signature, batch mode, FLOPs and operators."""
    from packager.core.errors import UserError
    from packager.core.model import inspect_model, likely_task

    if not model.exists():
        raise UserError(f"model {model} does not exist; check the MODEL argument")
    info = inspect_model(model)
    gf = info.gflops_per_sample
    text = "\n".join(
        [
            f"model      {info.path} ({info.size_bytes / 2**20:.2f} MB, sha256 {info.sha256[:16]}…)",
            f"ir / opset {info.ir_version} / {info.opset}   producer {info.producer or 'n/a'}",
            f"input      {info.input.name} {info.input.dtype} {info.input.shape} ({info.layout or 'layout unknown'})",
            f"output     {info.output.name} {info.output.dtype} {info.output.shape}"
            + (f"  (ends in {info.activation})" if info.activation else ""),
            f"task       {likely_task(info)}",
            f"batch      {info.batch}",
            f"params     {info.params:,}",
            f"GFLOPs     {gf:.4f} per sample"
            if gf is not None
            else "GFLOPs     n/a (dynamic shape)",
            f"external   {', '.join(info.external_data) or 'none'}",
            "ops        " + ", ".join(f"{k} {v}" for k, v in info.ops.items()),
            "quantized  " + quantization_line(info),
        ]
    )
    rows, lines = model_support(info)
    emit(info.to_dict() | {"targets": rows}, as_json, "\n".join([text, *lines]))


def quantization_line(info: Any) -> str:
    q = info.quantization
    if q is None:
        return "no (a float model)"
    return f"yes, {q.format} format ({', '.join(q.operators)}); operator domains: " + ", ".join(
        q.domains
    )


def model_support(info: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Each loadable target's verdict on the model, with its default options (cheap checks)."""
    from packager.core.registry import loadable

    found, _ = loadable()
    rows, lines = [], ["takes it?"]
    for name, t in found.items():
        verdict = t.accepts(info, t.Options())
        rows.append({"name": name, "accepts": verdict.to_dict()})
        lines.append(f"  {name:16} {'yes' if verdict.ok else 'no: ' + verdict.reason}")
    return rows, lines


@cli.command()
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    default=None,
    help="Also say whether each target can take this ONNX model, and if not, why.",
)
@json_option
def targets(model: Path | None, as_json: bool) -> None:
    """Each target: can it build / validate / benchmark on this host, and if not, why."""
    from packager.core.model import inspect_model
    from packager.core.registry import loadable
    from packager.core.schema import describe, json_schema

    info = inspect_model(model) if model else None
    found, broken = loadable()
    rows, lines = [], []
    for name, t in found.items():
        a = t.availability()
        rows.append(
            {
                "name": name,
                "summary": t.summary,
                **a.to_dict(),
                "options": describe(t.Options),
                "options_schema": json_schema(t.Options),  # validates [targets.<name>]
            }
        )
        marks = " ".join(
            f"{k}:{'yes' if getattr(a, k).ok else 'no'}" for k in ("build", "validate", "bench")
        )
        if info is not None:
            verdict = t.accepts(info, t.Options())
            rows[-1]["model"] = verdict.to_dict()
            marks += f" model:{'yes' if verdict.ok else 'no'}"
        lines.append(f"{name:16} {marks}  {t.summary}")
        for k in ("build", "validate", "bench"):
            if not getattr(a, k).ok:
                lines.append(f"{'':16}   {k}: {getattr(a, k).reason}")
        if info is not None and not rows[-1]["model"]["ok"]:
            lines.append(f"{'':16}   model: {rows[-1]['model']['reason']}")
    for name, reason in broken.items():
        no = {"ok": False, "reason": reason}
        rows.append(
            {
                "name": name,
                "summary": "",
                "build": no,
                "validate": no,
                "bench": no,
                "options": [],
                "options_schema": None,
            }
        )
        lines.append(f"{name:16} build:no validate:no bench:no  {reason}")
    from packager.core.config import GatesConfig

    # [gates] is the same for every target: its schema once, beside the targets'.
    emit({"targets": rows, "gates_schema": json_schema(GatesConfig)}, as_json, "\n".join(lines))


def pubkey_option(fn: Callable) -> Callable:
    return click.option(
        "--pubkey",
        type=click.Path(path_type=Path),
        default=None,
        help="Also check the OpenSSF model signature (model.sig) with this EC public key.",
    )(fn)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@pubkey_option
@max_size_option
@json_option
def verify(path: Path, pubkey: Path | None, max_size_gb: float | None, as_json: bool) -> None:
    """Recompute every file's hash in a bundle directory or tarball."""
    from packager.api import verify as run_verify

    result = run_verify(path, pubkey, max_size_gb)
    files = len(result.manifest.get("files", {}))
    lines = (
        [f"OK: {path} ({files} files, signature {result.signature})"]
        if result.ok
        else [f"FAILED: {path}", *(f"  {p}" for p in result.problems)]
    )
    if not result.signed:  # first, where nobody can miss it
        lines.insert(
            0,
            f"UNSIGNED: {path} has no model.sig; its files match only its own manifest, and "
            "nothing shows who made it (sign with `packager sign --key KEY`)",
        )
    emit(result.to_dict(), as_json, "\n".join(lines))
    if not result.ok:
        raise GateFailed(f"{path} does not verify: {'; '.join(result.problems[:3])}")


@cli.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Private key path; PATH.pub is written too.",
)
def keygen(out: Path) -> None:
    """Make an EC P-256 key pair (PEM) for signing bundles with model-signing."""
    from packager.builder.signing import keygen as run_keygen

    key, pub = run_keygen(out)
    click.echo(f"private key {key} (keep it secret)\npublic key  {pub} (give it to hospitals)")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--key",
    type=click.Path(path_type=Path),
    required=True,
    help="EC P-256 private key (PEM, from `packager keygen`).",
)
@max_size_option
def sign(bundle: Path, key: Path, max_size_gb: float | None) -> None:
    """Sign a bundle (OpenSSF model signing, offline): model.sig covers every other file."""
    from packager.builder.signing import sign as run_sign

    run_sign(bundle, key, max_size_gb)
    click.echo(f"signed {bundle}")


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@data_options
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for the site validation report (default: "
    "DIR/site-validation/<bundle>/<utc-time>/ beside the bundle).",
)
@click.option(
    "--group-by",
    "group_by",
    multiple=True,
    metavar="COL",
    help="A labels.csv column to report subgroups by (repeatable); only these columns are read "
    "(default: the bundle's [data] group_by). Identifier-like columns are refused.",
)
@pubkey_option
@sign_option
@json_option
@quiet_option
def validate(
    bundle: Path,
    data: Path | None,
    split: str | None,
    labels_csv: Path | None,
    out: Path | None,
    group_by: tuple[str, ...],
    pubkey: Path | None,
    sign: Path | None,
    as_json: bool,
    quiet: bool,
    progress_mode: str | None,
) -> None:
    """Re-validate a bundle on this host's runtime.

    On the bundle's own validation data its report is completed (e.g. Core ML on a Mac) in a
    new generation, published atomically and signed with --sign KEY (or [sign] key in
    ./packager.toml); a signed bundle without the key is left published as it was (exit 1).
    On a site's own data (or with --labels/--out) this is site acceptance: a site validation
    report with the gates is written to --out or DIR/site-validation/<bundle>/<utc-time>/, and
    the bundle is left unchanged. Needs only the bundle: neither the config nor the model.
    Before any of the bundle's code runs, packager checks it with its own code (every file
    against the manifest, the signature, report.json's code hashes, the recorded config): a
    mismatch exits 1 naming the file.
    """
    from packager.hospital.site import revalidate

    outcome = revalidate(
        bundle,
        data,
        split,
        Progress(progress_mode_of(quiet, progress_mode)),
        labels_csv,
        out,
        list(group_by) or None,
        pubkey,
        sign,
    )
    c = outcome.get("clinical") or {}
    site = outcome.get("kind") == "site-validation"
    head = (
        f"site validation of {outcome['bundle']['target']}: {outcome['verdict']} — {outcome['reason']}"
        if site
        else f"{outcome['target']}: {outcome['status']} — {outcome['reason']}"
    )
    lines = [head]
    if site:
        lines.append(
            "  ".join(f"{k} {_rate_text(r)}" for k, r in outcome["rates"].items())
            + f"  ({c['n']} images)"
        )
    elif c:
        spec = "n/a" if c.get("specificity") is None else f"{c['specificity']:.4f}"
        lines.append(f"sensitivity {c['sensitivity']:.4f}  specificity {spec}  ({c['n']} images)")
    if outcome.get("files"):
        files = outcome["files"]
        lines.append(f"outcome {files['md']} (HTML: {files['html']})")
    publication = outcome.get("publication") or {}
    if publication.get("published"):
        lines.append(publication["reason"])
    emit(outcome, as_json, "\n".join(lines))
    problems = [outcome["reason"]] if outcome["status"] == ReportStatus.failed else []
    if publication and not publication["published"]:
        problems.append(publication["reason"])
    if problems:
        raise GateFailed("; ".join(problems))


def _rate_text(r: dict[str, Any]) -> str:
    if r["value"] is None:
        return "undefined"
    lo, hi = r["ci95"]
    return f"{r['value']:.4f} (95% CI {lo:.4f}-{hi:.4f})"


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--record",
    type=click.Path(path_type=Path),
    default=None,
    help="Acceptance record path (default: BUNDLE.acceptance.json next to the bundle).",
)
@pubkey_option
@max_size_option
@json_option
def selftest(
    bundle: Path, record: Path | None, pubkey: Path | None, max_size_gb: float | None, as_json: bool
) -> None:
    """At the hospital: check the bundle with packager's own code (every file against the
    manifest, the signature, the code hashes in report.json, the recorded config), and only then
    replay the golden set on this host's runtime with the bundle's own `predict.py --self-test`;
    the acceptance record states what the verdict rests on.
    Exit 0 accepted, 1 rejected (files or outputs differ), 2 bad usage, 3 the runtime cannot run
    here."""
    from packager.hospital.selftest import arrival

    code, line, rec = arrival(bundle, record, max_size_gb, pubkey)
    if as_json or code == 0:
        emit(rec, as_json, line)
    if code == 1:
        raise GateFailed(line)
    if code == 3:
        raise Unavailable(line)


def open_loop_text(ol: dict[str, Any]) -> str:
    head = (
        f"open loop (Poisson, dynamic batching up to {ol['max_batch']} within "
        f"{ol['max_delay_ms']:g} ms): "
    )
    if ol["max_rate"] is None:
        head += f"no rate tried meets p95 <= {ol['sla_ms']:g} ms"
    else:
        head += (
            f"max rate {ol['max_rate']:,.0f}/s at p95 {ol['p95_ms_at_max_rate']:.3f} ms "
            f"(SLA {ol['sla_ms']:g} ms) = {ol['share_of_saturation']:.0%} of closed-loop "
            f"saturation {ol['saturation_sps']:,.0f}/s"
        )
    rows = [
        f"  offered {p['rate']:10,.0f}/s  served {p['achieved_rate']:10,.0f}/s  p95 "
        + (f"{p['p95_ms']:8.3f} ms" if p["p95_ms"] is not None else "     n/a")
        + (f"  dropped {p['dropped']}" if p["dropped"] else "")
        for p in ol["points"]
    ]
    return "\n".join([head, *rows])


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--batch-sizes", default="1,8,16,32,64", show_default=True, help="Comma-separated batch sizes."
)
@click.option("--seconds", default=2.0, show_default=True, help="Seconds per batch size.")
@click.option(
    "--open-loop",
    is_flag=True,
    help="Also: latency under Poisson arrivals, and the highest rate whose p95 meets --sla-ms.",
)
@click.option(
    "--sla-ms",
    type=click.FloatRange(min=0, min_open=True),
    default=3.0,
    show_default=True,
    help="Open loop: the p95 latency a rate must meet.",
)
@click.option(
    "--rates",
    default=None,
    help="Open loop: offered rates (requests/s, comma-separated) instead of the search.",
)
@json_option
def bench(
    bundle: Path,
    batch_sizes: str,
    seconds: float,
    open_loop: bool,
    sla_ms: float,
    rates: str | None,
    as_json: bool,
) -> None:
    """Benchmark a bundle on this host (fresh subprocess, synthetic input)."""
    from packager.core.config import OpenLoopConfig
    from packager.hospital.site import rebench

    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise click.BadParameter(
            "use comma-separated integers, e.g. 1,8,32", param_hint="--batch-sizes"
        ) from None
    spec = None
    if open_loop:
        spec = asdict(OpenLoopConfig(enabled=True, sla_ms=sla_ms))
        try:
            spec["rates"] = [float(r) for r in rates.split(",") if r.strip()] if rates else None
        except ValueError:
            raise click.BadParameter(
                "use comma-separated requests/s, e.g. 500,1000", param_hint="--rates"
            ) from None
        if spec["rates"] is not None and (not spec["rates"] or min(spec["rates"]) <= 0):
            raise click.BadParameter("rates must be positive, e.g. 500,1000", param_hint="--rates")
    result = rebench(bundle, sizes, seconds, spec)
    lines = [f"load {result['load_time_ms']:.1f} ms, peak RSS {result['peak_rss_mb']:.1f} MB"]
    for b in result["batches"]:
        runtime = b.get("runtime_latency_ms")  # the runtime's own timer, where it has one
        lo, hi = b["latency_ms"]["p50_ci95"]
        tlo, thi = b["throughput_ci95"]
        lines.append(
            f"batch {b['batch_size']:4}  p50 {b['latency_ms']['p50']:8.3f} ms [{lo:.3f}-{hi:.3f}]"
            f"  {b['throughput_sps']:10.1f} samples/s [{tlo:.1f}-{thi:.1f}]"
            f"  {b['windows']} windows{'' if b['stable'] else ', UNSTABLE'}"
            + (f"  (runtime's own timer p50 {runtime['p50']:.3f} ms)" if runtime else "")
        )
    ol = result.get("open_loop")
    if ol:
        lines.append(open_loop_text(ol))
    state = result["host_state"]
    if state["noisy"]:
        lines.append(
            f"measured on a busy host: other processes used {state['others_cpu_pct']:.0f}% of the "
            f"CPU, steal {state['steal_pct']:.1f}%; rerun on an idle host before deciding"
        )
    emit(result, as_json, "\n".join(lines))


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--sla", type=click.Path(path_type=Path), default=None, help="SLA thresholds (TOML).")
@click.option(
    "--format", "fmt", type=click.Choice(["md", "html", "json"]), default="md", show_default=True
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Write to FILE instead of stdout."
)
@click.option("--fail-on-sla", is_flag=True, help="Exit 1 when any SLA line is missed.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
def compare(
    paths: tuple[Path, ...],
    sla: Path | None,
    fmt: str,
    out: Path | None,
    fail_on_sla: bool,
    as_json: bool,
) -> None:
    """Compare bundles or reports side by side (and against an SLA)."""
    from packager.api import compare as run_compare

    text, missed = run_compare(list(paths), sla, "json" if as_json else fmt)
    if out:
        out.write_text(text)
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text)
    if fail_on_sla and missed:
        raise GateFailed(f"SLA missed: {'; '.join(missed[:5])}")


@cli.command()
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="PneumoniaMNIST .npz (else ../shared/data or download).",
)
@click.option("--out", type=click.Path(path_type=Path), default=Path("dist"), show_default=True)
@click.option("--epochs", default=None, type=int, help="Training epochs for the example model.")
@quiet_option
def demo(
    data: Path | None, out: Path, epochs: int | None, quiet: bool, progress_mode: str | None
) -> None:
    """The embedded default: train the example ResNet-18, then build every target available here."""
    from packager.example.demo import run_demo

    run_demo(data, out, epochs, Progress(progress_mode_of(quiet, progress_mode)))


# Failures of the host rather than of packager: a full disk, a read-only or forbidden path.
HOST_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.ENAMETOOLONG,
}


@cli.group("cache")
def cache_group() -> None:
    """The build cache: conversions and validations reused when their inputs are identical."""


@cache_group.command("ls")
@json_option
def cache_ls(as_json: bool) -> None:
    """List the cache's entries, least recently used first."""
    from packager.builder.cache import Cache

    c = Cache()
    entries = c.ls()
    lines = [
        f"{e.kind:12} {e.key[:16]}  {e.meta.get('target', '?'):16} {e.size / 2**20:8.1f} MB  "
        f"{e.created}"
        for e in entries
    ]
    total = sum(e.size for e in entries) / 2**20
    lines.append(f"{len(entries)} entries, {total:.1f} MB in {c.root}")
    emit({"root": str(c.root), "entries": [asdict(e) for e in entries]}, as_json, "\n".join(lines))


@cache_group.command("prune")
@click.option(
    "--older-than",
    "days",
    type=click.FloatRange(min=0),
    default=None,
    help="Remove entries unused for this many days.",
)
@click.option(
    "--max-size-mb",
    type=click.FloatRange(min=0),
    default=None,
    help="Then remove the least recently used until the cache is at most this size.",
)
@json_option
def cache_prune(days: float | None, max_size_mb: float | None, as_json: bool) -> None:
    """Remove old or least recently used entries."""
    from packager.builder.cache import Cache

    if days is None and max_size_mb is None:
        raise click.UsageError("give --older-than DAYS and/or --max-size-mb MB")
    limit = None if max_size_mb is None else int(max_size_mb * 2**20)
    removed = Cache().prune(days, limit)
    text = f"removed {len(removed)} entries ({sum(e.size for e in removed) / 2**20:.1f} MB)"
    emit({"removed": [asdict(e) for e in removed]}, as_json, text)


@cache_group.command("clear")
@json_option
def cache_clear(as_json: bool) -> None:
    """Remove every entry."""
    from packager.builder.cache import Cache

    n = Cache().clear()
    emit({"removed": n}, as_json, f"removed {n} entries")


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="packager", standalone_mode=False)
    except PackagerError as exc:
        one_line = " ".join(str(exc).splitlines())  # third-party text may hold newlines
        click.echo(f"packager: error: {one_line}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("packager: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx else ""
        click.echo(f"packager: error: {exc.format_message()}{where}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("packager: interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        if exc.errno not in HOST_ERRNOS:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(
            f"packager: error: {exc.strerror}{where}; free some space or fix the permissions, "
            "or write elsewhere (--out)",
            err=True,
        )
        sys.exit(2)
    except Exception as exc:
        if not _caused_by_interrupt(exc):
            raise
        click.echo("packager: interrupted", err=True)
        sys.exit(130)
    sys.exit(0)


def _caused_by_interrupt(exc: BaseException) -> bool:
    """Ctrl-C inside a C extension's import (onnxruntime, openvino) comes back as the
    extension's ImportError "initialization failed", caused by the KeyboardInterrupt."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


if __name__ == "__main__":
    main()
