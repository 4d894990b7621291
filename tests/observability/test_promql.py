"""Prometheus answers are hostile until decoded (canary.observability.promql): every shape that is not a
finite first sample is a missing value with its reason, never an exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.observability.promql import MAX_ANSWER_BYTES, PrometheusSource, decode_answer


def _vector(*values: str) -> bytes:
    result = [{"metric": {}, "value": [1.0, v]} for v in values]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_vector("0.95"), 0.95),
        (_vector("0.5", "0.9"), 0.5),  # the first series
        (json.dumps({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}}).encode(), 3.0),
        (_vector(), "empty"),
        (_vector("NaN"), "empty"),
        (_vector("+Inf"), "empty"),
        (json.dumps({"status": "error", "error": "parse error"}).encode(), "error"),
        (b"<html>proxy</html>", "bad_response"),
        (b"[1, 2]", "bad_response"),
        (json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}}).encode(), "bad_response"),
        (
            json.dumps({"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, 2]}]}}).encode(),
            "bad_response",
        ),
        (
            json.dumps(
                {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "x"]}]}}
            ).encode(),
            "bad_response",
        ),
        (b"[" * 100_000, "bad_response"),  # nested past the parser's recursion limit
    ],
)
def test_decode_answer(body: bytes, expected: float | str) -> None:
    assert decode_answer(body) == expected


async def test_without_a_url_every_external_metric_is_missing_not_configured() -> None:
    from canary.core.custom import CustomMetric

    cpu = CustomMetric("cpu", "mean", 0, 1, "", "prometheus", "max(cpu)")
    own = CustomMetric("ndcg_at_10")
    assert await PrometheusSource(None).values([cpu, own], "d", "candidate", "c", 0, 5000) == {"cpu": "not_configured"}


async def test_an_unreachable_server_is_an_error_value() -> None:
    from canary.core.custom import CustomMetric

    cpu = CustomMetric("cpu", "mean", 0, 1, "", "prometheus", "max(cpu)", timeout_ms=500)
    assert await PrometheusSource("http://127.0.0.1:9").values([cpu], "d", "candidate", "c", 0, 5000) == {
        "cpu": "error"
    }
    assert MAX_ANSWER_BYTES == 1 << 20


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.text(max_size=8),
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_any_answer_is_a_value_or_a_reason_never_an_exception(body: bytes) -> None:
    got = decode_answer(body)
    assert isinstance(got, str) or (isinstance(got, float) and got == got)
