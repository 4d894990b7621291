"""Issue #20, item 4: the SLO agent's whole decision loop through the public pipeline.

Every decision the live agent would issue — rollback, pause, rollout step, gate, promotion, expiry — comes
back with the exact command it publishes and its issue time, and (``apply_decisions``, the default) is fed
back into the ledger the way the registry folds the agent's own records: a plan walks its steps, a ledger
that refuses a step says so, a low-traffic pause happens once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from canary.config.presets import load_preset
from canary.control.records import VerifyControl
from canary.core.models import ControlCommand
from canary.pipeline.run import PipelineResult, Record, run_pipeline
from canary.pipeline.settings import PipelineSettings

T0 = 1_700_000_000_000
W = 5000
T = 1200.0
PRESETS = Path(__file__).resolve().parents[2] / "configs" / "presets"
PER_WINDOW = 300  # requests per 5 s window across both arms


def progressive_start() -> ControlCommand:
    """``canary start candidate_progressive``: the shipped preset's snapshot (plan 10 → 25 → 50 → 100 %, 2
    windows a step, promotion ≥ 30 s after the start), at the first step's weight."""
    preset = load_preset(PRESETS / "candidate_progressive.yaml")
    assert preset.rollout is not None
    return ControlCommand(
        "start-d1",
        "start",
        "d1",
        preset.to_dict(),
        preset.content_hash,
        {"metadata": {"name": "last_good"}},
        preset.rollout.steps[0].weight,
        None,
        None,
        "cli:test",
        T0 - 1000,
    )


def outcome(arm: str, off: int, ts: int, latency: float, recall: float, error: bool = False) -> bytes:
    return json.dumps(
        {
            "event_id": f"e:{arm}:{off}",
            "request_id": f"{arm}{off}",
            "ts": ts,
            "deployment_id": "d1",
            "config_name": "candidate_progressive" if arm == "candidate" else "last_good",
            "config_version": "1",
            "config_hash": "h",
            "arm": arm,
            "latency_ms": latency,
            "recall_at_10": 0.0 if error else recall,
            "result_count": 0 if error else 10,
            "error": "backend_error" if error else None,
            "router_id": "r",
        }
    ).encode()


def routed_traffic(
    windows: int, weights: dict[float, int], broken_from: float | None, seed: int = 3, per_window: int = PER_WINDOW
) -> list[Record]:
    """What the routers send while the plan walks: the candidate's share of each window is the weight in
    force at its start (``weights``: weight → when it took effect); its requests are every one slower than
    2 T from the moment a weight >= ``broken_from`` took effect (a candidate that holds at 10 and 25 % and
    breaks at 50 %), healthy (p95 0.5 T) before."""
    rng = np.random.default_rng(seed)
    breaks_at = min((t for w, t in weights.items() if broken_from is not None and w >= broken_from), default=None)
    records: list[Record] = []
    offsets = {0: 0}
    for i in range(windows):
        start = T0 + i * W
        weight = max(w for w, t in weights.items() if t <= start)
        n = round(per_window * weight)
        for j in range(n):
            ts = start + int((j + 0.5) * W / n)
            slow = breaks_at is not None and ts >= breaks_at
            latency = float(rng.uniform(2.2 * T, 3 * T)) if slow else float(np.exp(rng.normal(np.log(300.0), 0.3)))
            off = offsets[0]
            offsets[0] += 1
            value = outcome("candidate", off, ts, latency, float(rng.binomial(10, 0.6)) / 10)
            records.append(Record("search_results", 0, off, ts + 20, None, value))
    return records


def walk(windows: int, broken_from: float | None, **kw: Any) -> tuple[PipelineResult, dict[float, int]]:
    """Traffic that follows the weights the pipeline's own issued steps set: traffic before a step does not
    depend on it, so regenerating until the step times stop changing converges within a few rounds."""
    start = progressive_start()
    weights = {start.weight or 0.0: start.issued_at_ms}
    for _ in range(6):
        result = run_pipeline(
            routed_traffic(windows, weights, broken_from), commands=[start], horizon_ms=T0 + (windows + 2) * W, **kw
        )
        applied = {
            d.command.weight or 0.0: d.issued_at_ms or 0
            for d in result.issued
            if d.command is not None and d.command.type == "set_weight" and d.applied
        }
        new = {start.weight or 0.0: start.issued_at_ms, **applied}
        if new == weights:
            return result, weights
        weights = new
    raise AssertionError(f"the walk did not settle: {weights}")


def window_of(ms: int) -> int:
    return (ms - T0) // W


def test_a_plan_walks_10_25_50_and_rolls_back_at_50_when_the_candidate_breaks_only_there() -> None:
    result, weights = walk(40, broken_from=0.5)
    issued = result.issued
    steps = [d for d in issued if d.command is not None and d.command.type == "set_weight"]
    assert [(d.command_id, d.command.weight if d.command else None, d.applied) for d in steps] == [
        ("rollout-d1-step-1", 0.25, True),
        ("rollout-d1-step-2", 0.5, True),
    ]
    # Each step: 2 counting windows inside it, the command issued when the second one closed (end + 1 s
    # grace) and citing them; the step began at that issue time (the ledger's append time here).
    step_windows = [[int(w.rsplit("@", 1)[1]) for w in d.evidence["windows"]] for d in steps]
    for d, cited in zip(steps, step_windows, strict=True):
        assert d.issued_at_ms == d.window_end_ms + 1000 and d.command is not None
        assert d.command.issued_at_ms == d.issued_at_ms and d.command.issued_by == "slo-agent"
        assert len(cited) == 2 and d.window_start_ms == cited[-1]
    assert min(step_windows[1]) >= weights[0.25]  # the 25 % step's windows start inside it
    assert weights == {0.1: T0 - 1000, 0.25: steps[0].issued_at_ms, 0.5: steps[1].issued_at_ms}

    # Broken from the 50 % step on: rolled back there, its 2nd failing window, within 30 s of the step.
    [rollback] = [d for d in issued if d.type == "rollback"]
    at_50 = weights[0.5]
    assert rollback.command is not None and rollback.command.to_dict()["type"] == "rollback"
    assert (rollback.command_id, rollback.command.weight, rollback.applied) == ("rollback-d1", 0.0, True)
    assert rollback.reason.startswith("SLO violation: ")
    assert rollback.reason.endswith("failed for 2 consecutive buckets")
    assert rollback.window_start_ms >= at_50 - W and rollback.issued_at_ms is not None
    assert rollback.issued_at_ms - at_50 <= 30_000, rollback.issued_at_ms - at_50
    # Nothing fails before the 50 % step; nothing is issued after the rollback (the deployment ended).
    assert all(
        v.outcome != "fail"
        for w in result.windows
        if w.arm == "candidate" and w.window_end_ms <= at_50
        for v in w.verdicts
    )
    assert issued[-1] is rollback
    later = [d for d in result.decisions if d.window_start_ms > rollback.window_start_ms]
    assert later == [] or all(not d.issued for d in later)


def test_a_healthy_candidate_walks_the_whole_plan_and_is_promoted() -> None:
    result, weights = walk(30, broken_from=None)
    kinds = [(d.command.type if d.command else None, d.command_id) for d in result.issued]
    assert kinds == [
        ("set_weight", "rollout-d1-step-1"),
        ("set_weight", "rollout-d1-step-2"),
        ("set_weight", "rollout-d1-step-3"),
        ("promote", "rollout-d1-promote"),
    ]
    assert all(d.applied for d in result.issued)
    promote = result.issued[-1]
    # Held to min_total_duration_s (30 s) since the start, by the issue (append) time.
    assert promote.issued_at_ms is not None and promote.issued_at_ms - (T0 - 1000) >= 30_000
    assert sorted(weights) == [0.1, 0.25, 0.5, 1.0]


def test_without_feedback_the_plan_never_leaves_its_first_step() -> None:
    """apply_decisions=False: decisions against the given control topic alone (the pipeline before it fed
    itself): the first step is issued, never applied, so the tracker stays at 10 % for good."""
    start = progressive_start()
    records = routed_traffic(24, {0.1: start.issued_at_ms}, None)
    result = run_pipeline(records, commands=[start], horizon_ms=T0 + 26 * W, apply_decisions=False)
    assert [d.command_id for d in result.issued] == ["rollout-d1-step-1"]
    assert all(d.applied is None for d in result.decisions)
    again = [d for d in result.decisions if d.command_id == "rollout-d1-step-1" and not d.issued]
    assert again and all(d.note == "not issued: rollout-d1-step-1 was issued already" for d in again)


def test_a_step_the_ledger_refuses_is_shown_and_issued_again() -> None:
    """Windows shorter than the spec's 5 s cannot walk a plan (the ledger does not take the worker's word for
    a window under 5 s): every step is refused with the ledger's reason, and issued again on later windows."""
    start = progressive_start()
    records = routed_traffic(12, {0.1: start.issued_at_ms}, None, per_window=600)  # 30 per 2.5 s window
    result = run_pipeline(
        records,
        commands=[start],
        horizon_ms=T0 + 14 * W,
        settings=PipelineSettings(window_ms=2500),
    )
    attempts = [d for d in result.issued if d.command_id == "rollout-d1-step-1"]
    assert len(attempts) >= 2
    for d in attempts:
        assert d.applied is False and d.ledger_note is not None
        assert "refused, not the deployment's rollout plan (window_malformed: evidence.window_ms = 2500" in (
            d.ledger_note
        )
    assert not any(d.command_id == "rollout-d1-step-2" for d in result.decisions)


def test_a_manual_gate_pauses_once_and_an_operators_resume_passes_it() -> None:
    start = progressive_start()
    snapshot = json.loads(json.dumps(start.candidate_config))
    snapshot["rollout"]["steps"][0]["gate"] = "manual"
    gated = ControlCommand(
        start.command_id,
        start.type,
        start.deployment_id,
        snapshot,
        None,
        start.last_good_config,
        start.weight,
        None,
        None,
        start.issued_by,
        start.issued_at_ms,
    )
    records = routed_traffic(16, {0.1: start.issued_at_ms}, None)
    alone = run_pipeline(records, commands=[gated], horizon_ms=T0 + 18 * W)
    gates = [d for d in alone.issued if d.type == "gate"]
    assert [(d.command_id, d.command.type if d.command else None, d.applied) for d in gates] == [
        ("rollout-d1-gate-0", "pause", True)
    ]
    assert not any(d.type == "advance" and d.issued for d in alone.decisions)  # paused: the plan holds
    # An operator's resume 20 s later (on the control topic, folded at its time) passes the gate.
    gate_at = gates[0].issued_at_ms or 0
    resume = ControlCommand(
        "resume-1", "resume", "d1", None, None, None, None, "ok", None, "cli:test", gate_at + 20_000
    )
    resumed = run_pipeline(records, commands=[gated, resume], horizon_ms=T0 + 18 * W)
    steps = [d for d in resumed.issued if d.type == "advance"]
    assert steps and steps[0].command_id == "rollout-d1-step-1" and steps[0].applied
    assert (steps[0].issued_at_ms or 0) >= gate_at + 20_000  # on the first window that arrives once resumed


def low_traffic(windows: int, per_window: int) -> list[Record]:
    rng = np.random.default_rng(11)
    records = []
    for i in range(windows):
        for j in range(per_window):
            ts = T0 + i * W + int((j + 0.5) * W / per_window)
            off = len(records)
            value = outcome("candidate", off, ts, float(np.exp(rng.normal(np.log(300.0), 0.3))), 0.6)
            records.append(Record("search_results", 0, off, ts + 20, None, value))
    return records


def plain_start(slo: dict[str, Any] | None = None) -> ControlCommand:
    snapshot = {"metadata": {"name": "candidate_progressive", "version": "1.0.0"}, "slo": slo or {"p95_ms": T}}
    return ControlCommand(
        "start-d1", "start", "d1", snapshot, None, {"metadata": {"name": "lg"}}, 0.1, None, None, "t", T0 - 1000
    )


def test_a_low_traffic_canary_is_paused_exactly_once() -> None:
    records = low_traffic(40, 10)  # 2 requests/s: under min_samples (20) in every window
    result = run_pipeline(records, commands=[plain_start()], horizon_ms=T0 + 42 * W)
    pauses = [d for d in result.decisions if d.type == "pause"]
    issued = [d for d in pauses if d.issued]
    assert len(issued) == 1 and window_of(issued[0].window_start_ms) == 11
    [pause] = issued
    assert pause.command is not None and pause.command.type == "pause" and pause.applied
    assert pause.command.reason == "insufficient data: 12 windows, 10 samples per window"
    assert pause.issued_at_ms == pause.window_end_ms + 1000 == pause.command.issued_at_ms
    # The judge keeps counting on the given traffic and decides again; live, it is not issued again.
    assert len(pauses) > 1
    assert all(d.note == "not issued: the deployment is already paused" for d in pauses if not d.issued)
    # Without feedback the pipeline re-issued a pause every 12 windows (the bug this fixes).
    loose = run_pipeline(records, commands=[plain_start()], horizon_ms=T0 + 42 * W, apply_decisions=False)
    assert [window_of(d.window_start_ms) for d in loose.decisions if d.type == "pause" and d.issued] == [11, 23, 35]


def test_control_records_that_commands_replace_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    records = low_traffic(4, 30)
    control = [
        Record("canary_control", 0, 0, T0 - 1000, b"d1", json.dumps(plain_start().to_dict()).encode()),
        Record("canary_control", 0, 1, T0 + 3000, b"d1", b"{not json"),
    ]
    with caplog.at_level(logging.WARNING, logger="canary.pipeline"):
        result = run_pipeline(records + control, commands=[plain_start()], horizon_ms=T0 + 6 * W)
    [warning] = result.warnings
    assert warning.code == "control_records_ignored" and warning.count == 2
    assert "2 canary_control record(s) in the input were not used" in warning.message
    assert "1 valid command(s), 1 malformed" in warning.message
    assert any("control_records_ignored" in r.getMessage() or "were not used" in r.getMessage() for r in caplog.records)
    # The control records alone: used, no warning.
    lab = VerifyControl.insecure()  # an unsigned lab topic: verified without signature checks
    assert run_pipeline(records + control[:1], horizon_ms=T0 + 6 * W, verify_control=lab).warnings == []
    assert run_pipeline(records, commands=[plain_start()], horizon_ms=T0 + 6 * W).warnings == []


RULES_FILE = """\
slo:
  p95_ms: 1200
  min_samples: {min_samples}
  inconclusive_limit: 4
  metrics:
    - {{name: timeouts, aggregation: rate}}
  rules:
    - {{name: timeouts, metric: timeouts, operator: le, threshold: 0.05}}
"""


def metric_traffic(windows: int, per_window: int, timeout_share: float) -> list[Record]:
    """Healthy latency; a share of requests carries the custom metric ``timeouts`` = 1 (the rest 0)."""
    rng = np.random.default_rng(5)
    records = []
    for i in range(windows):
        for j in range(per_window):
            ts = T0 + i * W + int((j + 0.5) * W / per_window)
            off = len(records)
            value = json.loads(outcome("candidate", off, ts, float(np.exp(rng.normal(np.log(300.0), 0.3))), 0.6))
            value["metrics"] = {"timeouts": 1.0 if rng.random() < timeout_share else 0.0}
            records.append(Record("search_results", 0, off, ts + 20, None, json.dumps(value).encode()))
    return records


@pytest.mark.parametrize("min_samples", [20, 5])
def test_a_rules_file_backtest_keeps_the_low_traffic_policy(tmp_path: Path, min_samples: int) -> None:
    from canary.config.rules import load_policy_file
    from canary.core.slo import SLOPolicy

    path = tmp_path / "rules.yaml"
    path.write_text(RULES_FILE.format(min_samples=min_samples))
    policy = load_policy_file(path)
    records = metric_traffic(20, 10, 0.0)  # 10 requests a window
    result = run_pipeline(records, commands=[plain_start()], horizon_ms=T0 + 22 * W, rules_override=policy)
    pauses = [window_of(d.window_start_ms) for d in result.issued if d.type == "pause"]
    if min_samples == 20:
        assert pauses == [3]  # the file's inconclusive_limit: 4 starved windows, not the default 12
        rules_only = run_pipeline(
            records, commands=[plain_start()], horizon_ms=T0 + 22 * W, rules_override=SLOPolicy(policy.rules)
        )
        assert [window_of(d.window_start_ms) for d in rules_only.issued if d.type == "pause"] == [11]
    else:
        assert pauses == []  # the file's min_samples: 10 requests a window are enough to judge
    assert result.recomputation.policies["d1"]["inconclusive_limit"] == 4


def test_a_rules_file_backtest_judges_its_declared_custom_metric(tmp_path: Path) -> None:
    from canary.config.rules import load_policy_file

    path = tmp_path / "rules.yaml"
    path.write_text(RULES_FILE.format(min_samples=20))
    records = metric_traffic(12, 30, 0.4)  # 40 % of requests time out, against a 5 % rule
    result = run_pipeline(
        records, commands=[plain_start()], horizon_ms=T0 + 14 * W, rules_override=load_policy_file(path)
    )
    [rollback] = [d for d in result.issued if d.type == "rollback"]
    assert rollback.rule == "timeouts" and window_of(rollback.window_start_ms) == 1
    verdict = next(v for w in result.windows if w.arm == "candidate" for v in w.verdicts if v.rule == "timeouts")
    assert verdict.evidence is not None and verdict.evidence["custom_metric"] == "timeouts"
    # The preset the deployment started with has no such metric: its own policy never judges it.
    own = run_pipeline(records, commands=[plain_start()], horizon_ms=T0 + 14 * W)
    assert not any(v.rule == "timeouts" for w in own.windows for v in w.verdicts)


def test_a_shared_shock_pause_and_its_recovery_go_round_the_loop() -> None:
    """Generic over decision types: the judge's shock pause and recovery resume (issue #20, item 3) are
    published, folded, and the resume finds the deployment paused by the shock — only with feedback."""
    from tests.pipeline.test_run import Traffic, start

    t = Traffic(seed=3)
    for i in range(14):
        shock = 2.5 if i in (4, 5) else 1.0  # the backend slows down for both arms for two windows
        t.window(i, 270, p95=0.3 * T * shock, arm="last_good", partition=1)
        t.window(i, 30, p95=0.6 * T * shock)
    looped = run_pipeline(t.records, commands=[start()], horizon_ms=T0 + 16 * W)
    assert [
        (window_of(d.window_start_ms), d.type, d.command.type if d.command else None, d.applied) for d in looped.issued
    ] == [(4, "shock", "pause", True), (7, "recover", "resume", True)]
    assert looped.issued[1].command_id.startswith("resume-shared-d1-")
    observed = run_pipeline(t.records, commands=[start()], horizon_ms=T0 + 16 * W, apply_decisions=False)
    [recover] = [d for d in observed.decisions if d.type == "recover"]
    assert not recover.issued and "not paused by a shared shock" in recover.note
