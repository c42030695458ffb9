"""report.md and report.html of a bundle or a site validation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from packager.core.templating import render

if TYPE_CHECKING:
    import numpy as np


def render_reports(bdir: Path, report: dict[str, Any], images: np.ndarray | None = None) -> None:
    """report.md and report.html; `images` (the raw validation images) give flipped-case
    thumbnails, and without them the flipped cases are listed without pictures."""
    from packager.reports.report import bundle_context

    ctx = bundle_context(bdir, report, images)
    (bdir / "report.md").write_text(render("report/report.md.j2", r=report, **ctx))
    (bdir / "report.html").write_text(render("report/report.html.j2", r=report, **ctx))
