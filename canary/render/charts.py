"""Chart geometry as plain data: scales, ticks, and the shapes a chart is made of.

A tool computes a :class:`Chart` (where every line, band, dot and label goes, with its class and tooltip);
``templates/kit/charts.svg.j2`` draws any chart. Nothing here writes markup, so nothing here escapes:
text stays text until the autoescaping template puts it on the page.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from canary.render.format import rel

Data = tuple[tuple[str, str], ...]  # extra ``data-*`` attributes (name without the prefix, value)


# -- scales ------------------------------------------------------------------------------------------------
def nice_step(span: float, target: int = 5) -> float:
    """A 1/2/2.5/5 × 10ⁿ step that cuts ``span`` into about ``target`` parts."""
    if span <= 0:
        return 1.0
    raw = span / target
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


@dataclass(frozen=True, slots=True)
class Tick:
    at: float  # pixel position along its axis
    label: str


@dataclass(frozen=True, slots=True)
class TimeAxis:
    """Milliseconds → x pixels between ``left`` and ``right``; ticks every 5 s … 1 day, labelled ``m:ss``."""

    start_ms: int
    end_ms: int
    left: float
    right: float

    def x(self, ts_ms: float) -> float:
        span = max(1, self.end_ms - self.start_ms)
        return self.left + (ts_ms - self.start_ms) / span * (self.right - self.left)

    def ticks(self) -> list[Tick]:
        seconds = (self.end_ms - self.start_ms) / 1000
        steps = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
        step = next((s for s in steps if seconds / s <= 10), 86400 * math.ceil(seconds / 86400 / 10))
        out = []
        t = 0
        while t <= seconds + 1e-9:
            out.append(Tick(self.x(self.start_ms + t * 1000), rel(t)))
            t += step
        return out


@dataclass(frozen=True, slots=True)
class YAxis:
    """Values → y pixels (``top`` is the highest value ``hi``)."""

    top: float
    bottom: float
    lo: float
    hi: float

    def y(self, v: float) -> float:
        span = self.hi - self.lo or 1.0
        return self.bottom - (v - self.lo) / span * (self.bottom - self.top)

    @classmethod
    def fit(cls, top: float, bottom: float, values: Iterable[float], floor_hi: float, lo: float = 0.0) -> YAxis:
        hi = max([floor_hi, *values])
        step = nice_step(hi - lo)
        return cls(top, bottom, lo, math.ceil(hi * 1.12 / step) * step if hi > lo else lo + step)

    def ticks(self) -> list[float]:
        step = nice_step(self.hi - self.lo)
        n = round((self.hi - self.lo) / step)
        return [self.lo + i * step for i in range(n + 1)]


def polyline(points: Iterable[tuple[float, float] | None]) -> tuple[str, int]:
    """An SVG path through ``points``, lifting the pen at each ``None`` (a gap); and how many vertices."""
    d: list[str] = []
    pen_down = False
    for p in points:
        if p is None:
            pen_down = False
            continue
        d.append(f"{'L' if pen_down else 'M'}{p[0]:.1f},{p[1]:.1f}")
        pen_down = True
    return " ".join(d), len(d)


# -- shapes ------------------------------------------------------------------------------------------------
# Each shape knows its SVG element and attributes as (name, value) pairs — data the template escapes and writes.
Attrs = tuple[tuple[str, str], ...]
Tag = Literal["line", "rect", "path", "circle", "text", "g"]


def num(v: float) -> str:
    """Coordinates: integers as they are, everything else to a tenth of a pixel (enough at 1000 px wide)."""
    return str(v) if isinstance(v, int) else f"{v:.1f}"


def _attrs(*pairs: tuple[str, object], data: Data = ()) -> Attrs:
    out = [(k, str(v)) for k, v in pairs[:1] if v is not None]  # the class first, as people read it
    out += [(f"data-{k}", v) for k, v in data]
    out += [(k, str(v)) for k, v in pairs[1:] if v is not None]
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Line:
    tag: ClassVar[Tag] = "line"
    x1: float
    y1: float
    x2: float
    y2: float
    cls: str | None = None
    stroke: str | None = None
    width: float | None = None
    dash: str | None = None
    title: str | None = None
    data: Data = ()

    @property
    def attrs(self) -> Attrs:
        return _attrs(
            ("class", self.cls),
            ("x1", num(self.x1)),
            ("y1", num(self.y1)),
            ("x2", num(self.x2)),
            ("y2", num(self.y2)),
            ("stroke", self.stroke),
            ("stroke-width", self.width),
            ("stroke-dasharray", self.dash),
            data=self.data,
        )


@dataclass(frozen=True, slots=True)
class Rect:
    tag: ClassVar[Tag] = "rect"
    x: float
    y: float
    width: float
    height: float
    cls: str | None = None
    fill: str | None = None
    opacity: float | None = None  # fill-opacity
    rx: float | None = None
    title: str | None = None
    data: Data = ()

    @property
    def attrs(self) -> Attrs:
        return _attrs(
            ("class", self.cls),
            ("x", num(self.x)),
            ("y", num(self.y)),
            ("width", num(self.width)),
            ("height", num(self.height)),
            ("rx", self.rx),
            ("fill", self.fill),
            ("fill-opacity", self.opacity),
            data=self.data,
        )


@dataclass(frozen=True, slots=True)
class Path:
    tag: ClassVar[Tag] = "path"
    d: str
    cls: str | None = None
    fill: str = "none"
    opacity: float | None = None  # fill-opacity
    stroke: str | None = None
    width: float | None = None
    round_joins: bool = False
    round_caps: bool = False
    data: Data = ()
    title: ClassVar[None] = None

    @property
    def attrs(self) -> Attrs:
        return _attrs(
            ("class", self.cls),
            ("d", self.d),
            ("fill", self.fill),
            ("fill-opacity", self.opacity),
            ("stroke", self.stroke),
            ("stroke-width", self.width),
            ("stroke-linejoin", "round" if self.round_joins else None),
            ("stroke-linecap", "round" if self.round_caps else None),
            data=self.data,
        )


@dataclass(frozen=True, slots=True)
class Dot:
    tag: ClassVar[Tag] = "circle"
    cx: float
    cy: float
    r: float
    cls: str | None = None
    fill: str | None = None
    stroke: str | None = None
    width: float | None = None
    dash: str | None = None
    title: str | None = None
    data: Data = ()

    @property
    def attrs(self) -> Attrs:
        return _attrs(
            ("class", self.cls),
            ("cx", num(self.cx)),
            ("cy", num(self.cy)),
            ("r", self.r),
            ("fill", self.fill),
            ("stroke", self.stroke),
            ("stroke-width", self.width),
            ("stroke-dasharray", self.dash),
            data=self.data,
        )


@dataclass(frozen=True, slots=True)
class Label:
    tag: ClassVar[Tag] = "text"
    x: float
    y: float
    text: str
    cls: str | None = None
    anchor: Literal["start", "middle", "end"] | None = None
    fill: str | None = None
    size: float | None = None
    bold: bool = False
    title: ClassVar[None] = None

    @property
    def attrs(self) -> Attrs:
        return _attrs(
            ("class", self.cls),
            ("x", num(self.x)),
            ("y", num(self.y)),
            ("text-anchor", self.anchor),
            ("fill", self.fill),
            ("font-size", self.size),
            ("font-weight", "600" if self.bold else None),
        )


@dataclass(frozen=True, slots=True)
class Group:
    tag: ClassVar[Tag] = "g"
    items: Sequence[Shape]
    cls: str | None = None
    title: str | None = None
    data: Data = ()

    @property
    def attrs(self) -> Attrs:
        return _attrs(("class", self.cls), data=self.data)


Shape = Line | Rect | Path | Dot | Label | Group


@dataclass(frozen=True, slots=True)
class Chart:
    """One ``<svg>``: its size, how it is announced (``label`` for screen readers, ``title`` as a tooltip
    and a heading drawn at ``heading``) and its shapes in drawing order."""

    width: int
    height: int
    shapes: Sequence[Shape]
    cls: str | None = None  # also the element id
    label: str | None = None
    title: str | None = None
    heading: Label | None = None
    fluid: bool = True  # scale to the container's width (else a fixed width × height)


# -- building blocks shared by the charts ------------------------------------------------------------------
def x_grid(ticks: Sequence[Tick], top: float, bottom: float, left: float, right: float) -> Group:
    """Vertical grid lines with their labels under the plot, and the baseline."""
    items: list[Shape] = []
    for t in ticks:
        items.append(Line(t.at, top, t.at, bottom, cls="grid"))
        items.append(Label(t.at, bottom + 16, t.label, cls="tick", anchor="middle"))
    items.append(Line(left, bottom, right, bottom, cls="baseline"))
    return Group(items, cls="axis x-axis")


def y_grid(ticks: Sequence[Tick], left: float, right: float) -> Group:
    """Horizontal grid lines with their labels left of the plot."""
    items: list[Shape] = []
    for t in ticks:
        items.append(Line(left, t.at, right, t.at, cls="grid"))
        items.append(Label(left - 8, t.at + 4, t.label, cls="tick", anchor="end"))
    return Group(items, cls="axis y-axis")
