"""Synthetic recorded traffic for replay tests: outcome records, control commands, and a live-worker stand-in."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from canary.core.judge import Judge
from canary.core.models import ControlCommand, SearchOutcome, WindowResult
from canary.core.windows import WindowFinalizer
from canary.pipeline.loop import fold_commands
from canary.pipeline.policies import PolicyBook
from canary.pipeline.settings import DEFAULTS

T0 = 1_700_000_000_000  # a window boundary (divisible by 5000)
Record = tuple[int, int, int | None, bytes | None]

# The replay-mechanics tests judge by point estimates, so each window's verdict follows its own latency
# pattern and a test can place a failing window exactly; the default sequential judge (pooled evidence)
# has its own table-driven tests in tests/core/test_judge.py, and replay runs it too (see test_recompute).
SLOW_SLO = {"p95_ms": 1200, "recall_at_10": 0.30, "consecutive_buckets": 2, "min_samples": 20, "method": "point"}


def snapshot(name: str, slo: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "version": "1.0.0"}, "slo": dict(slo or SLOW_SLO)}


def start(
    dep: str, candidate: str = "cand", *, at: int = T0 - 60_000, slo: dict[str, Any] | None = None
) -> ControlCommand:
    return ControlCommand(
        command_id=f"start-{dep}",
        type="start",
        deployment_id=dep,
        candidate_config=snapshot(candidate, slo),
        candidate_config_hash=f"h-{candidate}",
        last_good_config=snapshot("last_good"),
        weight=0.2,
        reason=None,
        evidence=None,
        issued_by="cli:test",
        issued_at_ms=at,
    )


def end(
    dep: str, kind: str = "abort", *, at: int, by: str = "cli:test", evidence: dict[str, Any] | None = None
) -> ControlCommand:
    return ControlCommand(
        command_id=f"rollback-{dep}" if by == "slo-agent" else f"{kind}-{dep}",
        type=kind,  # type: ignore[arg-type]
        deployment_id=dep,
        candidate_config=None,
        candidate_config_hash=None,
        last_good_config=None,
        weight=0.0,
        reason="test",
        evidence=evidence,
        issued_by=by,
        issued_at_ms=at,
    )


@dataclass
class Traffic:
    """Builds records per partition with increasing offsets; Kafka timestamp = ts + publish delay."""

    records: list[Record]
    _offsets: dict[int, int]
    _seq: int = 0

    @classmethod
    def new(cls) -> Traffic:
        return cls([], {})

    def add(
        self,
        partition: int,
        ts: int,
        *,
        dep: str | None = "dep-1",
        config: str = "cand",
        arm: str = "candidate",
        latency: float = 100.0,
        recall: float | None = 0.8,
        error: str | None = None,
        delay: int = 3,
        raw: bytes | None = None,
    ) -> None:
        self._seq += 1
        offset = self._offsets.get(partition, 0)
        self._offsets[partition] = offset + 1
        if raw is None:
            outcome = {
                "event_id": f"router-1:r{self._seq}",
                "request_id": f"r{self._seq}",
                "ts": ts,
                "deployment_id": dep,
                "config_name": config,
                "config_version": "1.0.0",
                "config_hash": "abc",
                "arm": arm,
                "latency_ms": latency,
                "recall_at_10": recall,
                "result_count": 10,
                "error": error,
                "router_id": "router-1",
            }
            raw = json.dumps(outcome).encode()
        self.records.append((partition, offset, ts + delay, raw))

    def steady(
        self,
        partition: int,
        start_ms: int,
        end_ms: int,
        every_ms: int,
        *,
        latency: float | Sequence[float] = 100.0,
        **kw: Any,
    ) -> None:
        lat = [latency] if isinstance(latency, int | float) else list(latency)
        for i, ts in enumerate(range(start_ms, end_ms, every_ms)):
            self.add(partition, ts, latency=float(lat[i % len(lat)]), **kw)


def live_worker(
    records: Sequence[Record],
    commands: Sequence[ControlCommand],
    *,
    processing_delay_ms: int = 40,
    stalls: dict[int, int] | None = None,
    batch_max: int = 2000,
    batch_span_ms: int = DEFAULTS.batch_span_ms,
    tick_until_ms: int | None = None,
) -> tuple[list[WindowResult], list[ControlCommand]]:
    """A stand-in for the live worker (streams/app.py), driven by a simulated processing clock.

    Per partition: outcomes decoded with ``SearchOutcome.from_dict``, batches cut like the agent,
    ``now`` = Kafka timestamp + ``processing_delay_ms`` (+ ``stalls[offset]`` ms from that record on: the
    worker was stalled). Ticks every 100 ms close windows between batches. The SLO agent issues its
    rollback commands like ``_judge_window``.
    """
    book = PolicyBook(fold_commands(commands))
    stalls = stalls or {}
    windows: list[WindowResult] = []
    parts: dict[int, list[Record]] = {}
    for r in records:
        parts.setdefault(r[0], []).append(r)
    for p, recs in sorted(parts.items()):
        windows += _live_partition(p, recs, book, processing_delay_ms, stalls, batch_max, batch_span_ms, tick_until_ms)
    rollbacks: list[ControlCommand] = []
    ledger = fold_commands(commands)
    judge = Judge(book.policy)
    judged: dict[str, WindowResult] = {}
    for w in sorted(windows, key=lambda w: (w.window_start_ms, w.arm != "last_good")):
        if w.deployment_id is None:
            continue
        decisions = []
        for j in judge.observe(w, w.window_end_ms + 1000):
            judged[j.window_id] = j.window
            if j.decision is not None:
                decisions.append(j.decision)
        d = decisions[0] if decisions else None
        if d is not None and d.type == "rollback" and ledger.deployments[w.deployment_id].live:
            rollbacks.append(
                end(
                    w.deployment_id,
                    "rollback",
                    at=w.window_end_ms + 1000,
                    by="slo-agent",
                    evidence={**d.evidence, "triggering_window": d.window_id},
                )
            )
    return [judged.get(w.window_id, w) for w in windows], rollbacks


def _live_partition(
    p: int,
    recs: Sequence[Record],
    book: PolicyBook,
    processing_delay_ms: int,
    stalls: dict[int, int],
    batch_max: int,
    batch_span_ms: int,
    tick_until_ms: int | None,
) -> list[WindowResult]:
    fin = WindowFinalizer(aggregator=book.aggregator_for)
    windows: list[WindowResult] = []
    shift = 0
    batch: list[SearchOutcome] = []
    first = now = last_now = 0

    def flush(now: int, last_now: int) -> int:
        n = max(now + processing_delay_ms + shift, last_now)
        t = last_now + 100  # the 100 ms tick between the previous batch and this one
        while last_now and t < n:
            windows.extend(fin.due(t))
            t += 100
        fin.add(p, batch, n)
        windows.extend(fin.due(n))
        batch.clear()
        return n

    for _, offset, kts, raw in recs:
        try:
            o = SearchOutcome.from_dict(json.loads(raw or b"null"))
        except Exception:
            continue  # dead-lettered as invalid
        ts = kts if kts is not None else o.ts
        if batch and (len(batch) >= batch_max or ts - first > batch_span_ms or offset in stalls):
            last_now = flush(now, last_now)
        shift += stalls.get(offset, 0)
        if not batch:
            first = now = ts
        now = max(now, ts)
        batch.append(o)
    if batch:
        last_now = flush(now, last_now)
    if tick_until_ms is not None:
        t = last_now + 100
        while t <= tick_until_ms:
            windows.extend(fin.due(t))
            t += 100
    return windows
