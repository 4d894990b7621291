"""The dashboard's page: a shell of panel slots filled with the current fragments, so the first paint already
shows everything; ``/static/dashboard.js`` then keeps the slots current from the server-sent events.
The shell is the template ``canary/render/templates/dashboard/page.html.j2``."""

from __future__ import annotations

import json
from typing import Any

from markupsafe import Markup

from canary.dashboard.views import PANEL_IDS
from canary.render import render


def render_page(panels: dict[str, str], meta: dict[str, Any], title: str) -> str:
    """``panels``: the fragments the panel templates rendered (already escaped), by slot id."""
    return (
        render(
            "dashboard/page.html.j2",
            panels={k: Markup(v) for k, v in panels.items()},
            meta_json=Markup(_json_for_html(meta)),
            title=title,
        )
        + "\n"
    )


def _json_for_html(value: Any) -> str:
    # "</script>" inside a JSON string would end the element; escaping "<" keeps it inert.
    return json.dumps(value).replace("<", "\\u003c")


__all__ = ["PANEL_IDS", "render_page"]
