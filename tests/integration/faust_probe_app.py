"""Smallest useful Faust app: a table-backed counter, used to prove Faust works on our broker."""

from __future__ import annotations

import json
import os

import faust

app = faust.App(
    os.environ["PROBE_APP"],
    broker=f"kafka://{os.environ['PROBE_BROKER']}",
    store="memory://",
    processing_guarantee="at_least_once",
    topic_partitions=3,
    web_enabled=False,
)
source = app.topic(os.environ["PROBE_IN"], value_serializer="raw", key_serializer="raw")
sink = app.topic(os.environ["PROBE_OUT"], value_serializer="raw", key_serializer="raw")
counts = app.Table("counts", default=int, partitions=3)


@app.agent(source, concurrency=1)
async def count(stream):  # type: ignore[no-untyped-def]
    async for key, _value in stream.items():
        name = key.decode()
        counts[name] += 1
        await sink.send(key=key, value=json.dumps({"key": name, "count": counts[name]}).encode())
