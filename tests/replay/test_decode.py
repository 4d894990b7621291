"""The replay's fast decoder accepts, rejects and converts exactly like SearchOutcome.from_dict."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from canary.core.jsonio import loads
from canary.core.models import SearchOutcome
from canary.core.wire import Rejected
from canary.pipeline.decode import DECODE_ERRORS, OutcomeDecoder

BASE: dict[str, Any] = {
    "event_id": "router-1:r1",
    "request_id": "r1",
    "ts": 1_700_000_000_123,
    "deployment_id": "dep-1",
    "config_name": "cand",
    "config_version": "1.0.0",
    "config_hash": "abc",
    "arm": "candidate",
    "latency_ms": 123.5,
    "recall_at_10": 0.8,
    "result_count": 10,
    "error": None,
    "router_id": "router-1",
}

_MISSING = object()


def _raw(**changes: Any) -> bytes:
    d = dict(BASE)
    for k, v in changes.items():
        if v is _MISSING:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d, allow_nan=True).encode()


VALID = [
    pytest.param(_raw(), id="plain"),
    pytest.param(_raw(deployment_id=None), id="no-deployment"),
    pytest.param(_raw(deployment_id=_MISSING), id="deployment-missing"),
    pytest.param(_raw(recall_at_10=None, error="timeout"), id="error"),
    pytest.param(_raw(error=""), id="empty-error"),
    pytest.param(_raw(recall_at_10=_MISSING, error=_MISSING), id="optional-missing"),
    pytest.param(_raw(latency_ms=120), id="int-latency"),
    pytest.param(_raw(recall_at_10=1), id="int-recall"),
    pytest.param(_raw(recall_at_10=0.0, latency_ms=0.0), id="zeros"),
    pytest.param(_raw(arm="last_good", config_version="", config_hash=""), id="empty-version"),
    pytest.param(_raw(extra_field={"x": 1}), id="extra-field"),
    pytest.param(_raw(latency_ms=123456789012345678901234567890), id="huge-int-latency"),
    pytest.param(_raw(metrics={"ndcg_at_10": 1, "cost": 2.5}), id="int-metric"),
    pytest.param(_raw(offset="hostile", window_key={"deployment_id": "other"}), id="internal-names"),
    pytest.param(_raw()[:-1] + b', "latency_ms": 99.0}', id="duplicate-key-last-wins"),
]

UNREADABLE = [
    pytest.param(b"not json", "not_json", id="not-json"),
    pytest.param(b"[1, 2]", "not_object", id="not-object"),
    pytest.param(b"\xff\xfe", "not_utf8", id="not-utf8"),
    pytest.param(_raw(error="\ud800"), "not_utf8", id="lone-surrogate"),
    pytest.param(b"[" * 3000 + b"]" * 3000, "too_deep", id="nested-3000"),
    pytest.param(_raw(error=[[[[[[[[["x"]]]]]]]]]), "too_deep", id="nested-field"),
    pytest.param(_raw(kind=[[[[[[[[[[1]]]]]]]]]]), "too_deep", id="nested-kind"),
    pytest.param(_raw(error="x" * 70_000), "too_large", id="huge-string"),
    pytest.param(None, "no_value", id="tombstone"),
]

INVALID = [
    pytest.param(_raw(ts=2**63 + 5), id="ts-beyond-int64"),
    pytest.param(_raw(ts=253_402_300_800_000), id="ts-after-year-9999"),
    pytest.param(_raw(event_id=_MISSING), id="missing-event-id"),
    pytest.param(_raw(event_id=""), id="empty-event-id"),
    pytest.param(_raw(ts=-1), id="negative-ts"),
    pytest.param(_raw(ts=True), id="bool-ts"),
    pytest.param(_raw(ts=1.5), id="float-ts"),
    pytest.param(_raw(deployment_id=""), id="empty-deployment"),
    pytest.param(_raw(arm="canary"), id="bad-arm"),
    pytest.param(_raw(arm=["candidate"]), id="list-arm"),
    pytest.param(_raw(latency_ms=-1.0), id="negative-latency"),
    pytest.param(_raw(latency_ms=math.nan), id="nan-latency"),
    pytest.param(_raw(latency_ms=math.inf), id="inf-latency"),
    pytest.param(_raw(latency_ms="12"), id="string-latency"),
    pytest.param(_raw(latency_ms=False), id="bool-latency"),
    pytest.param(_raw(recall_at_10=1.5), id="recall-above-1"),
    pytest.param(_raw(recall_at_10=math.nan), id="nan-recall"),
    pytest.param(_raw(result_count=-1), id="negative-count"),
    pytest.param(_raw(error=3), id="int-error"),
    pytest.param(_raw(router_id=""), id="empty-router"),
    pytest.param(_raw(config_version=None), id="null-version"),
    pytest.param(_raw(metrics={"cost": True}), id="bool-metric"),
    pytest.param(_raw(metrics={"bad|name": 1.0}), id="unsafe-metric-name"),
    pytest.param(_raw(router_id="a|b"), id="unsafe-router"),
]


@pytest.mark.parametrize("raw", VALID)
def test_fast_path_matches_from_dict(raw: bytes) -> None:
    ref = SearchOutcome.from_dict(json.loads(raw))
    for strict in (False, True):
        got = OutcomeDecoder(strict=strict).decode(raw)
        assert (got.event_id, got.ts, got.latency_ms, got.recall_at_10, got.error) == (
            ref.event_id,
            ref.ts,
            ref.latency_ms,
            ref.recall_at_10,
            ref.error,
        )
        assert type(got.latency_ms) is float
        for name in ("request_id", "config_version", "config_hash", "result_count", "router_id", "deployment_id"):
            assert getattr(got, name) == getattr(ref, name), name
        assert got.metrics == (None if ref.metrics is None else dict(ref.metrics))
        assert got.window_key == ref.window_key or got.window_key.as_str() == ref.window_key.as_str()
        assert hash(got.window_key) == hash(ref.window_key)


@pytest.mark.parametrize("raw", INVALID)
def test_rejects_exactly_like_from_dict(raw: bytes) -> None:
    with pytest.raises(DECODE_ERRORS) as expected:
        SearchOutcome.from_dict(json.loads(raw))
    for strict in (False, True):
        with pytest.raises(Rejected) as got:
            OutcomeDecoder(strict=strict).decode(raw)
        assert got.value.code == "invalid"
        assert got.value.detail == str(expected.value)


@pytest.mark.parametrize(("raw", "code"), UNREADABLE)
def test_unreadable_records_are_rejected_with_their_code(raw: bytes | None, code: str) -> None:
    for strict in (False, True):
        with pytest.raises(Rejected) as got:
            OutcomeDecoder(strict=strict).decode(raw)
        assert got.value.code == code, got.value


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(_raw(ts=99999999999999999999999), id="ts-beyond-uint64"),
    ],
)
def test_parser_edges_follow_the_parser_the_worker_uses(raw: bytes) -> None:
    """Where JSON parsers disagree (an integer beyond 64 bits), the fast path follows
    canary.core.jsonio.loads, the parser of the worker's reference path: both are poison there."""
    with pytest.raises(DECODE_ERRORS) as expected:
        SearchOutcome.from_dict(loads(raw))
    with pytest.raises(Rejected) as got:
        OutcomeDecoder().decode(raw)
    assert got.value.code == "invalid" and got.value.detail == str(expected.value)


def test_tombstone_is_invalid() -> None:
    with pytest.raises(DECODE_ERRORS):
        OutcomeDecoder().decode(None)


def test_keys_are_interned() -> None:
    dec = OutcomeDecoder()
    a = dec.decode(_raw())
    b = dec.decode(_raw(event_id="router-1:r2", latency_ms=120))  # fast path and reference path
    c = dec.decode(_raw(arm="last_good"))
    assert a.window_key is b.window_key
    assert a.window_key is not c.window_key
    assert a.window_key.as_str() == "dep-1|cand|candidate"


@pytest.mark.parametrize(
    "raw",
    [
        _raw(),
        b'{"a": 1}  \n',
        b'  {"a": 1}',
        b'{"a": 1} {"b": 2}',
        b'{"a": 1',
        b'{"a": NaN, "b": -Infinity}',
        b'{"a": "\\ud800"}',
        b'{"a": "\xed\xa0\x80"}',
        b'{"a": "\xff"}',
        b"\xef\xbb\xbf" + _raw(),
        '{"a": 1}'.encode("utf-16"),
        '{"a": 1}'.encode("utf-16-le"),
        '{"a": 1}'.encode("utf-32-le"),
        b"",
        b"{",
        b"{}",
        b"[]",
        b"null",
        '{"ünï": "cödé ✓"}'.encode(),
    ],
)
def test_loads_fast_path_equals_json_loads(raw: bytes) -> None:
    from canary.core.jsonio import loads

    try:
        expected: object = json.loads(raw)
    except Exception as exc:
        with pytest.raises(type(exc)) as got:
            loads(raw)
        assert str(got.value) == str(exc)
        return
    assert repr(loads(raw)) == repr(expected)


def test_decoded_keys_equal_keys_restored_from_state() -> None:
    """A restarted worker restores WindowKey.parse(...) keys; decoded keys must be the same dict key."""
    from canary.core.models import WindowKey
    from canary.pipeline.decode import OutcomeDecoder

    raw = (
        b'{"event_id":"r:1","request_id":"1","ts":5000,"deployment_id":"d","config_name":"c",'
        b'"config_version":"1","config_hash":"h","arm":"candidate","latency_ms":1.5,"recall_at_10":null,'
        b'"result_count":1,"error":null,"router_id":"r"}'
    )
    key = OutcomeDecoder().decode(raw).window_key
    restored = WindowKey.parse(key.as_str())
    assert key == restored and hash(key) == hash(restored)
    assert {restored: 1}.get(key) == 1


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(_raw(kind="watermark"), id="kind"),
        pytest.param(_raw()[:-1] + b', "\\u006bind": "watermark"}', id="escaped-kind"),
        pytest.param(_raw(kind=None), id="null-kind"),
    ],
)
def test_an_outcome_with_a_kind_is_read_as_a_watermark_record_on_both_paths(raw: bytes) -> None:
    """``kind`` tells a watermark record from an outcome, however its key is spelled: the fast path refuses
    such a record as an outcome and decides exactly as the reference path does."""
    outcomes: list[str] = []
    for strict in (False, True):
        with pytest.raises(Rejected) as got:
            OutcomeDecoder(strict=strict).decode(raw)
        outcomes.append(f"{got.value.code}: {got.value.detail}")
    assert outcomes[0] == outcomes[1] and "RouterWatermark" in outcomes[0]
