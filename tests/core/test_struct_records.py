"""Records declared once as msgspec Structs and read back through the one gate (canary.core.structs): a good
record decodes to the same JSON it came from; each kind of bad field is refused with a typed error naming the
record, the field and the value."""

from __future__ import annotations

import json
from typing import Any

import pytest

from canary.config.backend import HttpBackendSpec
from canary.core.rollout import RolloutPlan, RolloutStep, RolloutTracker
from canary.core.slo import Decision
from canary.errors import ConfigError, InvalidEvent

PLAN: dict[str, Any] = {
    "steps": [
        {"weight": 0.1, "min_windows": 2, "min_duration_s": 0.0, "gate": "auto"},
        {"weight": 1.0, "min_windows": 3, "min_duration_s": 30.0, "gate": "manual"},
    ],
    "min_total_duration_s": 600.0,
    "max_duration_s": None,
    "auto_promote": True,
}


def test_a_rollout_plan_reads_back_to_the_same_json() -> None:
    plan = RolloutPlan.from_dict(PLAN)
    assert plan == RolloutPlan((RolloutStep(0.1, 2), RolloutStep(1.0, 3, 30.0, "manual")))
    assert json.loads(json.dumps(plan.to_dict())) == PLAN
    # Defaults for what a hand-written section leaves out; a weight written as 1 is the number 1.0.
    assert RolloutPlan.from_dict({"steps": [{"weight": 1}]}).to_dict()["steps"] == [
        {"weight": 1.0, "min_windows": 2, "min_duration_s": 0.0, "gate": "auto"}
    ]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"steps": "all"}, InvalidEvent, "RolloutPlan.steps: expected a list, got 'all'"),
        ({"steps": [{"min_windows": 2}]}, InvalidEvent, "RolloutPlan.steps[0].weight: required field is missing"),
        ({"steps": [{"weight": "half"}]}, InvalidEvent, "RolloutPlan.steps: expected every item valid: [0].weight: "),
        ({"steps": [{"weight": 1.0, "gate": "maybe"}]}, InvalidEvent, "[0].gate: must be one of auto, manual"),
        ({"steps": [{"weight": 1.0, "min_windows": 1.5}]}, InvalidEvent, "[0].min_windows: expected an integer"),
        ({"auto_promote": "yes"}, InvalidEvent, "RolloutPlan.auto_promote: expected true/false, got 'yes'"),
        ({"max_duration_s": "1h"}, InvalidEvent, "RolloutPlan.max_duration_s: expected a number"),
        # Out of the plan's rules (the preset parser's words): ConfigError naming the field and the value.
        ({"steps": [{"weight": 0.5}, {"weight": 0.4}]}, ConfigError, "rollout.steps[1].weight = 0.4: must be above"),
        ({"steps": []}, ConfigError, "rollout.steps = []: must list at least one step"),
        ({"max_duration_s": 10.0}, ConfigError, "rollout.max_duration_s = 10.0: must be above min_total_duration_s"),
    ],
)
def test_each_bad_plan_field_is_refused_naming_it(change: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        RolloutPlan.from_dict({**PLAN, **change})
    assert message in str(caught.value)


TWO = RolloutPlan((RolloutStep(0.5, 1), RolloutStep(1.0, 1)))


def test_rollout_progress_restores_from_a_checkpoint_of_today_and_of_before_counted_windows() -> None:
    literal = {"step": 1, "counted": 2, "counted_windows": [5000, 10000]}  # as to_dict wrote it at da5b9c6
    tracker = RolloutTracker.from_dict(TWO, literal)
    assert (tracker.step, tracker.counted, tracker.counted_windows) == (1, 2, [5000, 10000])
    assert tracker.to_dict() == literal
    assert RolloutTracker.from_dict(TWO, {"step": 0, "counted": 1}).counted_windows == []


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"step": 2, "counted": 0}, "RolloutTracker.step: outside the plan's 2 steps, got 2"),
        ({"step": -1, "counted": 0}, "RolloutTracker.step: must be >= 0, got -1"),
        ({"step": "1", "counted": 0}, "RolloutTracker.step: expected an integer, got '1'"),
        ({"step": 0}, "RolloutTracker.counted: required field is missing"),
        ({"step": 0, "counted": 1, "counted_windows": [None]}, "RolloutTracker.counted_windows: expected every item"),
        ([0, 1], "RolloutTracker: expected a JSON object"),
    ],
)
def test_each_bad_progress_field_is_refused_naming_it(state: Any, message: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        RolloutTracker.from_dict(TWO, state)
    assert message in str(caught.value)


DECISION: dict[str, Any] = {
    "deployment_id": "dep-1",
    "type": "rollback",
    "rule": "p95_ms",
    "reason": "p95_ms failed in 2 consecutive windows",
    "evidence": {"windows": [{"window_id": "dep-1|cand|candidate@0"}]},
    "window_id": "dep-1|cand|candidate@5000",
    "command_id": "rollback-dep-1",
}


def test_a_decision_reads_back_to_the_same_json_in_the_same_order() -> None:
    decision = Decision.from_dict(DECISION)
    assert decision.to_dict() == DECISION and list(decision.to_dict()) == list(DECISION)
    assert Decision.from_dict({k: v for k, v in DECISION.items() if k != "type"}).type == "rollback"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"evidence": None}, "Decision.evidence: expected an object, got None"),
        ({"evidence": [1]}, "Decision.evidence: expected an object, got [1]"),
        ({"command_id": 7}, "Decision.command_id: expected a string, got 7"),
        (
            {"type": None},
            "Decision.type: must be one of rollback, pause, shock, recover, advance, gate, promote, expire, got None",
        ),
        (
            {"type": "hold"},
            "Decision.type: must be one of rollback, pause, shock, recover, advance, gate, promote, expire, got 'hold'",
        ),
    ],
)
def test_each_bad_decision_field_is_refused_naming_it(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        Decision.from_dict({**DECISION, **change})
    assert message in str(caught.value)


@pytest.mark.parametrize("missing", ["deployment_id", "rule", "reason", "evidence", "window_id", "command_id"])
def test_a_decision_missing_a_required_field_is_named(missing: str) -> None:
    with pytest.raises(InvalidEvent, match=rf"Decision\.{missing}: required field is missing"):
        Decision.from_dict({k: v for k, v in DECISION.items() if k != missing})


BACKEND: dict[str, Any] = {
    "type": "http",
    "url": "http://127.0.0.1:9000/search",
    "timeout_ms": 300,
    "params": "query",
    "max_connections": 8,
    "max_results": 50,
    "exact_url": None,
}


def test_an_http_backend_section_reads_back_to_the_same_json() -> None:
    spec = HttpBackendSpec.from_dict(BACKEND)
    assert spec == HttpBackendSpec("http://127.0.0.1:9000/search", 300, "query", 8, 50)
    assert spec.to_dict() == BACKEND and list(spec.to_dict()) == list(BACKEND)
    assert HttpBackendSpec.from_dict({"type": "http", "url": "http://h/"}).timeout_ms == 1000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"type": "bundled"}, "backend.type: must be http, got 'bundled'"),
        ({"url": 5}, "backend.url: expected a string, got 5"),
        ({"url": "gopher://x"}, "backend.url = 'gopher://x': must be an http"),
        ({"timeout_ms": True}, "backend.timeout_ms: expected an integer, got True"),
        ({"timeout_ms": 0}, "backend.timeout_ms = 0: must be an integer between 1 and 60000"),
        ({"params": "form"}, "backend.params: must be one of body, query, got 'form'"),
        ({"import": "os:system"}, "backend.import: not a field of this record"),
    ],
)
def test_each_bad_backend_field_is_refused_naming_it(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        HttpBackendSpec.from_dict({**BACKEND, **change})
    assert message in str(caught.value)
