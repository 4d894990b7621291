from __future__ import annotations

import json
from typing import Any

import pytest

from canary.core.models import (
    ControlCommand,
    RouterState,
    RuleVerdict,
    SearchOutcome,
    WindowKey,
    WindowResult,
    iso_ms,
    parse_time,
)
from canary.errors import InvalidEvent
from tests.core.helpers import outcome, outcome_dict


@pytest.mark.parametrize(
    ("ts_ms", "iso"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
        (1_700_000_000_999, "2023-11-14T22:13:20.999Z"),
    ],
)
def test_iso_ms_round_trips(ts_ms: int, iso: str) -> None:
    assert iso_ms(ts_ms) == iso
    assert parse_time(iso) == ts_ms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1234, 1234),
        ("1234", 1234),
        ("2023-11-14T22:13:20.123+00:00", 1_700_000_000_123),
        ("2023-11-14T23:13:20.123+01:00", 1_700_000_000_123),
        ("2023-11-14T22:13:20", 1_700_000_000_000),
    ],
)
def test_parse_time(text: str | int, expected: int) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize("bad", ["yesterday", "", True])
def test_parse_time_rejects(bad: Any) -> None:
    with pytest.raises(InvalidEvent, match="time"):
        parse_time(bad)


def test_search_outcome_round_trip_through_json() -> None:
    o = outcome(1_700_000_000_000, 12.5, error="timeout", recall_at_10=None)
    assert SearchOutcome.from_dict(json.loads(json.dumps(o.to_dict()))) == o


def test_search_outcome_accepts_int_latency_and_null_deployment() -> None:
    o = SearchOutcome.from_dict(outcome_dict(latency_ms=7, deployment_id=None))
    assert o.latency_ms == 7.0 and isinstance(o.latency_ms, float)
    assert o.window_key == WindowKey(None, "cand", "candidate")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"latency_ms": -1}, r"SearchOutcome\(event_id='e-fixed'\)\.latency_ms: must be >= 0, got -1"),
        ({"latency_ms": "fast"}, r"latency_ms: expected a number, got 'fast'"),
        ({"latency_ms": float("nan")}, r"latency_ms: must be finite"),
        ({"latency_ms": True}, r"latency_ms: expected a number, got True"),
        ({"recall_at_10": 1.5}, r"recall_at_10: must be <= 1, got 1.5"),
        ({"arm": "blue"}, r"arm: must be one of last_good, candidate, got 'blue'"),
        ({"ts": 1.5}, r"ts: expected an integer, got 1.5"),
        ({"result_count": -2}, r"result_count: must be >= 0, got -2"),
        ({"config_name": ""}, r"config_name: must not be empty"),
        ({"error": 3}, r"error: expected a string, got 3"),
    ],
)
def test_search_outcome_rejects_poison(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message):
        SearchOutcome.from_dict(outcome_dict(**overrides))


def test_search_outcome_missing_field_and_non_object() -> None:
    d = outcome_dict()
    del d["router_id"]
    with pytest.raises(InvalidEvent, match=r"router_id: required field is missing"):
        SearchOutcome.from_dict(d)
    with pytest.raises(InvalidEvent, match="expected a JSON object, got list"):
        SearchOutcome.from_dict([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "text"),
    [
        (WindowKey("dep-1", "cand", "candidate"), "dep-1|cand|candidate"),
        (WindowKey(None, "baseline", "last_good"), "-|baseline|last_good"),
    ],
)
def test_window_key_string(key: WindowKey, text: str) -> None:
    assert key.as_str() == text
    assert WindowKey.parse(text) == key


@pytest.mark.parametrize("bad", ["a|b", "a|b|c|d", "|b|c"])
def test_window_key_parse_rejects(bad: str) -> None:
    with pytest.raises(InvalidEvent, match="WindowKey"):
        WindowKey.parse(bad)


def _window() -> WindowResult:
    return WindowResult(
        deployment_id="dep-1",
        config_name="cand",
        arm="candidate",
        window_start_ms=1_700_000_000_000,
        window_end_ms=1_700_000_005_000,
        duration_sec=5,
        response_count=48,
        error_count=1,
        p95_ms=1530.2,
        recall_at_10=0.41,
        recall_samples=30,
        slo_violations=2,
        verdicts=(RuleVerdict("p95_ms", "p95_ms", "le", 1200.0, 1530.2, "fail", "p95_ms=1530.2 > 1200 (n=48)"),),
        late_count=0,
        emitted_at_ms=1_700_000_006_500,
    )


def test_window_result_dict_shape_and_round_trip() -> None:
    w = _window()
    d = json.loads(json.dumps(w.to_dict()))
    assert d["timestamp"] == d["window_start"] == "2023-11-14T22:13:20.000Z"
    assert d["window_end"] == "2023-11-14T22:13:25.000Z"
    assert d["emitted_at"] == "2023-11-14T22:13:26.500Z"
    assert d["window_id"] == "dep-1|cand|candidate@1700000000000"
    assert d["verdicts"][0]["outcome"] == "fail"
    assert WindowResult.from_dict(d) == w


def test_window_result_from_iso_only() -> None:
    d = _window().to_dict()
    for k in ("window_start_ms", "window_end_ms", "emitted_at_ms"):
        del d[k]
    assert WindowResult.from_dict(d) == _window()


def test_window_result_rejects_bad_verdict() -> None:
    d = _window().to_dict()
    d["verdicts"][0]["outcome"] = "maybe"
    with pytest.raises(InvalidEvent, match=r"RuleVerdict.outcome: must be one of"):
        WindowResult.from_dict(d)


def test_control_command_round_trip_and_validation() -> None:
    c = ControlCommand(
        command_id="rollback-dep-1",
        type="rollback",
        deployment_id="dep-1",
        candidate_config={"name": "cand", "k": 10},
        candidate_config_hash="abc",
        last_good_config=None,
        weight=0.1,
        reason="SLO violation",
        evidence={"windows": []},
        issued_by="slo-judge",
        issued_at_ms=1_700_000_000_000,
    )
    d = json.loads(json.dumps(c.to_dict()))
    assert d["issued_at"] == "2023-11-14T22:13:20.000Z"
    assert ControlCommand.from_dict(d) == c
    with pytest.raises(InvalidEvent, match=r"ControlCommand.weight: must be <= 1, got 2"):
        ControlCommand.from_dict({**d, "weight": 2})
    with pytest.raises(InvalidEvent, match=r"ControlCommand.type: must be one of"):
        ControlCommand.from_dict({**d, "type": "explode"})
    with pytest.raises(InvalidEvent, match=r"candidate_config: expected an object or null"):
        ControlCommand.from_dict({**d, "candidate_config": "cand"})


def test_router_state_round_trip_and_validation() -> None:
    s = RouterState(
        router_id="router-1",
        deployment_id=None,
        status="idle",
        active_config="baseline",
        last_good="baseline",
        candidate_config=None,
        weight=0.0,
        answers_command_id=None,
        applied_at_ms=5,
        seq=0,
    )
    d = json.loads(json.dumps(s.to_dict()))
    assert RouterState.from_dict(d) == s
    with pytest.raises(InvalidEvent, match=r"RouterState.status: must be one of"):
        RouterState.from_dict({**d, "status": "dancing"})


def test_router_state_says_which_request_partitions_it_holds_and_whether_it_takes_their_requests() -> None:
    s = RouterState(
        "router-1", None, "idle", "baseline", "baseline", None, 0.0, None, 5, 0,
        request_partitions=(0, 2),
        requests_stalled="partitions [2] hold 40 request(s) and none was taken for 12 s, although slots are free",
    )  # fmt: skip
    d = json.loads(json.dumps(s.to_dict()))
    assert d["request_partitions"] == [0, 2]
    assert RouterState.from_dict(d) == s
    # A state from a router older than these fields reads as "not known" / "not stalled".
    old = {k: v for k, v in d.items() if k not in ("request_partitions", "requests_stalled")}
    assert RouterState.from_dict(old).request_partitions is None
    assert RouterState.from_dict(old).requests_stalled is None
    for bad in ([-1], ["0"], [True], 3, [0] * 10_001):
        with pytest.raises(InvalidEvent, match=r"RouterState.request_partitions: expected"):
            RouterState.from_dict({**d, "request_partitions": bad})
    with pytest.raises(InvalidEvent, match=r"RouterState.requests_stalled: expected a string"):
        RouterState.from_dict({**d, "requests_stalled": 1})


@pytest.mark.parametrize("bad", ["dep|x", "a@b", "", "-lead", "x" * 129, "sp ace", "new\nline"])
def test_names_outside_the_safe_set_are_poison(bad: str) -> None:
    from canary.core.models import WindowKey, check_name

    with pytest.raises(InvalidEvent, match="letters, digits"):
        check_name("deployment id", bad)
    with pytest.raises(InvalidEvent):
        SearchOutcome.from_dict(outcome_dict(deployment_id=bad))
    with pytest.raises(InvalidEvent):
        WindowKey.parse(f"{bad or 'x|y'}|cand|candidate")


def test_safe_names_pass() -> None:
    from canary.core.models import check_name

    for ok in ("canary_1764627000_0042", "dep-1", "router-host.example-0", "A1"):
        assert check_name("name", ok) == ok
