"""The chart kit: geometry as plain data (scales, ticks, gaps) and the one template that draws any chart."""

from __future__ import annotations

from canary.render import macros
from canary.render.charts import Chart, Dot, Group, Label, Line, TimeAxis, YAxis, polyline
from tests.reports.dom import parse, path_vertices, select


def test_polyline_lifts_the_pen_at_a_gap() -> None:
    d, count = polyline([(0, 10), (5, 20), None, (10, 30), (15.25, 40)])
    assert count == 4 and d == "M0.0,10.0 L5.0,20.0 M10.0,30.0 L15.2,40.0"
    assert polyline([None, None]) == ("", 0)


def test_axes_map_values_to_pixels_with_round_ticks() -> None:
    axis = TimeAxis(0, 60_000, 100, 1000)
    assert axis.x(0) == 100 and axis.x(60_000) == 1000
    ticks = axis.ticks()
    assert [t.label for t in ticks] == ["0:00", "0:10", "0:20", "0:30", "0:40", "0:50", "1:00"]
    y = YAxis.fit(10, 210, [730.0, 1480.0], floor_hi=100.0)
    assert y.hi > 1480 and y.y(0) == 210 and y.ticks()[0] == 0.0 and y.ticks()[-1] == y.hi


def test_the_template_draws_shapes_with_their_classes_data_and_tooltips() -> None:
    chart = Chart(
        200,
        100,
        [
            Group([Line(0, 50, 200, 50, cls="threshold", data=(("value", "1200"),))], cls="axis"),
            Dot(10, 20.04, 3.2, cls="point", fill="#fff", title="a < b & c"),
            Label(100, 90, "no data", cls="no-data", anchor="middle"),
        ],
        cls="chart-x",
        label="x per bucket",
    )
    dom = parse(str(macros("kit/charts.svg.j2").chart(chart)))
    (svg,) = select(dom, "svg.chart-x")  # the parser lower-cases attribute names
    assert svg.attrs["viewbox"] == "0 0 200 100" and svg.attrs["aria-label"] == "x per bucket"
    (line,) = select(dom, "svg.chart-x g.axis line.threshold")
    assert line.attrs["data-value"] == "1200" and line.attrs["y1"] == "50"
    (dot,) = select(dom, "circle.point")
    assert dot.attrs["cy"] == "20.0" and dot.all_text() == "a < b & c"
    assert select(dom, "text.no-data")[0].all_text() == "no data"
    assert path_vertices("M1.0,2.0 L3.0,4.0") == [(1.0, 2.0), (3.0, 4.0)]
