"""The post-mortem document, live comparison, backtest and the CLI's input checks — without Kafka."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from canary.cli.main import exit_code
from canary.cli.replay import register
from canary.core.models import ControlCommand, WindowResult
from canary.core.slo import SLORule
from canary.errors import ConfigError
from canary.replay.output import write_report
from canary.replay.postmortem import run_replay
from canary.replay.span import SpanData
from canary.settings import Settings
from tests.replay.helpers import T0, Record, Traffic, live_worker, start

W = 5000
SLOW = [1500.0] * 19 + [100.0]
FAST = [100.0, 150.0, 200.0]


def _recording(
    *, with_other: bool = True, aborted_other: bool = False
) -> tuple[list[Record], list[ControlCommand], list[WindowResult], list[ControlCommand]]:
    t = Traffic.new()
    for i, lat in enumerate([FAST, SLOW, SLOW]):
        t.steady(0, T0 + i * W, T0 + (i + 1) * W, 100, latency=lat, dep="dep-a", config="slow")
    t.steady(1, T0, T0 + 3 * W, 50, dep="dep-a", config="last_good", arm="last_good")
    t.steady(2, T0 + 3 * W, T0 + 6 * W, 100, latency=FAST, dep="dep-b", config="fast")
    commands = [start("dep-a", "slow", at=T0 - 100)]
    if with_other:
        commands.append(start("dep-b", "fast", at=T0 + 3 * W))
    live, rollbacks = live_worker(t.records, list(commands), tick_until_ms=T0 + 8 * W)
    # The live agent's rollback ends dep-a before dep-b starts (so dep-b's start is accepted, and its
    # policy known, only with the rollback on the control topic first).
    commands.insert(1, rollbacks[0])
    if with_other:
        live, _ = live_worker(t.records, list(commands), tick_until_ms=T0 + 8 * W)
    return t.records, commands, live, rollbacks


def _span(records: list[Record], commands: list[ControlCommand], live: list[WindowResult], **kw: Any) -> SpanData:
    return SpanData(
        from_ms=kw.get("from_ms", T0),
        to_ms=kw.get("to_ms", T0 + 6 * W),
        read_from_ms=T0 - 6000,
        read_to_ms=T0 + 7 * W,
        horizon_ms=kw.get("horizon_ms", T0 + 8 * W),
        records=records,
        commands=commands,
        live_windows=live,
    )


def test_replay_agrees_with_live_and_names_the_triggering_window() -> None:
    records, commands, live, rollbacks = _recording()
    report = run_replay(_span(records, commands, live))
    assert report["differences"] == []
    assert report["live"]["windows_identical"] == report["live"]["windows"] == len(report["windows"])
    [decision] = report["decisions"]
    assert decision["deployment_id"] == "dep-a" and decision["issued"]
    assert decision["triggering_window"] == rollbacks[0].evidence["triggering_window"]  # type: ignore[index]
    assert decision["triggering_window"] == f"dep-a|slow|candidate@{T0 + 2 * W}"
    assert {d["deployment_id"] for d in report["deployments"]} == {"dep-a", "dep-b"}
    verdicts = [w["verdicts"] for w in report["windows"] if w["arm"] == "candidate"]
    assert all(v for v in verdicts)
    assert any("live: rollback at" in line for line in report["summary"])
    json.dumps(report)  # JSON-ready


def test_deployment_filter() -> None:
    records, commands, live, _ = _recording()
    report = run_replay(_span(records, commands, live), deployment_id="dep-b")
    assert {w["deployment_id"] for w in report["windows"]} == {"dep-b"}
    assert report["decisions"] == [] and report["differences"] == []
    assert [d["deployment_id"] for d in report["deployments"]] == ["dep-b"]


def test_differences_are_listed_with_explanations() -> None:
    records, commands, live, _ = _recording()
    tampered = [w for w in live if not (w.arm == "candidate" and w.window_start_ms == T0)]
    first = next(w for w in live if w.arm == "last_good")
    tampered = [w if w is not first else WindowResult.from_dict({**w.to_dict(), "p95_ms": 1.0}) for w in tampered]
    report = run_replay(_span(records, commands, tampered), deployment_id="dep-a")
    kinds = sorted((d["kind"], d["field"]) for d in report["differences"])
    assert kinds == [("window_field", "p95_ms"), ("window_missing_in_live", None)]
    assert all(d["explanation"] for d in report["differences"])


def test_live_decision_missing_is_a_difference() -> None:
    records, commands, live, _ = _recording()
    without = [c for c in commands if c.issued_by != "slo-agent"]
    report = run_replay(_span(records, without, live), deployment_id="dep-a")
    [diff] = report["differences"]
    assert diff["kind"] == "decision" and diff["live"] == "no rollback"


def test_backtest_shows_the_changed_decision() -> None:
    records, commands, live, _ = _recording()
    loose = [SLORule("p95_ms", "p95_ms", "le", 5000)]
    report = run_replay(_span(records, commands, live), rules_override=loose, rules_label="loose.yaml")
    bt = report["backtest"]
    assert bt["decisions"] == []
    change = next(c for c in bt["changes"] if c["deployment_id"] == "dep-a")
    assert change["changed"] and change["backtest"] == "no rollback"
    assert change["summary"].startswith("dep-a: live rules: rollback at window dep-a|slow|candidate@")
    assert "with rules loose.yaml: no rollback" in change["summary"]
    unchanged = next(c for c in bt["changes"] if c["deployment_id"] == "dep-b")
    assert not unchanged["changed"]
    assert report["differences"] == []  # live comparison still uses the live rules

    # last_good (100 ms) meets 120 ms, so breaking it is the candidate's own doing (were last_good slower
    # too, the judge would call it a shock both arms share, not the candidate's failure).
    strict = [SLORule("p95_ms", "p95_ms", "le", 120, consecutive_buckets=1)]
    report = run_replay(_span(records, commands, live), rules_override=strict, rules_label="strict.yaml")
    change = next(c for c in report["backtest"]["changes"] if c["deployment_id"] == "dep-a")
    assert change["changed"] and f"@{T0}" in change["backtest"]  # now the very first window rolls back


def test_span_without_traffic() -> None:
    records, commands, live, _ = _recording()
    report = run_replay(_span(records, commands, live, from_ms=T0 + 20 * W, to_ms=T0 + 30 * W))
    assert report["empty"] and report["windows"] == [] and report["decisions"] == []
    assert report["differences"] == []
    assert any("no traffic" in n.lower() for n in report["notes"])
    assert "NO TRAFFIC in this span: empty result" in report["summary"]
    report = run_replay(_span([], commands, []))
    assert report["empty"] and any("nothing to replay" in n for n in report["notes"])


def test_write_report_json_and_html(tmp_path: Path) -> None:
    records, commands, live, _ = _recording()
    report = run_replay(
        _span(records, commands, live), rules_override=[SLORule("p95_ms", "p95_ms", "le", 5000)], rules_label="x"
    )
    json_path, html_path = write_report(report, tmp_path / "out")
    assert json.loads(json_path.read_text())["decisions"] == report["decisions"]
    page = html_path.read_text()
    assert page.count("<svg") == 4  # p95 and recall charts for dep-a and dep-b
    assert "replay rollback (p95_ms)" in page and "live rollback (p95_ms)" in page
    assert "backtest 5000" in page and "<script" not in page
    # One standard deployment page (canary.reports) per deployment, built from the replayed windows.
    pages = report["report_files"]["deployment_pages"]
    assert set(pages) == {"dep-a", "dep-b"}
    dep_page = Path(pages["dep-a"]).read_text()
    assert 'class="chart-p95' in dep_page or "chart-p95" in dep_page
    assert "Replay decision: rollback at window dep-a|slow|candidate@" in dep_page
    assert Path(pages["dep-a"]).name in page  # linked from the overview


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="canary")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["replay", "--from", "yesterday", "--to", "2024-01-01T00:00:00Z"], "--from 'yesterday'"),
        (["replay", "--from", "2024-01-01T00:00:00Z", "--to", "2023-12-31T23:00:00Z"], "--to must be after --from"),
        (["replay", "--from", "0", "--to", "1000", "--rules", "/nonexistent/r.yaml"], "r.yaml: rules file not found"),
    ],
)
def test_cli_rejects_bad_input_before_touching_kafka(argv: list[str], fragment: str) -> None:
    args = _parse(argv)
    settings = Settings(bootstrap_servers="127.0.0.1:1")  # nothing listens there
    with pytest.raises(ConfigError) as err:
        args.handler(args, settings)
    assert fragment in str(err.value) and exit_code(err.value) == 2


def test_cli_options() -> None:
    args = _parse(["replay", "--from", "1", "--to", "2", "--deployment", "d", "--rules", "r.yaml", "--json"])
    assert (args.from_time, args.to_time, args.deployment, args.rules, args.json) == ("1", "2", "d", "r.yaml", True)
    assert args.output is None and args.window_ms == 5000 and args.grace_ms == 1000


def test_replay_issues_its_own_commands_in_place_of_the_live_agents() -> None:
    """The replayed agent's loop feeds its own commands back; the live agent's recorded ones are set aside
    for the comparison (and said so), and each deployment lists every command the replay issues."""
    records, commands, live, rollbacks = _recording()
    report = run_replay(_span(records, commands, live))
    assert report["apply_decisions"] is True and report["differences"] == []
    assert any("set aside" in n and "rollback-dep-a" in n for n in report["notes"])
    dep_a = next(d for d in report["deployments"] if d["deployment_id"] == "dep-a")
    [issued] = dep_a["issued"]
    assert issued["command"]["type"] == "rollback" and issued["command"]["command_id"] == "rollback-dep-a"
    assert issued["applied"] is True and issued["issued_at_ms"] == rollbacks[0].issued_at_ms
    assert dep_a["policy"]["inconclusive_limit"] == 12
    observed = run_replay(_span(records, commands, live), apply_decisions=False)
    assert observed["differences"] == [] and not any("set aside" in n for n in observed["notes"])


def test_backtest_with_a_whole_policy() -> None:
    from canary.core.slo import policy_from_slo_section

    records, commands, live, _ = _recording()
    policy = policy_from_slo_section({"p95_ms": 5000, "inconclusive_limit": 3, "min_samples": 5})
    report = run_replay(_span(records, commands, live), rules_override=policy, rules_label="policy.yaml")
    bt = report["backtest"]
    assert bt["policy"]["inconclusive_limit"] == 3 and bt["policy"]["min_samples"] == 5
    assert [r["name"] for r in bt["rules"]] == ["p95_ms", "error_rate"]


def test_an_agent_command_the_replay_does_not_issue_is_a_difference() -> None:
    records, commands, live, _ = _recording()
    pause = ControlCommand(
        "pause-insufficient-dep-a-1700000000000", "pause", "dep-a", None, None, None, None, "insufficient data",
        {"triggering_window": f"dep-a|slow|candidate@{T0}"}, "slo-agent", T0 + W + 1000,
    )  # fmt: skip
    report = run_replay(_span(records, [*commands[:1], pause, *commands[1:]], live), deployment_id="dep-a")
    [diff] = report["differences"]
    assert (diff["kind"], diff["subject"], diff["field"]) == ("decision", pause.command_id, "command")
    assert diff["live"] == f"pause at dep-a|slow|candidate@{T0}" and diff["replay"] is None
    assert report["live"]["commands"][0]["command_id"] == pause.command_id
