"""How values read on every page (report, replay, dashboard): one place, used as template filters."""

from __future__ import annotations

from typing import Any

from canary.core.models import iso_ms


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f} ms" if v >= 100 else f"{v:,.1f} ms"


def fmt_recall(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def fmt_pct(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v * 100:.0f}%" if abs(v * 100 - round(v * 100)) < 0.05 else f"{v * 100:.1f}%"


def fmt_value(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return f"{v:g}" if abs(v) < 1e15 else str(v)
    if isinstance(v, list):
        return "[" + ", ".join(fmt_value(x) for x in v) + "]"
    return str(v)


def utc(ms: int | None) -> str:
    return "–" if ms is None else iso_ms(ms).replace("T", " ").replace(".000Z", "Z")


def clock(ms: int) -> str:
    return iso_ms(ms)[11:19]


def rel(seconds: float) -> str:
    """Time since a start as ``m:ss`` (``1h05`` from an hour on)."""
    s = round(seconds)
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    return f"{s // 3600}h{(s % 3600) // 60:02d}"


def duration(ms: int) -> str:
    s = max(0, ms) / 1000
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def clock_ms(ms: int | None) -> str:
    """Time of day to the millisecond (``06:00:05.123``), ``–`` for none."""
    return "–" if ms is None else iso_ms(ms)[11:23]
