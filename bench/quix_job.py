"""A quix-streams tumbling-window job over ``search_results``: the baseline bench_aggregation runs beside canary.

Run by ``bench.bench_aggregation`` in a virtualenv of its own (quixstreams pins pydantic and confluent-kafka
versions older than canary's), never imported by canary. What a quix-streams user would write for canary's
windows: JSON values, event time from the outcome's ``ts``, watermark records filtered out, outcomes re-keyed by
window key (``group_by``: a repartition topic, as quix does keyed windows), and a 5 s tumbling window per key with
count, mean and max latency, emitted when it closes. Defaults everywhere else (at-least-once, RocksDB state with
changelog topics). Prints one JSON line: records read, outcomes aggregated, the time from the first record to the
last outcome aggregated, and the process's CPU over that time.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import threading
import time
import uuid
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--outcomes", type=int, required=True, help="outcomes on the topic (watermarks apart)")
    parser.add_argument("--window-ms", type=int, default=5000)
    parser.add_argument("--grace-ms", type=int, default=1000, help="canary's grace: how late an outcome still counts")
    parser.add_argument("--timeout-s", type=float, default=300.0)
    args = parser.parse_args()

    from quixstreams import Application
    from quixstreams.dataframe.windows import Count, Max, Mean

    state = {"records": 0, "outcomes": 0, "windows": 0, "first": None, "last": None, "cpu0": 0.0}
    started = time.perf_counter()

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def read(value: dict[str, Any]) -> None:
        if state["first"] is None:
            state["first"], state["cpu0"] = time.perf_counter(), cpu()
        state["records"] += 1

    def aggregated(_value: dict[str, Any]) -> None:
        state["outcomes"] += 1
        if state["outcomes"] >= args.outcomes:
            state["last"] = time.perf_counter()
            state["cpu1"] = cpu()
            app.stop()

    def emitted(_window: dict[str, Any]) -> None:
        state["windows"] += 1

    def event_time(value: Any, _headers: Any, timestamp: float, _kind: Any) -> int:
        return int(value["ts"]) if isinstance(value, dict) and "ts" in value else int(timestamp)

    with tempfile.TemporaryDirectory(prefix="bench-quix-") as state_dir:
        app = Application(
            broker_address=args.bootstrap,
            consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            state_dir=state_dir,
            loglevel="ERROR",  # a late record is logged one by one at WARNING
        )
        topic = app.topic(args.topic, value_deserializer="json", timestamp_extractor=event_time)
        sdf = app.dataframe(topic)
        sdf = sdf.update(read)
        sdf = sdf.filter(lambda v: "kind" not in v)
        sdf = sdf.group_by(lambda v: f"{v['deployment_id'] or '-'}|{v['config_name']}|{v['arm']}", name="window_key")
        sdf = sdf.update(aggregated)
        sdf = sdf.tumbling_window(duration_ms=args.window_ms, grace_ms=args.grace_ms).agg(
            count=Count(), mean=Mean("latency_ms"), max=Max("latency_ms")
        )
        sdf = sdf.final().update(emitted)
        deadline = time.monotonic() + args.timeout_s

        def watchdog() -> None:
            while state["last"] is None and time.monotonic() < deadline:
                time.sleep(0.5)
            if state["last"] is None:
                app.stop()

        threading.Thread(target=watchdog, daemon=True).start()
        app.run()
    end = state["last"]
    first = state["first"]
    seconds = (end - first) if end is not None and first is not None else None
    print(
        json.dumps(
            {
                "records": state["records"],
                "outcomes": state["outcomes"],
                "complete": state["outcomes"] >= args.outcomes,
                "windows_emitted": state["windows"],
                "seconds": seconds,
                "seconds_with_start": (end - started) if end is not None else None,
                "cpu_s": (state["cpu1"] - state["cpu0"]) if end is not None else None,
            }
        )
    )
    return 0 if end is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
