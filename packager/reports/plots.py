"""Figures for the reports: matplotlib's object API (no pyplot, so no GUI backend and no global
state) drawn to inline SVG, and image thumbnails as PNG data URIs. Output is deterministic, so a
rebuilt report with the same numbers is byte-identical."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
import matplotlib.ticker
import numpy as np
from markupsafe import Markup, escape
from matplotlib.figure import Figure
from PIL import Image

from packager.core.status import ReportStatus

INK, GRID = "#1f2933", "#d9dee3"
TARGET_C, REF_C, ALT_C = "#1f6fb2", "#8a94a0", "#c2571a"
GOOD_C, BAD_C = "#1d7a3a", "#b3261e"
PALETTE = ("#1f6fb2", "#c2571a", "#1d7a3a", "#7b3fa0", "#a5790a", "#0f7c80", "#b3261e")
RC = {
    "font.size": 9,
    "axes.edgecolor": INK,
    "axes.labelcolor": INK,
    "xtick.color": INK,
    "ytick.color": INK,
    "axes.grid": True,
    "grid.color": GRID,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.fonttype": "none",  # text stays text: smaller, selectable
}


def _limit_line(ax: Any, x: float, label: str, style: str) -> None:
    """A labelled vertical line for a gate or an SLA limit."""
    ax.axvline(x, color=ALT_C, linestyle=style, linewidth=1)
    ax.annotate(
        label,
        (x, 1.0),
        xycoords=("data", "axes fraction"),
        fontsize=7,
        color=ALT_C,
        ha="right",
        va="bottom",
    )


def plain(text: Any) -> str:
    """User text drawn by matplotlib, with `$` escaped so it is never parsed as mathtext."""
    return str(text).replace("$", r"\$")


def to_svg(fig: Figure, key: str, label: str) -> Markup:
    """Inline <svg> (no XML prolog, no date) labelled for screen readers; `key` salts the ids so
    two figures on one page never share one."""
    buf = io.StringIO()
    with matplotlib.rc_context({**RC, "svg.hashsalt": key}):
        fig.savefig(
            buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None}
        )
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    attrs = f'<svg role="img" aria-label="{escape(label)}" class="plot" data-plot="{key}" '
    return Markup(attrs + text[len("<svg ") :])


def _figure(width: float, height: float, cols: int = 1) -> tuple[Figure, Any]:
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(width, height))
        axes = fig.subplots(1, cols)
    return fig, axes


def latency_distribution(
    samples_ms: Sequence[float], stats: dict[str, float], batch: int, calls: int
) -> Markup:
    """Histogram of per-call latency (`samples_ms` evenly thinned from `calls` timed calls) with
    p50/p95/p99 marked. The x axis stops past p99 so one slow outlier does not squash the bulk;
    the share of calls beyond it is given in the title."""
    ms = np.asarray(samples_ms, np.float64)
    cut = stats["p99"] * 1.5
    shown, beyond = ms[ms <= cut], int((ms > cut).sum())
    fig, ax = _figure(6.4, 2.8)
    with matplotlib.rc_context(RC):
        ax.hist(shown, bins=40, color=TARGET_C, alpha=0.85)
        for name, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            ax.axvline(
                stats[name],
                color=ALT_C,
                linestyle=style,
                linewidth=1.3,
                label=f"{name} {stats[name]:.4g} ms",
            )
        ax.set_xlabel("latency per call (ms)")
        ax.set_ylabel("calls")
        note = (
            f"; {100 * beyond / len(ms):.1f}% slower (up to {ms.max():.3g} ms) not drawn"
            if beyond
            else ""
        )
        ax.set_title(f"Batch {batch}: {calls} timed calls{note}", loc="left")
        ax.legend(fontsize=7, frameon=False)
    return to_svg(fig, "latency", f"latency distribution at batch {batch}")


def batch_sweep(series: list[tuple[str, list[dict[str, Any]]]]) -> Markup:
    """Throughput and latency (p50 solid, p95 dashed) against batch size, one line per series."""
    fig, (ax_t, ax_l) = _figure(7.6, 2.9, cols=2)
    with matplotlib.rc_context(RC):
        for i, (name, batches) in enumerate(series):
            rows = sorted(batches, key=lambda b: b["batch_size"])
            bs = [b["batch_size"] for b in rows]
            color = PALETTE[i % len(PALETTE)]
            ax_t.plot(bs, [b["throughput_sps"] for b in rows], "o-", color=color, label=plain(name))
            ax_l.plot(bs, [b["latency_ms"]["p50"] for b in rows], "o-", color=color)
            ax_l.plot(bs, [b["latency_ms"]["p95"] for b in rows], "s--", color=color, alpha=0.7)
        for ax in (ax_t, ax_l):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("batch size")
            ticks = sorted({b["batch_size"] for _, rows in series for b in rows})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
        ax_t.set_ylabel("samples / s")
        ax_t.set_title("Throughput (higher is better)", loc="left")
        ax_l.set_ylabel("ms per batch")
        ax_l.set_title("Latency: p50 solid, p95 dashed", loc="left")
        ax_t.set_ylim(bottom=0)
        ax_l.set_ylim(bottom=0)
        if len(series) > 1:  # under the panels: variant labels are long
            fig.legend(
                loc="upper left",
                bbox_to_anchor=(0.0, 0.0),
                fontsize=7,
                frameon=False,
                title="p50 solid, p95 dashed; one colour per configuration",
                title_fontsize=7,
            )
        fig.tight_layout()
    return to_svg(fig, "sweep", "throughput and latency against batch size")


def open_loop(ol: dict[str, Any]) -> Markup:
    """p50/p95/p99 latency against the achieved Poisson rate, with the SLA line and max_rate."""
    fig, ax = _figure(5.2, 2.9)
    with matplotlib.rc_context(RC):
        pts = [p for p in sorted(ol["points"], key=lambda p: p["achieved_rate"]) if p["p95_ms"]]
        rate = [p["achieved_rate"] for p in pts]
        for key, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^--")):
            ax.plot(rate, [p[key] for p in pts], style, color=PALETTE[0], label=key[:3])
        ax.axhline(ol["sla_ms"], color=PALETTE[1], linestyle=":", label=f"SLA {ol['sla_ms']:g} ms")
        if ol["max_rate"] is not None:
            _limit_line(ax, ol["max_rate"], f"max rate {ol['max_rate']:,.0f}/s", ":")
        ax.set_yscale("log")
        ax.set_xlabel("requests / s served (Poisson arrivals)")
        ax.set_ylabel("ms from scheduled arrival")
        ax.set_title("Latency under open-loop load", loc="left")
        ax.legend(fontsize=7, frameon=False)
        fig.tight_layout()
    return to_svg(fig, "open-loop", "latency against offered rate under open-loop load")


def confusion_matrix(conf: dict[str, int], positive: str, negative: str) -> Markup:
    """2x2 counts at the decision threshold: rows the truth, columns the decision."""
    cells = np.array([[conf["tp"], conf["fn"]], [conf["fp"], conf["tn"]]])
    fig, ax = _figure(3.6, 3.0)
    with matplotlib.rc_context(RC):
        ax.grid(False)
        ax.imshow(cells, cmap="Blues", vmin=0, vmax=max(1, int(cells.max())))
        names = (plain(positive), plain(negative))
        ax.set_xticks([0, 1], [f"decided\n{n}" for n in names])
        ax.set_yticks([0, 1], [f"truly\n{n}" for n in names])
        kinds = (("true positive", "missed"), ("false alarm", "true negative"))
        for r in range(2):
            for c in range(2):
                dark = cells[r, c] > cells.max() / 2
                ax.text(
                    c,
                    r,
                    f"{cells[r, c]}\n{kinds[r][c]}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else INK,
                )
        ax.set_title("Confusion matrix at the threshold", loc="left")
    return to_svg(fig, "confusion", "confusion matrix at the decision threshold")


def roc(
    fpr: np.ndarray,
    tpr: np.ndarray,
    ref: tuple[np.ndarray, np.ndarray] | None,
    point: tuple[float, float],
    threshold: float,
    auc: float | None,
) -> Markup:
    """ROC of this target (and the reference's, dashed) with the operating point at the threshold."""
    fig, ax = _figure(3.8, 3.4)
    with matplotlib.rc_context(RC):
        label = f"this target (AUC {auc:.4f})" if auc is not None else "this target"
        ax.plot(fpr, tpr, color=TARGET_C, linewidth=1.6, label=label)
        if ref is not None:
            ax.plot(ref[0], ref[1], "--", color=REF_C, linewidth=1.2, label="reference")
        ax.plot([0, 1], [0, 1], ":", color=GRID)
        fp, tp = point
        ax.plot([fp], [tp], "o", color=ALT_C, markersize=7, label=f"threshold {threshold:g}")
        ax.annotate(
            f"sensitivity {100 * tp:.2f}%\nspecificity {100 * (1 - fp):.2f}%",
            (fp, tp),
            xytext=(12, -28),
            textcoords="offset points",
            fontsize=8,
            color=ALT_C,
        )
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_xlabel("false-positive rate (1 - specificity)")
        ax.set_ylabel("sensitivity")
        ax.set_title("ROC and the operating point", loc="left")
        ax.legend(loc="lower right", fontsize=7, frameon=False)
    return to_svg(fig, "roc", "ROC curve with the operating point")


def sensitivity_intervals(
    names: list[str],
    values: list[float | None],
    cis: list[tuple[float, float] | None],
    passed: list[bool],
    lines: list[tuple[str, float]],
) -> Markup:
    """Sensitivity with its 95% interval per target; `lines` marks the gate and SLA limits."""
    fig, ax = _figure(6.4, 0.5 + 0.42 * len(names))
    y = np.arange(len(names))[::-1]
    with matplotlib.rc_context(RC):
        for yi, v, ci, ok in zip(y, values, cis, passed, strict=True):
            if v is None:
                ax.text(
                    0.5,
                    yi,
                    "not validated",
                    va="center",
                    transform=ax.get_yaxis_transform(),
                    color=REF_C,
                )
                continue
            color = GOOD_C if ok else BAD_C
            err = [[v - ci[0]], [ci[1] - v]] if ci else None
            ax.errorbar([v], [yi], xerr=err, fmt="o", color=color, capsize=4)
        for i, (label, x) in enumerate(lines):
            _limit_line(ax, x, plain(label), ("--", ":")[i % 2])
        ax.set_yticks(y, [plain(n) for n in names])
        ax.set_ylim(-0.7, len(names) - 0.3)
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_xlabel("sensitivity with 95% interval (green: every clinical gate passed)")
    return to_svg(fig, "sensitivity", "sensitivity with 95% interval per target")


def latency_bars(
    names: list[str], p50: list[float | None], p95: list[float | None], limit: float | None
) -> Markup:
    """Batch-1 latency p50 and p95 per target (lower is better); a missing value says why."""
    fig, ax = _figure(6.4, 0.6 + 0.45 * len(names))
    y = np.arange(len(names))[::-1]
    with matplotlib.rc_context(RC):
        for yi, a, b in zip(y, p50, p95, strict=True):
            if a is None:
                ax.text(
                    0.01,
                    yi,
                    "not benchmarked at batch 1",
                    va="center",
                    transform=ax.get_yaxis_transform(),
                    color=REF_C,
                )
                continue
            ax.barh(yi + 0.18, a, height=0.34, color=TARGET_C)
            ax.barh(yi - 0.18, b, height=0.34, color=REF_C)
            ax.annotate(
                f"{a:.3g} / {b:.3g} ms",
                (b, yi),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
        slowest = max((b for b in p95 if b is not None), default=0.0)
        right = max(slowest * 1.35, 1e-6)
        if limit is not None and limit <= 4 * slowest:
            right = max(right, limit * 1.1)
            _limit_line(ax, limit, f"SLA {limit:g} ms", "--")
        elif limit is not None:  # drawn to scale the bars would vanish next to the line
            ax.annotate(
                f"SLA {limit:g} ms: far right of this scale",
                (1.0, 1.0),
                xycoords="axes fraction",
                fontsize=7,
                color=ALT_C,
                ha="right",
                va="bottom",
            )
        ax.set_yticks(y, [plain(n) for n in names])
        ax.set_xlim(left=0, right=right)
        ax.set_xlabel("batch-1 latency, ms (blue p50, grey p95; lower is better)")
    return to_svg(fig, "latency-bars", "batch-1 latency per target")


def throughput_curves(
    series: list[tuple[str, list[dict[str, Any]]]], limit: float | None
) -> Markup:
    """Throughput against batch size for every benchmarked target."""
    fig, ax = _figure(6.4, 3.0)
    with matplotlib.rc_context(RC):
        for i, (name, batches) in enumerate(series):
            rows = sorted(batches, key=lambda b: b["batch_size"])
            ax.plot(
                [b["batch_size"] for b in rows],
                [b["throughput_sps"] for b in rows],
                "o-",
                color=PALETTE[i % len(PALETTE)],
                label=plain(name),
            )
        if limit is not None:
            ax.axhline(limit, color=ALT_C, linestyle="--", linewidth=1)
            ax.annotate(
                f"SLA {limit:g}/s",
                (0.0, limit),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                color=ALT_C,
                va="bottom",
            )
        ticks = sorted({b["batch_size"] for _, rows in series for b in rows})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_xlabel("batch size")
        ax.set_ylabel("samples / s (higher is better)")
        ax.legend(fontsize=7, frameon=False)
    return to_svg(fig, "throughput", "throughput against batch size per target")


def reliability(target: dict[str, Any], reference: dict[str, Any] | None, positive: str) -> Markup:
    """Reliability diagram of p(positive): observed share of positives per probability bin
    against the bin's mean probability (marker area by case count), the reference's dashed."""
    fig, ax = _figure(3.8, 3.4)
    with matplotlib.rc_context(RC):
        ax.plot([0, 1], [0, 1], ":", color=GRID, label="perfectly calibrated")
        series = [("this target", target, TARGET_C, "o-")]
        if reference is not None:
            series.append(("reference", reference, REF_C, "s--"))
        for name, cal, color, style in series:
            curve = cal["curve"]
            ax.plot(
                curve["prob_pred"],
                curve["prob_true"],
                style,
                color=color,
                linewidth=1.3,
                markersize=4,
                label=f"{name} (ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f})",
            )
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_xlabel(f"mean predicted p({plain(positive)}) in the bin")
        ax.set_ylabel(f"share truly {plain(positive)}")
        ax.set_title("Reliability (calibration)", loc="left")
        ax.legend(loc="upper left", fontsize=7, frameon=False)
    return to_svg(fig, "reliability", "reliability diagram of the predicted probabilities")


def precision_candidates(
    rows: list[dict[str, Any]], winner: str | None, objective: str, min_sensitivity: float | None
) -> Markup:
    """Precision search: each candidate's batch-1 p50 latency against its sensitivity (gate
    passers filled, rejected hollow, the winner starred); the gate drawn where it lies."""
    fig, ax = _figure(6.4, 3.0)
    with matplotlib.rc_context(RC):
        for r in rows:
            if r.get("sensitivity") is None:
                continue
            lat = r.get("latency_p50_ms")
            y = lat if lat is not None else 0.0
            ok = r["status"] == ReportStatus.passed or (
                r["status"] == ReportStatus.not_validated and r.get("gates_ok")
            )
            color = GOOD_C if ok else BAD_C
            if r["label"] == winner:
                ax.plot(r["sensitivity"], y, "*", markersize=16, color=TARGET_C, zorder=3)
            ax.plot(
                r["sensitivity"],
                y,
                "o",
                markersize=7,
                markerfacecolor=color if ok else "none",
                markeredgecolor=color,
            )
            tag = plain(r["label"]) + (" (winner)" if r["label"] == winner else "")
            tag += "" if lat is not None else " (no batch-1 run)"
            ax.annotate(
                tag, (r["sensitivity"], y), xytext=(5, 4), textcoords="offset points", fontsize=7
            )
        if min_sensitivity is not None:
            _limit_line(ax, min_sensitivity, f"gate {min_sensitivity}", "--")
        ax.set_xlabel("sensitivity on the validation split")
        ax.set_ylabel("batch-1 p50 latency (ms, short run)")
        ax.set_title(
            f"Precision candidates (objective: {objective}); filled: every gate passed",
            loc="left",
        )
    return to_svg(fig, "candidates", "precision candidates: latency against sensitivity")


def thumbnail(image: np.ndarray, size: int = 96) -> str:
    """A PNG data URI of one raw image (uint8 HxW or HxWx3, or float on the 0..255 display
    scale as DICOM and 16-bit images are held), upscaled without smoothing."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    img = Image.fromarray(np.ascontiguousarray(image))
    scale = max(1, size // max(img.size))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _small_multiples(
    items: list[Any], draw: Callable[[Any, Any], None], xlabel: str, ylabel: str
) -> Figure:
    """One small square plot per item, 4 to a row, on shared unit axes."""
    cols, rows = min(4, len(items)), math.ceil(len(items) / 4)
    fig = Figure(figsize=(2.3 * cols, 2.2 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True)).ravel()
    for ax, item in zip(axes, items, strict=False):
        ax.plot([0, 1], [0, 1], ":", color=GRID)
        draw(ax, item)
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
    for ax in axes[len(items) :]:
        ax.set_visible(False)
    fig.supxlabel(xlabel, fontsize=8)
    fig.supylabel(ylabel, fontsize=8)
    return fig


def roc_small_multiples(curves: list[tuple[Any, ...]]) -> Markup:
    """One small ROC per finding of a multi-label model: (name, (fpr, tpr), reference (fpr, tpr)
    or None, operating point (1 - specificity, sensitivity), AUC or None), same axes for all."""

    def draw(ax: Any, curve: tuple[Any, ...]) -> None:
        name, (fpr, tpr), ref, (fp, tp), auc = curve
        ax.plot(fpr, tpr, color=TARGET_C, linewidth=1.3)
        if ref is not None:
            ax.plot(ref[0], ref[1], "--", color=REF_C, linewidth=1.0)
        ax.plot([fp], [tp], "o", color=ALT_C, markersize=5)
        title = plain(name) + (f" (AUC {auc:.3f})" if auc is not None else "")
        ax.set_title(title, loc="left", fontsize=8)

    with matplotlib.rc_context(RC):
        fig = _small_multiples(curves, draw, "false-positive rate (1 - specificity)", "sensitivity")
    return to_svg(fig, "roc-findings", "ROC curve of each finding with its operating point")


def reliability_small_multiples(items: list[tuple[str, dict[str, Any], Any]]) -> Markup:
    """One small reliability diagram per finding: (name, its target calibration, the
    reference's or None), as `reliability` draws them, ECE in each title."""

    def draw(ax: Any, item: tuple[str, dict[str, Any], Any]) -> None:
        name, cal, ref = item
        for c, color, style in ((ref, REF_C, "s--"), (cal, TARGET_C, "o-")):
            if c is not None:
                curve = c["curve"]
                ax.plot(curve["prob_pred"], curve["prob_true"], style, color=color, markersize=3)
        ax.set_title(f"{plain(name)} (ECE {cal['ece']:.3f})", loc="left", fontsize=8)

    with matplotlib.rc_context(RC):
        fig = _small_multiples(
            items, draw, "mean predicted probability in the bin", "share truly present"
        )
    return to_svg(fig, "reliability-findings", "reliability diagram of each finding")
