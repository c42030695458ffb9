"""Jinja2 templates for documents (bundle README, reports, app snippets) with the
filters they share. Templates are for documents only: the code a bundle runs is copied verbatim
(packager.builder.bundle.install_code)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

import packager.templates as templates

TEMPLATES = Path(templates.__file__).parent


def md_escape(value: Any) -> str:
    """Text safe inside a Markdown table cell or paragraph (no HTML, no breaking the row)."""
    text = str(value).replace("\r", " ").replace("\n", " ")
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_{}\[\]()#+!|])", r"\\\1", text)


_SIMPLE_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def code_str(value: Any, lang: str = "swift") -> str:
    """A double-quoted string literal for Swift or Kotlin that holds any user text exactly."""
    out = []
    for ch in str(value):
        if ch in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[ch])
        elif lang == "kotlin" and ch == "$":  # starts a string template in Kotlin
            out.append("\\$")
        elif ord(ch) < 32:
            out.append(f"\\u{{{ord(ch):x}}}" if lang == "swift" else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def fmt(value: Any, digits: int = 4) -> str:
    """A number for people; missing values say so instead of showing zero."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def pts(value: Any) -> str:
    """A difference of two rates in percentage points, signed."""
    return "n/a" if value is None else f"{100 * value:+.2f} pts"


@cache
def env(autoescape: bool) -> jinja2.Environment:
    e = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    e.filters.update(md=md_escape, fmt=fmt, pct=pct, pts=pts, pyrepr=repr, code_str=code_str)
    return e


def render(name: str, **ctx: Any) -> str:
    return env(name.endswith(".html.j2")).get_template(name).render(**ctx)


def target_template(target: str, name: str) -> str | None:
    """A target's own part of a template (templates/targets/<target>/<name>), if it has one."""
    rel = f"targets/{target}/{name}"
    return rel if (TEMPLATES / rel).is_file() else None
