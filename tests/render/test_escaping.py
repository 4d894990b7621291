"""A hostile string — a config name, a reason, an operator or router id with ``<script>``, quotes and ``&`` —
reaches the report, the replay page and the dashboard as text, never as markup: the one Jinja2 environment
escapes it (autoescape) in element text and in attribute values alike."""

from __future__ import annotations

from typing import Any

import msgspec.structs

from canary.core.models import RouterState
from canary.dashboard.feed import Changes
from canary.dashboard.page import render_page
from canary.dashboard.views import meta, render_panels
from canary.render import environment
from canary.replay.html import render_replay_html
from canary.replay.postmortem import run_replay
from canary.reports.html import render_report
from canary.reports.model import build_report
from tests.dashboard.test_state import _append, _signed, _state
from tests.replay.test_postmortem import _recording, _span
from tests.reports.dom import Node, parse, select
from tests.reports.sample import build

T0 = 1_700_000_000_000
HOSTILE = "cfg<script>alert(\"x\")</script> & 'q' &amp;"


def _hostile_scenario(*, name: bool = True) -> Any:
    """The sample rollback with a hostile start operator and rollback reason and (``name``) a hostile config
    name and description — a snapshot the live path refuses (invalid preset name, content hash)."""
    sc = build(T0, "canary_h")
    start = sc.commands[0]
    snapshot = dict(start.candidate_config or {})
    if name:
        snapshot["metadata"] = {**snapshot.get("metadata", {}), "name": HOSTILE, "description": HOSTILE}
    sc.commands[0] = msgspec.structs.replace(start, candidate_config=snapshot, issued_by=HOSTILE)
    sc.commands[-1] = msgspec.structs.replace(sc.commands[-1], reason=HOSTILE)
    return sc


def _assert_inert(page: str) -> Node:
    """No hostile markup survived, and the text reads back exactly as it was sent."""
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#39;q&#39; &amp;amp;" in page
    dom = parse(page)
    assert not [n for n in select(dom, "script") if "alert" in n.all_text()]
    assert HOSTILE in dom.all_text()
    return dom


def test_the_environment_escapes_and_refuses_undefined_names() -> None:
    env = environment()
    assert env.autoescape is True
    assert env.from_string("{{ x }}").render(x=HOSTILE).startswith("cfg&lt;script&gt;")
    try:
        env.from_string("{{ missing }}").render()
    except Exception as exc:  # jinja2.UndefinedError: a typo in a template fails, it does not print ""
        assert "missing" in str(exc)
    else:
        raise AssertionError("an undefined name rendered")


def test_report_escapes_a_hostile_config_name_reason_and_operator() -> None:
    sc = _hostile_scenario()
    report = build_report(commands=sc.command_dicts, windows=sc.windows, now_ms=T0 + 600_000)
    assert report.candidate_name == HOSTILE
    dom = _assert_inert(render_report(report))
    assert select(dom, "p.description")[0].attrs["title"] == HOSTILE  # an attribute value, quotes and all
    assert HOSTILE in select(dom, "div.banner")[0].all_text()
    assert HOSTILE in select(dom, "svg.chart-p95 g.end-marker")[0].all_text()  # SVG text too


def test_replay_page_escapes_hostile_names_reasons_and_links() -> None:
    records, commands, live, _ = _recording()
    report = run_replay(_span(records, commands, live))
    dep = report["deployments"][0]
    dep["candidate_config"] = HOSTILE
    report["notes"].append(HOSTILE)
    for w in report["windows"]:
        for v in w.get("verdicts", []):
            v["reason"] = HOSTILE
    link = 'x.html" onload="alert(1)'
    dom = _assert_inert(render_replay_html(report, {dep["deployment_id"]: link}))
    assert [a.attrs["href"] for a in select(dom, "a")] == [link]
    assert all(s.attrs["title"] == HOSTILE for s in select(dom, "td span") if "title" in s.attrs)


def test_dashboard_escapes_hostile_commands_routers_audit_and_title() -> None:
    sc = _hostile_scenario(name=False)
    state = _state()
    refused = _hostile_scenario().commands[0]  # verified, then refused: its reason quotes the hostile name
    _append(state, _signed(msgspec.structs.replace(refused, deployment_id="canary_r")), 0, T0)
    for offset, cmd in enumerate(sc.commands, start=1):
        if cmd.type == "rollback":
            for w in sc.windows:
                state.add_window(w, Changes(), judged_at_ms=w.emitted_at_ms + 5)
        _append(state, _signed(cmd), offset, cmd.issued_at_ms + 20)
    router = RouterState(
        router_id=HOSTILE,
        deployment_id="canary_h",
        status="rolled_back",
        active_config="last_good",
        last_good="last_good",
        candidate_config=None,
        weight=0.0,
        answers_command_id=None,
        applied_at_ms=T0 + 119_000,
        seq=1,
        requests_stalled=HOSTILE,
    )
    state.add_router_state(router, Changes())
    state.audit.append({"timestamp": "2023-11-14T22:13:20.000Z", "event_type": "rollback", "user_id": HOSTILE})
    panels = render_panels(state, now=T0 + 120_000)
    assert "invalid_preset" in panels["timeline"]
    for name in ("moment", "timeline", "history", "routers", "audit", "deployment"):
        assert panels[name], name
        _assert_inert(panels[name])
    assert select(parse(panels["routers"]), "tr.router")[0].attrs["data-router-id"] == HOSTILE
    page = render_page(panels, {**meta(state), "note": "</script><b>bold</b>"}, HOSTILE)
    dom = _assert_inert(page)
    (initial,) = select(dom, "script")[1:]  # the page's own script, then the inert JSON
    assert "</script>" not in initial.all_text() and "\\u003c/script>" in initial.all_text()
