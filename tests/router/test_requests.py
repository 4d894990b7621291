"""The search request, declared once as a Struct: decoding a good record, and each kind of bad field refused
with a typed rejection naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from canary.core import wire
from canary.errors import InvalidEvent
from router.requests import SearchRequest
from router.service import decode_request

GOOD: dict[str, Any] = {
    "request_id": "r-1",
    "query": "hybrid search",
    "collection": "documents",
    "user_id": "u-7",
    "ts": 1_700_000_000_000,
    "relevant_ids": ["d1", "d2"],
}


def test_a_good_request_decodes_and_encodes_to_the_same_json() -> None:
    request = decode_request(json.dumps(GOOD).encode())
    assert request == SearchRequest("r-1", "hybrid search", "documents", "u-7", 1_700_000_000_000, ("d1", "d2"))
    assert request.to_dict() == GOOD
    assert request.routing_key == "u-7"


def test_optional_fields_may_be_left_out_or_null_and_numeric_ids_read_as_text() -> None:
    minimal = decode_request(b'{"request_id": "r", "query": "q", "collection": "c"}')
    assert (minimal.user_id, minimal.ts, minimal.relevant_ids, minimal.routing_key) == (None, None, None, "r")
    assert minimal.to_dict() == {**dict.fromkeys(GOOD), "request_id": "r", "query": "q", "collection": "c"}
    numeric = decode_request(json.dumps({**GOOD, "user_id": 42, "relevant_ids": [7, "d2"]}).encode())
    assert (numeric.user_id, numeric.relevant_ids) == ("42", ("7", "d2"))
    assert decode_request(json.dumps({**GOOD, "extra": {"new": 1}}).encode()) == decode_request(
        json.dumps(GOOD).encode()
    )  # a newer producer's field is ignored


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"request_id": None}, "SearchRequest(request_id=None).request_id: expected a string, got None"),
        ({"query": ""}, "SearchRequest(request_id='r-1').query: must not be empty, got ''"),
        ({"collection": 3}, "SearchRequest(request_id='r-1').collection: expected a string, got 3"),
        ({"user_id": [1]}, "SearchRequest(request_id='r-1').user_id: expected a string, got [1]"),
        ({"user_id": True}, "SearchRequest(request_id='r-1').user_id: expected a string, got True"),
        ({"ts": True}, "SearchRequest(request_id='r-1').ts: expected an integer, got True"),
        ({"ts": "2024-01-01"}, "SearchRequest(request_id='r-1').ts: expected an integer, got '2024-01-01'"),
        ({"relevant_ids": "d1"}, "SearchRequest(request_id='r-1').relevant_ids: expected a list, got 'd1'"),
        (
            {"relevant_ids": ["d1", None]},
            "SearchRequest(request_id='r-1').relevant_ids: expected every item valid: [1]: expected a string",
        ),
    ],
)
def test_each_bad_field_is_refused_naming_it(change: dict[str, Any], message: str) -> None:
    with pytest.raises(wire.Rejected) as caught:
        decode_request(json.dumps({**GOOD, **change}).encode())
    assert caught.value.code == "invalid"
    assert message in str(caught.value)


@pytest.mark.parametrize("missing", ["request_id", "query", "collection"])
def test_a_missing_required_field_is_named(missing: str) -> None:
    with pytest.raises(InvalidEvent, match=rf"\.{missing}: required field is missing"):
        SearchRequest.from_dict({k: v for k, v in GOOD.items() if k != missing})


@pytest.mark.parametrize(
    ("raw", "code"), [(None, "no_value"), (b"[1]", "not_object"), (b"{", "not_json"), (b"[" * 20, "too_deep")]
)
def test_what_is_not_a_request_object_is_refused_by_the_decoder(raw: bytes | None, code: str) -> None:
    with pytest.raises(wire.Rejected) as caught:
        decode_request(raw)
    assert caught.value.code == code
