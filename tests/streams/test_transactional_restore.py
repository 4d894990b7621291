"""Which state record a transactional stage restores (streams/transactional.py), without a broker: the one
committed with the partition's offset (same commit token), whatever was written over it afterwards."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from canary.kafka.topics import Topics
from streams import transactional
from streams.transactional import COMMIT_HEADER, StateScan, TransactionalStage


@dataclass
class Record:
    value: bytes | None
    token: str | None = None
    partition: int = 0
    offset: int = 0

    key: bytes = b"k"

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        return [] if self.token is None else [(COMMIT_HEADER, self.token.encode())]


class Stage(TransactionalStage[dict[str, Any]]):
    name = "windows"

    def new_state(
        self, partition: int, restored: dict[str, Any] | None, side: Mapping[str, bytes] | None = None
    ) -> dict[str, Any]:
        if restored is not None and "n" not in restored:
            raise ValueError("no n")
        return {**(restored or {}), "side": dict(side or {})}


def scan(token: str, records: list[Record]) -> StateScan:
    out = StateScan(token)
    for record in records:
        out.add(record)
    return out


@pytest.fixture
def stage() -> Stage:
    return Stage("127.0.0.1:1", Topics("t."), "t.search_results", "g")


def test_the_committed_record_is_restored_and_what_was_written_over_it_rejected(stage: Stage) -> None:
    records = [
        Record(b'{"n": 1}', "a", offset=1),
        Record(b'{"n": 2}', "b", offset=2),  # committed with the offset
        Record(b"\x00junk", offset=3),  # an attacker's write
        Record(b'{"n": 9}', offset=4),  # well-formed, but not the committed one
        Record(None, offset=5),  # a tombstone: nothing to reject
    ]
    state, rejected = stage._restore(0, scan("b", records))
    assert state == {"n": 2, "side": {}}
    assert [(r.offset, code) for r, code, _ in rejected] == [(3, "not_json"), (4, "invalid")]
    assert all("not the state committed" in why for _, _, why in rejected)


def test_no_committed_record_left_means_afresh_and_the_last_record_rejected(stage: Stage) -> None:
    state, rejected = stage._restore(0, scan("gone", [Record(b'{"n": 1}', "a"), Record(b"[]")]))
    assert state is None
    assert [code for _, code, _ in rejected] == ["not_object"]  # older versions are not dead-lettered


def test_a_flood_written_over_the_committed_record_is_bounded(stage: Stage) -> None:
    found = scan("a", [Record(b'{"n": 1}', "a"), *(Record(b"junk", offset=i) for i in range(150))])
    assert len(found.written_over) == 100 and found.more_written_over == 50
    state, rejected = stage._restore(0, found)
    assert state == {"n": 1, "side": {}} and len(rejected) == 100


def test_an_unreadable_committed_record_means_afresh_with_its_reason(stage: Stage) -> None:
    state, rejected = stage._restore(0, scan("a", [Record(b'{"m": 1}', "a")]))
    assert state is None
    ((_, code, why),) = rejected
    assert code == "invalid" and "no n" in why


def test_without_a_token_nothing_is_taken_for_committed(stage: Stage) -> None:
    state, rejected = stage._restore(0, scan("", [Record(b'{"n": 1}')]))
    assert state is None and len(rejected) == 1


def test_transactional_ids_are_per_source_partition(stage: Stage) -> None:
    assert stage.transactional_id(3) == "g-t.search_results-3"
    assert stage._state_key(3) == b"g|t.search_results|3"


def test_side_records_are_kept_by_name_last_value_wins_and_bounded(
    stage: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transactional, "MAX_SIDE_BYTES", 10)
    found = scan("a", [Record(b'{"n": 1}', "a")])
    found.add_side(b"seen/0/x", b"1234")
    found.add_side(b"seen/0/x", b"12")  # written again: the last value
    found.add_side(b"seen/0/y", b"5678")
    found.add_side(b"seen/0/y", None)  # deleted
    found.add_side(b"seen/0/z", b"123456789")  # over the bound: not kept
    found.add_side(b"\xff\xfe", b"1")  # a name that is not UTF-8: not kept
    assert found.side == {"seen/0/x": b"12"} and found.side_bytes == 2 and found.side_dropped == 2
    state, rejected = stage._restore(0, found)
    assert state == {"n": 1, "side": {"seen/0/x": b"12"}} and rejected == []
