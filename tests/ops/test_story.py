"""The demo's console story (devtools.story), Kafka-free: every judged window before the decision it led
to, whatever order the two topics deliver them in; every decision with its reason; lines that fit 100
columns with their time stamp; the judge's shared shocks, pauses and recoveries, and a plan's steps."""

from __future__ import annotations

import dataclasses

import msgspec.structs

from canary.core.judge import Judgement
from canary.core.models import ControlCommand, RuleVerdict, WindowResult
from canary.core.slo import Decision
from devtools.story import HOLD_S, LEGEND, STAMP, WIDTH, Story, applied_commands, wrap
from tests.reports.sample import BUCKET_MS, command, window

T0 = 1_700_000_000_000
DEP = "canary_1700000000_0001"
P95_FAIL = {
    "method": "sequential",
    "confidence": 0.99,
    "n": 93,
    "exceedances": 93,
    "rate_threshold": 0.05,
    "rate_lower_bound": 0.93,
    "path": "pooled",
}


def _verdict(rule: str, outcome: str, evidence: dict[str, object] | None = None, reason: str = "") -> RuleVerdict:
    metric = {"p95_ms": "p95_ms", "recall_at_10": "recall_at_10", "error_rate": "error_rate"}[rule]
    op, threshold = {"p95_ms": ("le", 1200.0), "recall_at_10": ("ge", 0.3), "error_rate": ("le", 0.01)}[rule]
    return RuleVerdict(rule, metric, op, threshold, None, outcome, reason, evidence)  # type: ignore[arg-type]


def _judged(
    slot: int, verdicts: list[RuleVerdict], streak: int = 0, decision: Decision | None = None, count: int = 50
) -> Judgement:
    w = window(DEP, "candidate_slow", "candidate", T0 + slot * BUCKET_MS, p95=3100.0, count=count, recall=1.0)
    w = msgspec.structs.replace(w, verdicts=tuple(verdicts))
    return Judgement(w, {"p95_ms": streak, "recall_at_10": 0, "error_rate": 0}, 0, decision)


def _last_good(slot: int) -> WindowResult:
    return window(DEP, "last_good", "last_good", T0 + slot * BUCKET_MS, p95=150.0, count=540, recall=0.72)


def _failing(slot: int, streak: int, decision: Decision | None = None) -> Judgement:
    verdicts = [
        _verdict("p95_ms", "fail", P95_FAIL, "exceedances=93/93: lower bound 0.9300 beyond 0.0500 at 0.99"),
        _verdict("recall_at_10", "pass"),
        _verdict("error_rate", "inconclusive"),
    ]
    return _judged(slot, verdicts, streak, decision)


def _rollback(trigger: Judgement) -> tuple[Decision, ControlCommand]:
    reason = "SLO violation: p95_ms failed for 2 consecutive buckets"
    decision = Decision(DEP, "p95_ms", reason, {}, trigger.window_id, f"rollback-{DEP}", "rollback")
    cmd = command(
        "rollback",
        DEP,
        trigger.window.window_end_ms + 1_050,
        command_id=f"rollback-{DEP}",
        reason=reason,
        evidence={"rule": "p95_ms", "triggering_window": trigger.window_id},
        issued_by="slo-agent",
    )
    return decision, cmd


def _start() -> ControlCommand:
    return command("start", DEP, T0 - 1000, weight=0.1, issued_by="cli:alice")


def _flat(lines: list[str]) -> str:
    """The lines as one text, wrapped lines joined again."""
    return " ".join(line.strip() for line in lines)


def _fits(lines: list[str]) -> None:
    assert lines and all(len(line) <= WIDTH - STAMP for line in lines), [x for x in lines if len(x) > WIDTH - STAMP]


def test_the_second_failing_bucket_comes_before_the_rollback_read_first() -> None:
    story = Story(DEP, {"p95_ms": 2})
    first = _failing(1, 1)
    second_plain = _failing(2, 2)
    decision, rollback = _rollback(second_plain)
    second = dataclasses.replace(second_plain, decision=decision)
    lines: list[str] = []
    # The control topic is read first: the rollback is already there, its triggering bucket not yet.
    lines += story.commands([_start(), rollback], now=0.0)
    assert lines == [] and story.ended is None  # held for its window
    for item in (_last_good(1), first, _last_good(2), second):
        lines += story.window(item)
    _fits(lines)
    text = "\n".join(lines)
    assert text.index("FAIL 1/2") < text.index("FAIL 2/2") < text.index("decides ROLLBACK") < text.index("ROLLED BACK")
    assert lines[-2:] == wrap("ROLLED BACK automatically by the SLO agent: " + decision.reason)
    assert "p95_ms FAIL (pooled since the start): 93/93 requests over 1200 ms, so at least 93.0% are" in _flat(lines)
    assert story.ended == rollback
    # What comes after the end (in-flight requests finishing late) is not part of the story.
    assert story.window(_failing(3, 3)) == [] and story.window(_last_good(3)) == []


def test_the_rollback_read_after_its_bucket_and_a_bucket_that_never_comes() -> None:
    story = Story(DEP, {"p95_ms": 2})
    second = _failing(2, 2)
    _, rollback = _rollback(second)
    lines = story.window(second)
    assert not any("ROLLED BACK" in x for x in lines)
    assert story.commands([_start(), rollback], now=0.0)[0].startswith("ROLLED BACK automatically")
    # A command whose bucket is never told is told anyway after HOLD_S, so the story cannot hang.
    other = Story(DEP, {"p95_ms": 2})
    assert other.commands([rollback], now=100.0) == []
    assert other.commands([rollback], now=100.0 + HOLD_S)[0].startswith("ROLLED BACK")


def test_shared_shock_pause_and_recovery_are_told_with_their_reasons() -> None:
    story = Story(DEP, {"p95_ms": 2})
    shared_reason = (
        "window_rate=0.4000 breaks it, but last_good is hit too in this window (last_good p95 2900 ms vs 150 ms "
        "before, 8.5x its own recent windows): a shock both arms share, not proven the candidate's fault"
    )
    shock = Decision(DEP, "p95_ms", "shared shock: last_good breaks p95_ms too", {}, "w", f"shock-{DEP}", "shock")
    judged = _judged(4, [_verdict("p95_ms", "shared", {"path": "detector"}, shared_reason)], decision=shock)
    shock = msgspec.structs.replace(shock, window_id=judged.window_id)
    judged = dataclasses.replace(judged, decision=shock)
    lines = story.window(judged)
    _fits(lines)
    text = _flat(lines)
    assert "p95_ms shared" in text and "a shock both arms share" in text
    assert "→ the SLO agent decides SHOCK: shared shock: last_good breaks p95_ms too" in text
    pause = command(
        "pause",
        DEP,
        T0 + 30_000,
        command_id=f"shock-{DEP}",
        evidence={"triggering_window": judged.window_id},
        issued_by="slo-agent",
        reason=shock.reason,
    )
    assert story.commands([pause], now=0.0) == ["  PAUSED by slo-agent (decided above)"]
    recover = Decision(DEP, "p95_ms", "last_good healthy again for 2 windows", {}, "x", f"resume-{DEP}", "recover")
    healthy = _judged(7, [_verdict("p95_ms", "inconclusive")], count=0, decision=recover)
    lines = story.window(
        dataclasses.replace(healthy, decision=msgspec.structs.replace(recover, window_id=healthy.window_id))
    )
    assert any("decides RECOVER: last_good healthy again" in x for x in lines)
    assert story.ended is None


def test_a_detector_failure_says_so_and_plan_steps_and_operator_commands_show_their_reasons() -> None:
    story = Story(DEP, {"p95_ms": 2})
    detector = _verdict(
        "p95_ms",
        "fail",
        {"path": "detector"},
        "window_rate=0.3000: changed in a recent window (detector log e 9.1 of 6.2)",
    )
    lines = story.window(_judged(1, [detector], streak=1))
    assert "p95_ms FAIL, change detector: window_rate=0.3000: changed in a recent window" in _flat(lines)
    step = command(
        "set_weight",
        DEP,
        T0 + 16_000,
        weight=0.25,
        command_id=f"rollout-{DEP}-step-1",
        issued_by="slo-agent",
        reason="rollout: step 1 of 4 (weight 0.1) passed 2 windows in 14 s; weight → 0.25",
        evidence={"triggering_window": _judged(1, []).window_id},
    )
    manual = command("set_weight", DEP, T0 + 17_000, weight=0.3, issued_by="cli:bob", reason="more traffic")
    lines = story.commands([step, manual], now=0.0)
    assert lines[0].startswith("  WEIGHT → 25% by slo-agent: rollout: step 1 of 4") and "more traffic" in lines[-1]
    promote = command(
        "promote",
        DEP,
        T0 + 61_000,
        command_id=f"rollout-{DEP}-promote",
        issued_by="slo-agent",
        reason="rollout: step 4 of 4 (weight 1) passed 2 windows in 14 s; 59 s since start; promote",
    )
    assert story.commands([promote], now=0.0)[0].startswith("PROMOTED automatically by the SLO agent: rollout:")
    manual_end = Story(DEP).command_lines(command("promote", DEP, T0, issued_by="cli:alice", reason="looks good"))
    assert manual_end == ["PROMOTED by cli:alice: looks good"]


def test_applied_commands_keep_topic_order_and_skip_what_was_not_applied() -> None:
    start, stop = _start(), command("rollback", DEP, T0 + 5000, issued_by="cli:alice")
    forged = command("promote", DEP, T0 + 6000, issued_by="cli:mallory")
    raws = [start.to_dict(), {"poison": True}, stop.to_dict(), stop.to_dict(), forged.to_dict()]
    got = applied_commands(raws, {start.command_id, stop.command_id})
    assert [c.command_id for c in got] == [start.command_id, stop.command_id]


def test_every_line_fits_with_its_stamp_even_the_legend() -> None:
    _fits(wrap(LEGEND))
    assert wrap("x" * 120) == ["x" * 120]  # one word longer than a line (a path) is kept whole, not cut
