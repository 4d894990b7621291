"""Every reader of the transactional stages' topics reads read_committed (docs/adr/0004-*.md): the consumer
helper sets it once, and the worker's Faust agents (the SLO agent reads canary_windows) get it too."""

from __future__ import annotations

from pathlib import Path

import pytest

from canary.kafka.clients import KafkaConnection, client_kwargs, consumer_kwargs
from canary.kafka.topics import Topics


def test_consumer_kwargs_read_committed_with_the_connection_settings() -> None:
    conn = KafkaConnection("h:1")
    assert consumer_kwargs(conn) == {**client_kwargs(conn), "isolation_level": "read_committed"}


def test_the_workers_faust_transport_reads_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANARY_INSECURE_CONTROL", "1")  # no keys needed to build the app
    from streams.app import CanaryStreams, StreamsConfig

    streams = CanaryStreams(StreamsConfig("127.0.0.1:1", Topics("rc."), tmp_path / "audit.log", tmp_path / "d"))
    # Its consumer thread creates the aiokafka consumer with read_committed (checked by hand by building one;
    # doing so here would leave Faust's thread loop behind).
    assert type(streams.app.transport).__name__ == "_ReadCommittedTransport"
