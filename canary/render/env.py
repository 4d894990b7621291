"""The single Jinja2 environment: autoescape on (HTML and SVG alike), undefined names are errors.

Templates ship as package data under ``canary/render/templates``; ``report.css`` beside them is the
stylesheet the report inlines and the dashboard serves.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

from canary.render import format as fmt


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("canary.render", "templates"),
        autoescape=True,  # every template is HTML or SVG
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters.update(
        ms=fmt.fmt_ms,
        pct=fmt.fmt_pct,
        recall=fmt.fmt_recall,
        value=fmt.fmt_value,
        utc=fmt.utc,
        clock=fmt.clock,
        clock_ms=fmt.clock_ms,
    )
    return env


def render(template: str, **context: Any) -> str:
    """A whole template rendered with ``context``."""
    return environment().get_template(template).render(**context)


def macros(template: str) -> Any:
    """A template's macros as callables (each returns escaped :class:`~markupsafe.Markup`)."""
    return environment().get_template(template).module


@cache
def css(name: str) -> Markup:
    """A stylesheet from the templates folder, trusted (it ships with the package)."""
    return Markup(resources.files("canary.render").joinpath("templates", name).read_text(encoding="utf-8"))
