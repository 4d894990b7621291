"""Live view of windows as they are published: per arm p95, recall@10, counts, verdicts and streaks."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer

from canary.core.models import WindowResult, iso_ms
from canary.core.slo import StreakTracker
from canary.errors import CanaryError
from canary.kafka.topics import Topics, topic_partitions


async def tail_windows(
    bootstrap: str, topics: Topics, from_beginning: bool = False
) -> AsyncGenerator[WindowResult, None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topics.windows)
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    try:
                        yield WindowResult.from_dict(json.loads(record.value or b"null"))
                    except (CanaryError, ValueError):
                        continue
    finally:
        await consumer.stop()


@dataclass
class WatchState:
    """Latest window per arm and the candidate's SLO streaks, folded from the window stream."""

    latest: dict[tuple[str, str], WindowResult] = field(default_factory=dict)
    streaks: StreakTracker = field(default_factory=StreakTracker)

    def add(self, window: WindowResult) -> None:
        self.latest[(window.deployment_id or "-", window.arm)] = window
        if window.arm == "candidate" and window.deployment_id:
            self.streaks.update(window, window.verdicts)

    def streak_text(self, window: WindowResult) -> str:
        if window.arm != "candidate" or not window.verdicts:
            return ""
        parts = [f"{v.rule}:{self.streaks.streak(window.deployment_id, v.rule)}" for v in window.verdicts]
        return "streak " + " ".join(parts)


def format_window(window: WindowResult, streak: str = "") -> str:
    p95 = f"{window.p95_ms:7.0f} ms" if window.p95_ms is not None else "      - ms"
    recall = f"{window.recall_at_10:.2f}" if window.recall_at_10 is not None else "  - "
    verdicts = ", ".join(f"{v.rule} {v.outcome.upper()}" for v in window.verdicts) or "not judged"
    return (
        f"{iso_ms(window.window_start_ms)[11:19]}  {window.arm:9} {window.config_name:22} n={window.response_count:<4} "
        f"p95={p95} recall@10={recall} errors={window.error_count:<3} late={window.late_count:<2} "
        f"{verdicts}  {streak}"
    ).rstrip()
