"""The dashboard's page: a shell of panel slots filled with the current fragments, so the first paint already
shows everything; ``/static/dashboard.js`` then keeps the slots current from the server-sent events."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from canary.dashboard.views import PANEL_IDS

ACTIONS_HTML = """
<section class="card panel panel-actions" id="actions">
  <h2>Operator actions</h2>
  <p class="sub">signed with the operator key of the dashboard host, like <code>canary stop</code>;
  needs the operator token (<span class="mono">Authorization: Bearer</span>, kept in this tab only)</p>
  <form id="unlock-form" class="row" autocomplete="off">
    <input id="token" type="password" autocomplete="off" placeholder="operator token" aria-label="operator token">
    <button type="submit">Unlock</button>
    <button type="button" id="lock" hidden>Lock</button>
  </form>
  <div id="action-buttons" class="row" aria-disabled="true">
    <button type="button" data-action="pause" disabled>Pause</button>
    <button type="button" data-action="resume" disabled>Resume</button>
    <input id="weight-input" type="number" min="0.01" max="1" step="0.01" placeholder="0.20" aria-label="weight"
      disabled>
    <button type="button" data-action="weight" disabled>Set weight</button>
    <button type="button" data-action="promote" class="good" disabled>Promote</button>
    <button type="button" data-action="rollback" class="bad" disabled>Roll back</button>
  </div>
  <p id="action-result" class="sub" aria-live="polite">read-only: enter the token to act</p>
</section>
"""

REPLAY_HTML = """
<section class="card panel panel-replay" id="replay">
  <h2>Replay or backtest a span</h2>
  <p class="sub">recomputes the span's windows and decisions from the topics (read-only: nothing is sent);
  with rules, a backtest of other SLO rules on the same traffic</p>
  <form id="replay-form" autocomplete="off">
    <div class="row">
      <label>from <input name="from" placeholder="2026-01-01T10:00:00Z or epoch ms" required></label>
      <label>to <input name="to" placeholder="ISO 8601 or epoch ms" required></label>
      <label>deployment <input name="deployment_id" placeholder="(all)"></label>
      <button type="button" id="replay-fill">Shown deployment's span</button>
    </div>
    <label class="block">rules (YAML, optional: an <code>slo:</code> section)
      <textarea name="rules" rows="3" placeholder="slo: {p95_ms: 800, consecutive_buckets: 3}"></textarea></label>
    <button type="submit">Run replay</button> <span id="replay-status" class="sub" aria-live="polite"></span>
  </form>
  <iframe id="replay-result" title="replay result" sandbox="" hidden></iframe>
</section>
"""


def render_page(panels: dict[str, str], meta: dict[str, Any], title: str) -> str:
    def slot(panel_id: str) -> str:
        return f'<div id="{panel_id}" class="slot slot-{panel_id}">{panels.get(panel_id, "")}</div>'

    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>"
        '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/assets/report.css">'
        '<link rel="stylesheet" href="/static/dashboard.css">'
        '<script src="/static/dashboard.js" defer></script>'
        "</head><body>"
        '<header class="topbar"><div class="brand">canary <span>live dashboard</span></div>'
        f'<div class="topbar-meta mono">{escape(title)}</div>'
        '<div id="connection" class="connection connecting" role="status">connecting…</div></header>'
        f"{slot('moment')}"
        '<main class="dash">'
        '<div class="col-main">'
        f"{slot('running')}{slot('deployment')}{slot('charts')}"
        "</div>"
        '<aside class="col-side">'
        f"{slot('plan')}{slot('verdicts')}{ACTIONS_HTML}{slot('routers')}"
        "</aside>"
        '<div class="col-wide">'
        f"{slot('commands')}{slot('timeline')}{slot('audit')}{slot('history')}{REPLAY_HTML}"
        "</div>"
        "</main>"
        f'<script type="application/json" id="initial-meta">{_json_for_html(meta)}</script>'
        "</body></html>\n"
    )


def _json_for_html(value: Any) -> str:
    # "</script>" inside a JSON string would end the element; escaping "<" keeps it inert.
    return json.dumps(value).replace("<", "\\u003c")


__all__ = ["PANEL_IDS", "render_page"]
