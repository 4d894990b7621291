"""Live view of windows as they are judged: per arm p95, recall@10, counts, verdicts with evidence, streaks.

last_good windows come from ``canary_windows``; candidate windows from ``canary_verdicts``, where the SLO
agent publishes each one with its verdicts, streaks and any decision (canary.core.judge.Judgement).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiokafka import AIOKafkaConsumer

from canary.core import wire
from canary.core.custom import result_diff
from canary.core.judge import Judgement, evidence_text, format_value
from canary.core.models import WindowResult, iso_ms
from canary.core.outages import OutageNote
from canary.core.rings import split_ring_arm
from canary.errors import CanaryError
from canary.kafka.clients import Cluster, consumer_kwargs
from canary.kafka.topics import Topics, topic_partitions

WatchItem = WindowResult | Judgement
KEPT_NOTES = 256


def del_oldest(d: dict[Any, Any], keep: int) -> None:
    while len(d) > keep:
        del d[next(iter(d))]


async def tail_windows(
    bootstrap: Cluster,
    topics: Topics,
    from_beginning: bool = False,
    on_ready: Callable[[list[str]], None] | None = None,
) -> AsyncGenerator[WatchItem, None]:
    """last_good windows and judged candidate windows, as they arrive. ``on_ready`` is called with the
    topics once the reader is positioned: what is published after that call is seen."""
    consumer = AIOKafkaConsumer(**consumer_kwargs(bootstrap), group_id=None, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topics.windows) + await topic_partitions(consumer, topics.verdicts)
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
            for tp in tps:  # the end as of now, not at the first fetch: a window published meanwhile is shown
                await consumer.position(tp)
        if on_ready is not None:
            on_ready([topics.windows, topics.verdicts])
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    try:
                        if tp.topic == topics.verdicts:
                            judgement = Judgement.from_dict(wire.decode_object(record.value, wire.JUDGEMENT))
                        else:
                            window = WindowResult.from_dict(wire.decode_object(record.value, wire.WINDOW))
                    except (CanaryError, ValueError, TypeError, KeyError, AttributeError):
                        continue  # poison (wire.Rejected is a CanaryError): watching goes on
                    if tp.topic == topics.verdicts:
                        yield judgement
                        continue
                    if window.arm != "candidate":  # the candidate's judged copy comes from the verdicts topic
                        yield window
    finally:
        await consumer.stop()


@dataclass
class WatchState:
    """Latest window per arm and the candidate's streaks, folded from the stream."""

    latest: dict[tuple[str, str], WindowResult] = field(default_factory=dict)
    streaks: dict[str, dict[str, int]] = field(default_factory=dict)
    judgements: dict[str, Judgement] = field(default_factory=dict)
    # Broker outage notes by candidate window id, and last_good's p95 by (deployment, window start): the
    # note may have been written before last_good's window of the slot reached the worker.
    notes: dict[str, OutageNote] = field(default_factory=dict)
    last_good_p95: dict[tuple[str, int], float | None] = field(default_factory=dict)

    def add(self, item: WatchItem) -> WindowResult:
        window = item.window if isinstance(item, Judgement) else item
        dep = window.deployment_id or "-"
        self.latest[(dep, window.arm)] = window
        if isinstance(item, Judgement):
            self.streaks[dep] = dict(item.streaks)
            self.judgements[dep] = item
            note = OutageNote.from_context(item.context)
            if note is not None:
                self.notes[window.window_id] = note
                del_oldest(self.notes, KEPT_NOTES)
        elif window.arm == "last_good":
            self.last_good_p95[(dep, window.window_start_ms)] = window.p95_ms
            del_oldest(self.last_good_p95, KEPT_NOTES)
        return window

    def outage_text(self, window: WindowResult) -> str:
        """For a candidate window judged during a broker outage or its drain: the outage and both arms' p95."""
        note = self.notes.get(window.window_id)
        if note is None:
            return ""
        if note.last_good_p95_ms is None:
            seen = self.last_good_p95.get((window.deployment_id or "-", window.window_start_ms))
            note = replace(note, last_good_p95_ms=seen)
        return f"  ⚠ {note.text()}"

    def streak_text(self, window: WindowResult) -> str:
        if window.arm != "candidate" or not window.verdicts:
            return ""
        streaks = self.streaks.get(window.deployment_id or "-", {})
        parts = [f"{v.rule}:{streaks.get(v.rule, 0)}" for v in window.verdicts]
        text = "streak " + " ".join(parts)
        judgement = self.judgements.get(window.deployment_id or "-")
        if judgement is not None and judgement.insufficient_windows:
            text += f"  low-traffic {judgement.insufficient_windows}"
        if judgement is not None and judgement.decision is not None:
            text += f"  → {judgement.decision.type.upper()}: {judgement.decision.reason}"
        return text


def format_window(window: WindowResult, streak: str = "") -> str:
    p95 = f"{window.p95_ms:7.0f} ms" if window.p95_ms is not None else "      - ms"
    recall = f"{window.recall_at_10:.2f}" if window.recall_at_10 is not None else "  - "
    sources = (window.stats or {}).get("recall_source")
    if isinstance(sources, dict) and sources.get("exact_sample"):  # say when recall comes from exact samples
        recall += f" (exact {sources['exact_sample']}/{window.recall_samples})"
    diff = result_diff([(window.stats or {}).get("custom")])
    if diff is not None and diff.get("rbo_at_10") is not None:  # how much the candidate changes the answers
        recall += f" rbo@10={diff['rbo_at_10']:.2f} (n={diff['samples']})"
    if window.arm == "candidate":
        verdicts = "; ".join(evidence_text(v) for v in window.verdicts) or "not judged"
    elif split_ring_arm(window.arm)[1] is not None:
        verdicts = "ring traffic (not judged)"
    else:
        verdicts = "baseline"
    return (
        f"{iso_ms(window.window_start_ms)[11:19]}  {window.arm:9} {window.config_name:22} n={window.response_count:<4} "
        f"p95={p95} recall@10={recall} errors={window.error_count:<3} late={window.late_count:<2} "
        f"{verdicts}  {streak}"
    ).rstrip()


__all__ = ["WatchItem", "WatchState", "evidence_text", "format_value", "format_window", "tail_windows"]
