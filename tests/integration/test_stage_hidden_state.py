"""A committed state record behind another producer's open transaction (streams/transactional.py, real broker).

A killed worker leaves transactions open on the state topic until their ids are started again or the
coordinator times them out. A read_committed reader stops at the first of them, so the state a partition
committed *after* one of them began is not visible yet. The two-worker test once lost 57 of a window's 88
outcomes that way: the survivor did not see the committed state, started the partition afresh from the
committed offset, and the open windows' input before it was gone. The stage must wait for the record instead —
and only after the coordinator must have ended every earlier transaction conclude that it is gone.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from canary.core.jsonio import dumps
from canary.kafka.topics import Topics, ensure_topics
from streams import transactional
from streams.transactional import COMMIT_HEADER, TransactionalStage

pytestmark = pytest.mark.kafka


class Stage(TransactionalStage[dict[str, Any]]):
    name = "windows"

    def new_state(
        self, partition: int, restored: dict[str, Any] | None, side: Mapping[str, bytes] | None = None
    ) -> dict[str, Any]:
        return dict(restored or {})

    def state_to_dict(self, partition: int, state: dict[str, Any]) -> dict[str, Any]:
        return state

    async def process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        return None

    async def emit_due(self) -> None:
        return None


async def _setup(bootstrap: str) -> tuple[Stage, AIOKafkaProducer]:
    """A stage whose partition 0 committed ``{"n": 7}`` with offset 5 after another producer's
    transaction on the same state partition began (and is still open: returned, for the test to end)."""
    topics = Topics(f"hid{uuid.uuid4().hex[:6]}.")
    await asyncio.to_thread(ensure_topics, bootstrap, topics)
    stage = Stage(bootstrap, topics, topics.search_results, f"g-{uuid.uuid4().hex[:6]}")
    stage._state_partitions = 6  # as ensure_topics creates it (the stage learns it at its start)
    key = stage._state_key(0)
    where = stage._state_partition(key)

    blocker = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"blocker-{uuid.uuid4().hex[:6]}")
    await blocker.start()
    await blocker.begin_transaction()
    await blocker.send_and_wait(topics.window_state, b'{"other": 1}', key=b"someone-else", partition=where)

    previous_owner = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=stage.transactional_id(0))
    await previous_owner.start()
    try:
        token = "t0k3n"
        async with previous_owner.transaction():
            await previous_owner.send(
                topics.window_state,
                dumps({"n": 7}),
                key=key,
                partition=where,
                headers=[(COMMIT_HEADER, token.encode())],
            )
            await previous_owner.send_offsets_to_transaction({stage.tp(0): (5, token)}, stage.group_id)
    finally:
        await previous_owner.stop()
    return stage, blocker


async def _until(what: str, predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def test_a_committed_state_behind_an_open_transaction_is_waited_for(kafka_bootstrap: str) -> None:
    stage, blocker = await _setup(kafka_bootstrap)
    running = asyncio.create_task(stage.run())
    try:
        # Every other partition (nothing committed) is acquired; partition 0 waits for its state.
        await _until("the partitions without state acquired", lambda: len(stage.states) >= 5)
        await asyncio.sleep(3)
        assert 0 not in stage.states and 0 in stage._pending
        await blocker.abort_transaction()
        await _until("partition 0 acquired", lambda: 0 in stage.states)
        assert stage.states[0] == {"n": 7}  # the committed state, not a fresh one
        assert stage._next[0] == 5  # resumed after the committed offset
        assert stage.unreadable_checkpoints == 0
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await blocker.stop()


async def test_a_committed_state_that_never_shows_is_given_up_after_the_bound(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real bound is the coordinator's transaction timeout plus a step (45 s): shortened here, the blocker
    # stays open throughout, and the partition starts afresh from the committed offset, loudly.
    monkeypatch.setattr(transactional, "VISIBLE_WITHIN_S", 3.0)
    stage, blocker = await _setup(kafka_bootstrap)
    running = asyncio.create_task(stage.run())
    try:
        started = time.monotonic()
        await _until("partition 0 acquired", lambda: 0 in stage.states)
        assert time.monotonic() - started >= 3.0
        assert stage.states[0] == {}  # afresh
        assert stage._next[0] == 5
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await blocker.abort_transaction()
        await blocker.stop()
