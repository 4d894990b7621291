"""The one HTML/SVG renderer of canary: chart geometry as plain data (:mod:`canary.render.charts`), value
formatting (:mod:`canary.render.format`) and one Jinja2 environment (:mod:`canary.render.env`) whose
templates (``templates/``) draw the report (``report/``), the replay page (``replay/``) and the live
dashboard (``dashboard/``), all through the same chart macros (``kit/charts.svg.j2``).

Autoescape is on for every template and undefined names fail loudly, so no tool builds markup by hand:
a tool turns its model into view data and renders a template.
"""

from canary.render.env import css, environment, macros, render

__all__ = ["css", "environment", "macros", "render"]
