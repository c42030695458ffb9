"""The .md and .html of a site validation (`packager validate BUNDLE --data SITE`), from its
report dict (packager.hospital.site). Every value from the site's data is escaped: Markdown by
md_escape, HTML by Jinja's autoescape."""

from __future__ import annotations

from typing import Any

from packager.core.templating import md_escape as md
from packager.core.templating import render

# Row indexes of false positives / negatives shown on the page; the .json and .npz keep all.
LISTED = 200
# Verdict -> badge class of templates/report/style.css: green only for a pass.
BADGE = {
    "pass": "passed",
    "fail": "failed",
    "undefined": "failed",
    "insufficient evidence": "caveat",
}


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _with_ci(x: dict[str, Any], of: str) -> str:
    if x["value"] is None:
        return f"undefined (no {of})"
    lo, hi = x["ci95"]
    return f"{_f(x['value'])} ({x['hits']}/{x['n']}; 95% CI {_f(lo)}–{_f(hi)})"


def _ci(v: float | None, bounds: list[float] | None) -> str:
    return "n/a" if v is None or bounds is None else f"{_f(v)} ({_f(bounds[0])}–{_f(bounds[1])})"


def _rows(rows: list[int]) -> str:
    shown = ", ".join(map(str, rows[:LISTED]))
    more = len(rows) - LISTED
    return (shown or "none") + (f", … and {more} more (all in the .json)" if more > 0 else "")


def _gate_row(g: dict[str, Any]) -> str:
    ci = "" if g["ci95"] is None else f"{_f(g['ci95'][0])}–{_f(g['ci95'][1])}"
    return (
        f"| {md(g['name'])} | {_f(g['value'])} | {ci} | {g['limit']} | {g['decided_on']} | "
        f"{g['verdict'].upper()} |"
    )


def site_markdown(site: dict[str, Any]) -> str:
    c, b, d, r = site["clinical"], site["bundle"], site["data"], site["rates"]
    bc, labels = b["build_clinical"], d["labels"]
    lines = [
        f"# Site validation: {md(b['name'])} {md(b['version'])} ({md(b['target'])}, "
        f"{md(b['precision'])})",
        "",
        f"**{site['verdict'].upper()}** — {md(site['reason'])}",
        "",
        f"- validated: {site['validated_at']}",
        f"- data: {md(d['path'])} split {md(d['split'])}, {d['n']} images, {d['positives']} "
        f"positive, sha256 {d['sha256'][:16]}…",
        f"- labels: {md(labels['statement'])}",
        _decision(site),
        f"- bundle manifest sha256 {b['manifest_sha256'][:16]}… (left unchanged), "
        f"signed: {'yes' if b['signed'] else 'no'}",
        "",
        "| metric | this site | at build |",
        "| --- | --- | --- |",
        f"| sensitivity | {_with_ci(r['sensitivity'], 'positives')} | {_f(bc['sensitivity'])} |",
        f"| specificity | {_with_ci(r['specificity'], 'negatives')} | {_f(bc['specificity'])} |",
        f"| AUC | {_f(c['auc'])} | |",
        f"| images | {c['n']} | {_f(bc['n'])} |",
        "",
        f"Gates decide on {site['gates']['decided_on']}: a gate the data cannot support reads "
        "`insufficient evidence`, a metric with no cases `undefined`; neither is a pass.",
        "",
        "| gate | value | 95% CI | limit | decided on | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
        *(_gate_row(g) for g in site["gates"]["checks"]),
    ]
    if site.get("findings"):
        lines += [
            "",
            f"A multi-label bundle: the table above is **{md(site['finding'])}**, the finding "
            "with the lowest sensitivity here. Every finding:",
            "",
            "| finding | positives | sensitivity (95% CI) | specificity (95% CI) | false "
            "positives | false negatives |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {md(n)} | {f['clinical']['positives']} | "
            f"{_with_ci(f['rates']['sensitivity'], 'positives')} | "
            f"{_with_ci(f['rates']['specificity'], 'negatives')} | "
            f"{_rows(f['errors']['false_positives'])} | {_rows(f['errors']['false_negatives'])} |"
            for n, f in site["findings"].items()
        ]
    for g in site["gates"]["not_applied"]:
        lines += ["", f"Not applied: {g['name']} (limit {g['limit']}): {md(g['reason'])}."]
    for col, rows in site["subgroups"].items():
        lines += ["", f"## By {md(col)}", ""]
        lines += [
            "| value | n | positives | sensitivity (95% CI) | specificity (95% CI) | verdict |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {md(v)} | {s['n']} | {s['positives']} | "
            f"{_ci(s['sensitivity'], s['sensitivity_ci95'])} | "
            f"{_ci(s['specificity'], s['specificity_ci95'])} | {s['verdict'].upper()} |"
            for v, s in rows.items()
        ]
        lines += ["", "| subgroup gate | value | 95% CI | limit | decided on | verdict |"]
        lines += ["| --- | --- | --- | --- | --- | --- |"]
        lines += [_gate_row(g) for s in rows.values() for g in s["gates"]]
    e = site["errors"]
    lines += [
        "",
        "## Errors by row",
        "",
        f"Row index: {md(labels['row_index'])}.",
        "",
        f"- false positives ({len(e['false_positives'])}): {_rows(e['false_positives'])}",
        f"- false negatives ({len(e['false_negatives'])}): {_rows(e['false_negatives'])}",
    ]
    t = site["throughput"]
    lines += [
        "",
        f"Runtime {md(site['runtime'].get('runtime', '?'))} {md(site['runtime'].get('version', ''))}; "
        f"{_f(t['images_per_s'])} images/s end to end (streamed).",
        "",
    ]
    return "\n".join(lines)


def _decision(site: dict[str, Any]) -> str:
    d = site["decision"]
    if d.get("thresholds"):
        each = ", ".join(f"{md(n)} >= {t}" for n, t in d["thresholds"].items())
        return f"- decision: each finding present when its probability meets its threshold: {each}"
    return f"- decision: {md(d['positive'])} when p >= {d['threshold']}"


def site_html(site: dict[str, Any]) -> str:
    """One self-contained page (the report.html style, no script, nothing fetched)."""
    return render("report/site.html.j2", s=site, badge=BADGE, listed=LISTED)
