"""Outcomes/s through the windows stage + merge step of ONE and of TWO `canary worker` processes, against
a raw aiokafka consume + decode of the same partitions in the same run.

Steps (all on a real broker, topics under a unique prefix per worker phase):

  a. produce N synthetic, valid SearchOutcome records onto <prefix>search_results the way routers do
     since issue #10: key = request id, partition = router.outcomes.outcome_partition(request_id, P)
     (crc32 mod P; P = the declared partitions of search_results, 6), one router ("bench-router") whose
     RouterWatermark records go to every partition: `start` before the first outcome, `running` every
     --watermark-every outcomes per partition (at most 1 s of event time apart, like a router's 50 ms
     tick) and a last `running` mark at the end of the span, so every window closes by watermark. A
     signed `start` command for the deployment goes onto the control topic first, so the worker
     thresholds the windows exactly as in production.
  b. raw baseline: a plain aiokafka consumer (no group, default fetch settings) reads all P partitions
     from the beginning and decodes each value with canary.pipeline.decode.OutcomeDecoder (the worker's
     decoder); outcomes and watermark records are counted apart.
  b'. the engine's pace on the same topic, same run: `kcat -C -f '%s\n'` (librdkafka, payloads through a
     pipe this process counts) and confluent-kafka's consume(10_000) (one C-built Message per record, each
     value's length read), nothing decoded; rates from the first record, CPU per record. Issue #24's target
     is the worker at ≥ 0.6 × kcat.
  c. ONE `canary worker` subprocess started AFTER producing, so it faces the whole backlog. Progress comes
     from the windows stage's committed source offsets (polled every 100 ms while the workers run; the stage
     commits them in its Kafka transactions, at most a commit interval apart; watermark records are subtracted):
        startup      spawn → first checkpoint with an applied offset (not in the rate)
        aggregation  first checkpoint → all applied (the earlier of the checkpoint covering the last offset
                     and the merged window completing Σ = N: both follow the last record); rate = outcomes
                     applied in between / that time (fetch, decode, WindowFinalizer.add, partial windows,
                     progress marks, checkpoints, commits: the whole stage loop)
        merged       first checkpoint → the merged window on canary_windows that completes
                     Σ response_count + Σ late_count = N (the merge step's output)
     ratio = aggregation rate / raw outcomes/s (issue #10 target ≥ 0.8).
  d. TWO `canary worker` subprocesses, spawned together on a fresh copy of the backlog (new prefix): the
     same figures, plus each worker's CPU (/proc/<pid>/stat utime+stime) in total and while aggregating,
     the outcomes it applied (attributed per partition from its "windows: acquired partitions" log lines
     and the checkpoints) and its CPU µs per outcome, and how busy the machine's cores were meanwhile —
     also over the part of the run in which every worker held windows partitions (the first to join takes
     all six until the next one's join moves some over).
  f. checkpoint size: a windows-stage state record holds bounded state (open windows, clocks, series), checked
     against the 16 MiB a record may have (CHECKPOINT_MAX_BYTES; warned up front); the request ids remembered
     for dedup are written apart, each once, as segments (streams/seen_segments.py): 8 B a request, projected
     for this run's busiest partition (what its restore reads).
  e. in-process, no Kafka: OutcomeDecoder.decode, WindowFinalizer.add, due + partial windows + progress
     (JSON as the stage emits them), the per-batch state snapshot, and WindowMerger (parse + add + due)
     over P partitions, in micro-batches of 2000 and of --core-small-batch.

Every merged window (Kafka phases and in-process) is checked: it counts exactly the outcomes whose ts
falls into it, none late, one window per (key, slot).

    .venv/bin/python -m bench.bench_aggregation [--outcomes 300000] [--deployments 1|20] [--quick] [--json]
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import math
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.common import (
    base_parser,
    control_keys,
    delete_prefixed_topics,
    emit,
    fmt_rate,
    kafka,
    loadavg,
    log,
    machine,
    now_ms,
    process_cpu_s,
    rate,
    sigterm_as_exit,
    unique_prefix,
)
from canary.core.jsonio import dumps, loads
from canary.core.merge import Progress, WindowMerger, merge_all, parse_merge_record, partial_of
from canary.core.models import RouterWatermark, SearchOutcome, WindowKey, WindowResult
from canary.core.slo import default_policy
from canary.core.split import user_group
from canary.core.windows import DEFAULT_DEDUP_RETENTION_MS, WindowFinalizer
from canary.kafka.clients import Cluster, as_connection, client_kwargs
from canary.kafka.topics import CHECKPOINT_MAX_BYTES, Topics, ensure_topics
from canary.pipeline.decode import OutcomeDecoder, as_core_outcomes
from canary.pipeline.memory import request_memory
from canary.pipeline.policies import aggregator_for_policy
from devtools.harness import PRESETS, WorkerProcess, send_command, start_command
from router.outcomes import outcome_partition
from streams.transactional import COMMIT_INTERVAL_MS

TARGET_RATIO = 0.8  # issue #10: one worker on 6 partitions ≥ 0.8 × raw consume+decode
TARGET_KCAT_RATIO = 0.6  # issue #24: one worker ≥ 0.6 × kcat reading the same topic with payloads
TARGET_RATE = 30_000.0  # the earlier single-worker target, still printed
WINDOW_MS = 5000
GRACE_MS = 1000
CANDIDATE = "candidate_high_recall"
ROUTER_ID = "bench-router"
BATCH = 2000  # micro-batch size for the in-process core measurement
WATERMARK_MAX_GAP_MS = 1000  # event time between two watermark ticks at most (future bound is 10 s)
# Sampling goes on this long after the last merged window (the last checkpoints follow it within a commit interval).
SETTLE_S = COMMIT_INTERVAL_MS / 1000 + 1.0
BURST_MS = 100  # checkpoint records closer than this are one checkpoint (one record per partition)


def declared_partitions(topics: Topics, name: str) -> int:
    return next(s.partitions for s in topics.specs() if s.name == name)


# -- signing keys: bench.common.control_keys


# -- synthetic outcomes ------------------------------------------------------------------------------------


def key_specs(deps: Sequence[str]) -> list[tuple[WindowKey, float]]:
    """(key, share of traffic): 80 % split evenly over the deployments, weight 0.2 inside each, plus 20 %
    outside any deployment: 2 × deployments + 1 window keys (1 deployment: 3 keys; 20: 41)."""
    share = 0.8 / len(deps)
    return [
        *(
            spec
            for dep in deps
            for spec in (
                (WindowKey(dep, CANDIDATE, "candidate"), share * 0.2),
                (WindowKey(dep, "last_good", "last_good"), share * 0.8),
            )
        ),
        (WindowKey(None, "last_good", "last_good"), 0.20),
    ]


def key_strings(deps: Sequence[str]) -> list[str]:
    return [k.as_str() for k, _ in key_specs(deps)]


def synth_outcomes(n: int, deps: Sequence[str], base_ms: int, span_ms: int, seed: int = 7) -> list[SearchOutcome]:
    rng = random.Random(seed)
    specs = key_specs(deps)
    keys = [k for k, _ in specs]
    weights = [w for _, w in specs]
    hashes = {k.config_name: PRESETS.get(k.config_name).content_hash for k in keys}
    versions = {k.config_name: PRESETS.get(k.config_name).to_dict()["metadata"]["version"] for k in keys}
    run = uuid.uuid4().hex[:8]
    chosen = rng.choices(keys, weights=weights, k=n)
    out = []
    for i, key in enumerate(chosen):
        error = "backend_error" if rng.random() < 0.005 else None
        slow = 1.25 if key.arm == "candidate" else 1.0
        latency = round(min(5000.0, rng.lognormvariate(math.log(120 * slow), 0.5)), 3)
        out.append(
            SearchOutcome(
                event_id=f"{ROUTER_ID}:{run}-{i}",
                request_id=f"{run}-{i}",
                ts=base_ms + (i * span_ms) // n,
                deployment_id=key.deployment_id,
                config_name=key.config_name,
                config_version=versions[key.config_name],
                config_hash=hashes[key.config_name],
                arm=key.arm,  # type: ignore[arg-type]
                latency_ms=latency,
                recall_at_10=None if error else round(rng.uniform(0.5, 0.95), 3),
                result_count=0 if error else 10,
                error=error,
                router_id=ROUTER_ID,
                user_group=user_group(f"{run}-{i}"),  # as a router sets it for a request without a user id
            )
        )
    return out


@dataclass
class Backlog:
    """What one router would have written to search_results: (partition, key, value, is_watermark)."""

    records: list[tuple[int, bytes, bytes, bool]]
    partitions: int
    outcomes: int
    watermarks: int  # watermark records (one per partition per tick)
    ticks: int
    end_ms: int  # the last watermark: the end of the span


def build_backlog(outcomes: Sequence[SearchOutcome], partitions: int, every: int, end_ms: int) -> Backlog:
    """Outcomes in ts order, keyed and partitioned like router.outcomes.OutcomePublisher.publish, and watermark
    ticks like its send_watermarks: `start` first, `running` every ``every`` outcomes per partition
    (or WATERMARK_MAX_GAP_MS of event time), `running` at ``end_ms`` last. A tick's watermark is just below
    the next outcome's ts: every outcome stamped earlier is already on its partition."""
    records: list[tuple[int, bytes, bytes, bool]] = []
    seq = 0
    ticks = 0

    def tick(status: str, watermark: int) -> None:
        nonlocal seq, ticks
        seq += 1
        ticks += 1
        value = orjson.dumps(RouterWatermark(ROUTER_ID, max(0, watermark), status, seq).to_dict())  # type: ignore[arg-type]
        records.extend((p, ROUTER_ID.encode(), value, True) for p in range(partitions))

    tick("start", outcomes[0].ts - 1)
    since, last_tick_ts = 0, outcomes[0].ts
    for o in outcomes:
        if since >= every * partitions or o.ts - last_tick_ts >= WATERMARK_MAX_GAP_MS:
            tick("running", o.ts - 1)
            since, last_tick_ts = 0, o.ts
        records.append(
            (outcome_partition(o.request_id, partitions), o.request_id.encode(), orjson.dumps(o.to_dict()), False)
        )
        since += 1
    tick("running", end_ms)
    return Backlog(records, partitions, len(outcomes), ticks * partitions, ticks, end_ms)


def window_truth(outcomes: Sequence[SearchOutcome]) -> Counter[tuple[str, int]]:
    return Counter((o.window_key.as_str(), o.ts - o.ts % WINDOW_MS) for o in outcomes)


def check_windows(windows: Sequence[WindowResult], truth: Counter[tuple[str, int]]) -> dict[str, Any]:
    """Every merged window counts exactly its outcomes, none late, and the windows account for all."""
    wrong = [w.window_id for w in windows if w.response_count != truth.get((w.key.as_str(), w.window_start_ms), 0)]
    late = sum(w.late_count for w in windows)
    counted = sum(w.response_count for w in windows)
    expected = sum(truth.values())
    slots = {(w.key.as_str(), w.window_start_ms) for w in windows}
    missing = [k for k in truth if k not in slots]
    return {
        "windows": len(windows),
        "non_empty": sum(1 for w in windows if w.response_count),
        "counted": counted,
        "expected": expected,
        "late": late,
        "wrong_windows": wrong[:10],
        "wrong_count": len(wrong),
        "missing_slots": len(missing),
        "ok": not wrong and not missing and late == 0 and counted == expected,
    }


# -- (a) produce -------------------------------------------------------------------------------------------


async def produce(bootstrap: Cluster, topic: str, backlog: Backlog) -> dict[str, Any]:
    """Returns the rate, outcomes per partition and the offsets of the watermark records per partition."""
    producer = AIOKafkaProducer(
        **client_kwargs(bootstrap), acks=1, linger_ms=10, max_batch_size=512 * 1024, max_request_size=4 << 20
    )
    await producer.start()
    by_partition: Counter[int] = Counter()
    wm_offsets: dict[int, list[int]] = {p: [] for p in range(backlog.partitions)}
    try:
        started = time.perf_counter()
        pending: list[tuple[bool, Any]] = []

        async def drain() -> None:
            metas = await asyncio.gather(*(f for _, f in pending))
            for (is_mark, _), meta in zip(pending, metas, strict=True):
                if is_mark:
                    wm_offsets[meta.partition].append(meta.offset)
                else:
                    by_partition[meta.partition] += 1
            pending.clear()

        for partition, key, value, is_mark in backlog.records:
            pending.append((is_mark, await producer.send(topic, value, key=key, partition=partition)))
            if len(pending) >= 20_000:
                await drain()
        await drain()
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
    for offsets in wm_offsets.values():
        offsets.sort()
    return {
        "seconds": elapsed,
        "rate": rate(len(backlog.records), elapsed),
        "by_partition": dict(sorted(by_partition.items())),
        "watermark_offsets": wm_offsets,
    }


def outcomes_in(wm_offsets: Sequence[int], records_applied: int) -> int:
    """Outcomes among the first ``records_applied`` records of a partition (watermark records excluded)."""
    return records_applied - bisect.bisect_right(wm_offsets, records_applied - 1)


# -- (b) raw consumer --------------------------------------------------------------------------------------


async def raw_consume(bootstrap: Cluster, topic: str, partitions: int) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(**client_kwargs(bootstrap), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        total = sum(ends.values())
        decoder = OutcomeDecoder()
        records = outcomes = marks = 0
        cpu0 = time.process_time()
        started = time.perf_counter()
        while records < total:
            batch = await consumer.getmany(timeout_ms=1000)
            for recs in batch.values():
                for record in recs:
                    if isinstance(decoder.decode(record.value), RouterWatermark):
                        marks += 1
                    else:
                        outcomes += 1
                records += len(recs)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
    finally:
        await consumer.stop()
    return {
        "records": records,
        "outcomes": outcomes,
        "watermarks": marks,
        "seconds": elapsed,
        "rate": rate(outcomes, elapsed),
        "records_rate": rate(records, elapsed),
        "cpu_us_per_outcome": cpu * 1e6 / outcomes if outcomes else math.nan,
        "cores_busy": cpu / elapsed if elapsed > 0 else math.nan,
    }


def _plaintext(bootstrap: Cluster) -> str | None:
    """The address, if the cluster takes PLAINTEXT clients (the raw readers below carry no credentials)."""
    conn = as_connection(bootstrap)
    return conn.bootstrap if conn.security.protocol == "PLAINTEXT" else None


def kcat_read(bootstrap: Cluster, topic: str, records: int) -> dict[str, Any]:
    """The engine's own pace: ``kcat`` (librdkafka) reads every partition from the beginning to its end with
    the payloads (``-f '%s\\n'`` into a pipe this process drains and counts), nothing decoded. The rate runs
    from the first bytes out (like the worker's, from its first checkpoint: no process start or metadata);
    CPU is the child's user+system time, start included."""
    address = _plaintext(bootstrap)
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if address is None or kcat is None:
        return {"skipped": "kcat not installed" if kcat is None else "the cluster is not PLAINTEXT"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [kcat, "-C", "-b", address, "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%s\n"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    lines = 0
    payload = 0
    first: float | None = None  # like the worker's figure, the rate runs from the first record (no startup)
    while chunk := proc.stdout.read1(1 << 20):
        if first is None:
            first = time.perf_counter()
        lines += chunk.count(b"\n")
        payload += len(chunk)
    code = proc.wait()
    end = time.perf_counter()
    elapsed = end - (first if first is not None else started)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "exit_code": code,
        "records": lines,
        "complete": lines >= records,
        "payload_bytes": payload,
        "seconds": elapsed,
        "seconds_with_start": end - started,
        "records_rate": rate(lines, elapsed),
        "cpu_us_per_record": cpu * 1e6 / lines if lines else math.nan,
    }


def confluent_read(bootstrap: Cluster, topic: str, partitions: int, records: int) -> dict[str, Any]:
    """confluent-kafka (librdkafka under Python): ``consume(10_000)`` batches from the beginning of every
    partition, each value touched (its length summed), nothing decoded: one C-built Message per record."""
    address = _plaintext(bootstrap)
    try:
        from confluent_kafka import Consumer
        from confluent_kafka import TopicPartition as CTopicPartition
    except ImportError:
        return {"skipped": "confluent-kafka not installed (pip install -e '.[dev]')"}
    if address is None:
        return {"skipped": "the cluster is not PLAINTEXT"}
    consumer = Consumer(
        {
            "bootstrap.servers": address,
            "group.id": f"bench-raw-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.queue.backoff.ms": 0,
        }
    )
    try:
        consumer.assign([CTopicPartition(topic, p, 0) for p in range(partitions)])
        seen = payload = 0
        started = time.perf_counter()
        deadline = started + 120
        first: float | None = None  # the rate runs from the first record, as the worker's does
        cpu0 = time.process_time()
        while seen < records and time.perf_counter() < deadline:
            messages = consumer.consume(10_000, 1.0)
            if first is None and messages:
                first, cpu0 = time.perf_counter(), time.process_time()
            for message in messages:
                if message.error() is None:
                    seen += 1
                    payload += len(message.value() or b"")
        end = time.perf_counter()
        elapsed = end - (first if first is not None else started)
        cpu = time.process_time() - cpu0
    finally:
        consumer.close()
    return {
        "records": seen,
        "complete": seen >= records,
        "payload_bytes": payload,
        "seconds": elapsed,
        "seconds_with_start": end - started,
        "records_rate": rate(seen, elapsed),
        "cpu_us_per_record": cpu * 1e6 / seen if seen else math.nan,
    }


QUIX_VERSION = "3.28.1"
QUIX_VENV = Path.home() / ".cache" / "canary" / "bench" / f"quixstreams-{QUIX_VERSION}"
"""Where the quix-streams job's virtualenv lives: outside the repository, made on first use. quixstreams pins
pydantic < 2.14 and confluent-kafka < 2.13, older than canary's, so it cannot share canary's venv."""


def quix_python() -> Path | str:
    """The quix-streams venv's python (made and filled on first use), or why there is none."""
    python = QUIX_VENV / "bin" / "python"
    if python.exists():
        return python
    log(f"    installing quixstreams {QUIX_VERSION} into {QUIX_VENV} (once) ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(QUIX_VENV)], check=True, capture_output=True, timeout=120)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"quixstreams=={QUIX_VERSION}"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(QUIX_VENV, ignore_errors=True)
        return f"could not install quixstreams {QUIX_VERSION}: {str(exc)[:200]}"
    return python


def quix_job(bootstrap: Cluster, topic: str, outcomes: int, timeout_s: float) -> dict[str, Any]:
    """A quix-streams tumbling-window job on the same topic (bench/quix_job.py, in its own venv): JSON values, event
    time from ``ts``, watermark records filtered out, re-keyed by window key (``group_by``, a repartition topic) and
    a 5 s tumbling window (1 s grace, canary's) of count, mean and max latency per key. Its rate runs from its first
    record to the last outcome reaching the window step."""
    address = _plaintext(bootstrap)
    if address is None:
        return {"skipped": "the cluster is not PLAINTEXT"}
    python = quix_python()
    if isinstance(python, str):
        return {"skipped": python}
    job = Path(__file__).with_name("quix_job.py")
    argv = [str(python), str(job), "--bootstrap", address, "--topic", topic, "--outcomes", str(outcomes)]
    argv += ["--window-ms", str(WINDOW_MS), "--grace-ms", str(GRACE_MS), "--timeout-s", str(timeout_s)]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout_s + 60, text=True)
    except subprocess.TimeoutExpired:
        return {"skipped": f"the quix-streams job did not finish in {timeout_s + 60:.0f} s"}
    try:
        got: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"skipped": f"the quix-streams job failed (exit {done.returncode}): {done.stderr.strip()[-300:]}"}
    if not got.get("complete") or not got.get("seconds"):
        return {"skipped": f"the quix-streams job aggregated {got.get('outcomes')} of {outcomes} outcomes"}
    got["outcomes_rate"] = rate(outcomes, got["seconds"])
    got["cpu_us_per_outcome"] = got["cpu_s"] * 1e6 / outcomes
    return got


# -- (c, d) workers ----------------------------------------------------------------------------------------


def proc_stat() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine (/proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


@dataclass
class Samples:
    """CPU samples taken while waiting for the merged windows."""

    workers: list[list[tuple[int, float]]]  # per worker: (wall ms, CPU s)
    machine: list[tuple[int, int, int]] = field(default_factory=list)  # (wall ms, busy, total jiffies)

    def take(self, workers: Sequence[WorkerProcess]) -> None:
        t = now_ms()
        for w, series in zip(workers, self.workers, strict=True):
            used = process_cpu_s(w.proc.pid) if w.proc is not None else None
            if used is not None:
                series.append((t, used))
        st = proc_stat()
        if st is not None:
            self.machine.append((t, *st))


def at(series: Sequence[tuple[int, float]], t: int) -> float | None:
    """Linear interpolation of a sampled counter at wall time ``t``."""
    if not series or t < series[0][0] or t > series[-1][0]:
        return None
    i = bisect.bisect_left([s[0] for s in series], t)
    if series[i][0] == t or i == 0:
        return series[i][1]
    (t0, v0), (t1, v1) = series[i - 1], series[i]
    return v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def machine_cores_busy(samples: Sequence[tuple[int, int, int]], t0: int, t1: int, cpus: int) -> float | None:
    inside = [s for s in samples if t0 <= s[0] <= t1]
    if len(inside) < 2 or inside[-1][2] == inside[0][2]:
        return None
    return (inside[-1][1] - inside[0][1]) / (inside[-1][2] - inside[0][2]) * cpus


async def watch_windows(
    bootstrap: Cluster,
    topic: str,
    partitions: int,
    keys: set[str],
    expected: int,
    timeout_s: float,
    workers: Sequence[WorkerProcess],
) -> tuple[dict[str, Any], dict[str, WindowResult], Samples]:
    """Follow the windows topic until the merged windows of our keys account for every outcome."""
    consumer = AIOKafkaConsumer(**client_kwargs(bootstrap), group_id=None, enable_auto_commit=False)
    await consumer.start()
    samples = Samples([[] for _ in workers])
    windows: dict[str, WindowResult] = {}
    duplicates = 0
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        counted = 0
        first_emit: int | None = None
        done_emit: int | None = None
        exited: str | None = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and exited is None:
            for i, w in enumerate(workers):
                if w.proc is not None and w.proc.poll() is not None:
                    exited = f"worker {i} exited with code {w.proc.returncode} before the windows were complete"
                    log(f"{exited}; log tail:\n{w.log_tail(40)}")
            samples.take(workers)
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for record in records:
                    win = WindowResult.from_dict(json.loads(record.value))
                    if win.key.as_str() not in keys:
                        continue
                    if win.window_id in windows:
                        duplicates += 1  # the merge step promises one window per key and slot
                        continue
                    windows[win.window_id] = win
                    counted += win.response_count + win.late_count
                    first_emit = win.emitted_at_ms if first_emit is None else min(first_emit, win.emitted_at_ms)
                    if done_emit is None and counted >= expected:
                        done_emit = win.emitted_at_ms
            if done_emit is not None:
                break
        # The windows stage checkpoints at most a commit interval apart: keep sampling until its last one is out.
        settle = time.monotonic() + SETTLE_S
        while time.monotonic() < settle:
            samples.take(workers)
            await asyncio.sleep(0.1)
        samples.take(workers)
        return (
            {
                "complete": done_emit is not None,
                **({"error": exited} if exited else {}),
                "windows": len(windows),
                "duplicate_windows": duplicates,
                "first_window_emitted_ms": first_emit,
                "complete_window_emitted_ms": done_emit,
            },
            windows,
            samples,
        )
    finally:
        await consumer.stop()


class CommitWatch:
    """(wall ms, source partition, records applied) per change of the windows stage's committed offsets, polled
    every ``every_s`` while the workers run. The stage commits its source offsets in its Kafka transactions
    (docs/adr/0004-*.md), at most COMMIT_INTERVAL_MS apart; the committed offset of a partition is the number of its
    records the committed state holds."""

    def __init__(self, bootstrap: Cluster, group: str, topic: str, every_s: float = 0.1) -> None:
        self.bootstrap, self.group, self.topic, self.every_s = bootstrap, group, topic, every_s
        self.events: list[tuple[int, int, int]] = []
        self._last: dict[int, int] = {}

    async def run(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**client_kwargs(self.bootstrap))
        await admin.start()
        try:
            while True:
                try:
                    offsets = await admin.list_consumer_group_offsets(self.group)
                except Exception:  # the group's coordinator not known yet
                    offsets = {}
                at = now_ms()
                for tp, meta in offsets.items():
                    if tp.topic == self.topic and meta.offset >= 0 and self._last.get(tp.partition) != meta.offset:
                        self._last[tp.partition] = meta.offset
                        self.events.append((at, tp.partition, meta.offset))
                await asyncio.sleep(self.every_s)
        finally:
            await admin.close()


# `canary worker` logs "2026-11-27 10:00:00,123 WARNING canary.streams.stage: windows: acquired partitions [..]"
# (local time); Faust's own format brackets the time.
_ACQUIRED = re.compile(r"\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[,.](\d{3})\b.*windows: acquired partitions \[([\d, ]*)\]")


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # Faust's terminal codes (cursor show/hide) start some lines


def acquisitions(worker: WorkerProcess) -> list[tuple[int | None, list[int]]]:
    """(wall ms or None, partitions) per "windows: acquired partitions" line of the worker's log."""
    out: list[tuple[int | None, list[int]]] = []
    try:
        text = worker.log_path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if "windows: acquired partitions" not in line:
            continue
        m = _ACQUIRED.search(_ANSI.sub("", line))
        entry: tuple[int | None, list[int]]
        if m is not None:
            stamp = int(time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) * 1000) + int(m.group(2))
            entry = (stamp, [int(p) for p in m.group(3).split(",") if p.strip()])
        else:
            held = line.split("acquired partitions [", 1)[1].split("]", 1)[0]
            entry = (None, [int(p) for p in held.split(",") if p.strip()])
        if not out or out[-1] != entry:  # the same line through two handlers
            out.append(entry)
    return out


def holders(acq: Sequence[Sequence[tuple[int | None, list[int]]]]) -> tuple[dict[int, list[tuple[int, int]]], bool]:
    """Per source partition, (from wall ms, worker) in time order; False when the logs had no timestamps
    (then each partition goes to the worker that acquired it last)."""
    timed = all(t is not None for a in acq for t, _ in a)
    out: dict[int, list[tuple[int, int]]] = {}
    for w, lines in enumerate(acq):
        for t, parts in lines if timed else lines[-1:]:
            for p in parts:
                out.setdefault(p, []).append((t if t is not None else 0, w))
    for seq in out.values():
        seq.sort()
    return out, timed


def holder_at(seq: Sequence[tuple[int, int]], t: int) -> int | None:
    """The worker holding the partition at ``t`` (the latest acquisition at or before it), if any."""
    owner = None
    for since, w in seq:
        if since <= t:
            owner = w
    return owner


async def run_workers_phase(
    bootstrap: Cluster,
    topics: Topics,
    count: int,
    n: int,
    deps: Sequence[str],
    truth: Counter[tuple[str, int]],
    wm_offsets: dict[int, list[int]],
    tmp: Path,
    timeout_s: float,
    log_dir: Path | None = None,
) -> dict[str, Any]:
    keys = set(key_strings(deps))
    cpus = machine()["cpus"] or 1
    workers = [
        WorkerProcess(
            bootstrap,
            topics,
            tmp / f"audit-{count}w{i}.log",
            tmp / f"data-{count}w{i}",
            (log_dir or tmp) / f"worker-{topics.prefix}{count}w{i}.log",
            grace_ms=GRACE_MS,
        )
        for i in range(count)
    ]
    # StreamsConfig.app_id's default: the windows stage's group is <prefix>canary-streams-windows.
    commits = CommitWatch(bootstrap, f"{topics.prefix}canary-streams-windows", topics.search_results)
    watching = asyncio.create_task(commits.run())
    spawn_ms = now_ms()
    for w in workers:
        w.start()
    try:
        watched, windows, samples = await watch_windows(
            bootstrap, topics.windows, declared_partitions(topics, topics.windows), keys, n, timeout_s, workers
        )
    finally:
        watching.cancel()
        with contextlib.suppress(BaseException):
            await watching
        # Stopped together: one by one, the last would take over every partition on the way out.
        codes = await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers))
        for i, (w, code) in enumerate(zip(workers, codes, strict=True)):
            if code not in (0, None):
                log(f"worker {i} exited with code {code}; log tail:\n{w.log_tail(30)}")
    out: dict[str, Any] = {"workers": count, "spawn_ms": spawn_ms, **watched}
    out["sum_check"] = check_windows(list(windows.values()), truth)

    events = sorted(commits.events)
    out["checkpoints"] = len(events)
    if not events:
        out.setdefault("error", "no committed offsets of the windows stage seen")
        return out
    # Outcomes applied over time (watermark records taken out of the offsets).
    # One checkpoint writes a record per partition within a few ms: such a burst is one point of the curve.
    applied: dict[int, int] = {}
    curve: list[tuple[int, int]] = []
    burst_start: int | None = None
    for ts, p, recs in events:
        applied[p] = max(applied.get(p, 0), outcomes_in(wm_offsets.get(p, []), recs))
        if burst_start is not None and ts - burst_start <= BURST_MS:
            curve[-1] = (ts, sum(applied.values()))
        else:
            burst_start = ts
            curve.append((ts, sum(applied.values())))
    first_ts, first_n = curve[0]
    last_ts, full_n = next(((ts, c) for ts, c in curve if c >= n), curve[-1])
    done = watched["complete_window_emitted_ms"]
    # Both the checkpoint covering the last offset and the merged window completing Σ = N come only after
    # every record was applied (the last window closes on each partition's last record, a watermark): the
    # earlier of the two is the tighter bound on when aggregation ended.
    full_ts = min(last_ts, done) if done is not None and full_n >= n else last_ts
    agg_s = (full_ts - first_ts) / 1000
    out.update(
        first_batch_ms=first_ts,
        first_batch_outcomes=first_n,
        all_applied_ms=full_ts,
        last_offset_checkpoint_ms=last_ts,
        applied_total=full_n,
        startup_s=(first_ts - spawn_ms) / 1000,
        aggregation_s=agg_s,
        aggregation_rate=rate(full_n - first_n, agg_s),
    )
    lo = next((ts, c) for ts, c in curve if c >= 0.1 * n)
    hi = next(((ts, c) for ts, c in curve if c >= 0.9 * n), curve[-1])
    if hi[0] - lo[0] >= 1000:  # shorter is checkpoint resolution, not a rate
        out["steady_rate_10_90"] = rate(hi[1] - lo[1], (hi[0] - lo[0]) / 1000)
    if done is not None:
        out["merge_tail_s"] = (done - last_ts) / 1000
        out["first_batch_to_merged_s"] = (done - first_ts) / 1000
        out["first_batch_to_merged_rate"] = rate(n - first_n, out["first_batch_to_merged_s"])
        out["spawn_to_merged_s"] = (done - spawn_ms) / 1000
    t_end = done if done is not None else full_ts
    out["machine_cores_busy"] = machine_cores_busy(samples.machine, first_ts, full_ts, cpus)

    # Who applied what: each checkpoint's progress goes to the worker holding that partition then.
    acq = [acquisitions(w) for w in workers]
    owners, timed = holders(acq)
    out["attribution"] = "log timestamps" if timed else "last assignment (log lines without timestamps)"
    deltas = progress_deltas(events, wm_offsets, owners)
    held = {i: held_at(owners, i, t_end) for i in range(count)} if timed else {}
    per = worker_figures(count, deltas, samples, first_ts, full_ts)
    for i, fig in enumerate(per):
        series = samples.workers[i]
        total_cpu = at(series, t_end)
        if total_cpu is None and series:
            total_cpu = series[-1][1]
        applied_all = sum(d for _, w, d in deltas if w == i)
        fig.update(
            final_partitions=held[i] if timed else (acq[i][-1][1] if acq[i] else []),
            acquisitions=sum(1 for t, _ in acq[i] if t is None or t <= t_end),
            first_acquired_ms=next((t for t, parts in acq[i] if parts), None),
            outcomes_applied=applied_all,
            cpu_s_total=total_cpu,
            cpu_us_per_outcome_total=total_cpu * 1e6 / applied_all if total_cpu and applied_all else None,
        )
    out["per_worker"] = per
    if count > 1:
        out["shared"] = shared_interval(out, owners, timed, deltas, samples, curve, n, cpus)
    return out


def progress_deltas(
    events: Sequence[tuple[int, int, int]], wm_offsets: dict[int, list[int]], owners: dict[int, list[tuple[int, int]]]
) -> list[tuple[int, int, int]]:
    """(checkpoint ms, worker, outcomes it newly applied) per checkpoint that moved a partition on."""
    out = []
    prev: dict[int, int] = {}
    for ts, p, recs in events:
        k = outcomes_in(wm_offsets.get(p, []), recs)
        delta = k - prev.get(p, 0)
        if delta <= 0:
            continue
        prev[p] = k
        seq = owners.get(p, [])
        owner = holder_at(seq, ts)
        if owner is None and seq:
            owner = seq[0][1]  # a checkpoint stamped just before the acquisition was logged
        if owner is not None:
            out.append((ts, owner, delta))
    return out


def worker_figures(
    count: int, deltas: Sequence[tuple[int, int, int]], samples: Samples, t0: int, t1: int
) -> list[dict[str, Any]]:
    """Per worker from t0 to t1 (when all was applied): outcomes applied after t0 (checkpoints after t1 still
    cover work done before it), CPU seconds, cores busy, CPU µs per outcome."""
    span_s = (t1 - t0) / 1000
    out = []
    for i in range(count):
        applied = sum(d for ts, w, d in deltas if w == i and ts > t0)
        c0, c1 = at(samples.workers[i], t0), at(samples.workers[i], t1)
        cpu = None if c0 is None or c1 is None else c1 - c0
        out.append(
            {
                "outcomes_in_interval": applied,
                "cpu_s_aggregating": cpu,
                "cores_busy_aggregating": cpu / span_s if cpu is not None and span_s > 0 else None,
                "cpu_us_per_outcome": cpu * 1e6 / applied if cpu is not None and applied else None,
            }
        )
    return out


def held_at(owners: dict[int, list[tuple[int, int]]], worker: int, t: int) -> list[int]:
    return sorted(p for p, seq in owners.items() if holder_at(seq, t) == worker)


def shared_interval(
    phase: dict[str, Any],
    owners: dict[int, list[tuple[int, int]]],
    timed: bool,
    deltas: Sequence[tuple[int, int, int]],
    samples: Samples,
    curve: Sequence[tuple[int, int]],
    n: int,
    cpus: int,
) -> dict[str, Any]:
    """The part of the run in which every worker held windows partitions: the workers start one by one,
    and the first to join takes all partitions until the next one's join moves some over."""
    count = phase["workers"]
    full_ts = phase["all_applied_ms"]
    if not timed:
        return {"error": "worker logs without timestamps: cannot tell when the partitions were shared"}
    times = sorted({t for seq in owners.values() for t, _ in seq})
    start = next((t for t in times if all(held_at(owners, i, t) for i in range(count))), None)
    if start is None or start >= full_ts:
        return {
            "error": f"the backlog was drained before all {count} workers held windows partitions "
            "(raise --outcomes so the run outlasts the workers' start-up skew)"
        }
    before = max((c for ts, c in curve if ts <= start), default=0)
    span_s = (full_ts - start) / 1000
    per = worker_figures(count, deltas, samples, start, full_ts)
    for i, fig in enumerate(per):
        fig["partitions"] = held_at(owners, i, start)
    return {
        "from_ms": start,
        "starts_after_first_checkpoint_s": (start - phase["first_batch_ms"]) / 1000,
        "outcomes": n - before,
        "seconds": span_s,
        "rate": rate(n - before, span_s),
        "machine_cores_busy": machine_cores_busy(samples.machine, start, full_ts, cpus),
        "per_worker": per,
    }


# -- (e) core, in-process ----------------------------------------------------------------------------------


@dataclass
class CoreInput:
    streams: dict[int, list[bytes]]  # per partition, the values in partition order (offset = index)
    outcomes: int
    watermarks: int
    truth: Counter[tuple[str, int]]


def core_input(outcomes: Sequence[SearchOutcome], partitions: int, every: int) -> CoreInput:
    end = outcomes[-1].ts - outcomes[-1].ts % WINDOW_MS + WINDOW_MS
    backlog = build_backlog(outcomes, partitions, every, end)
    streams: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    for p, _key, value, _mark in backlog.records:
        streams[p].append(value)
    return CoreInput(streams, backlog.outcomes, backlog.watermarks, window_truth(outcomes))


def decode_pass(inp: CoreInput, strict: bool) -> tuple[dict[int, list[SearchOutcome | RouterWatermark]], float]:
    decoder = OutcomeDecoder(strict=strict)
    out: dict[int, list[SearchOutcome | RouterWatermark]] = {}
    t = time.process_time()
    for p, values in inp.streams.items():
        out[p] = [decoder.decode(v) for v in values]
    return out, time.process_time() - t


def finalize_pass(
    decoded: dict[int, list[SearchOutcome | RouterWatermark]], inp: CoreInput, batch: int
) -> dict[str, Any]:
    """One WindowFinalizer per partition fed outcomes + watermark records in partition order, micro-batch by
    micro-batch (partitions round-robin), as the windows stage does: add, then due_closed → partial
    windows + a progress mark (JSON-encoded like the stage's records), the state snapshot it checkpoints,
    and the merge step's WindowMerger (parse + add + due) on those records as they come."""
    partitions = len(decoded)
    aggregator = aggregator_for_policy(default_policy())  # the windows stage no longer judges
    fins = {p: WindowFinalizer(WINDOW_MS, GRACE_MS, 12, aggregator=lambda _k: aggregator) for p in decoded}
    merger = WindowMerger(partitions)
    cursors = dict.fromkeys(decoded, 0)
    closed_sent: dict[int, int] = {}
    add_s = emit_s = snap_s = merge_s = 0.0
    snap_max = (0, 0)  # (largest state snapshot in bytes, requests it remembered for dedup)
    batches = partials = marks = late = future = dups = 0
    merged: list[WindowResult] = []
    all_partials: list[tuple[int, Any, Any]] = []
    while any(cursors[p] < len(decoded[p]) for p in decoded):
        for p, items in decoded.items():
            i = cursors[p]
            if i >= len(items):
                continue
            chunk = items[i : i + batch]
            cursors[p] = i + len(chunk)
            batches += 1
            fin = fins[p]
            now = now_ms()
            t0 = time.process_time()
            res = fin.add(p, as_core_outcomes(chunk), now)
            t1 = time.process_time()
            out: list[bytes] = []
            for window in fin.due_closed(now):
                out.append(dumps(partial_of(window, window.aggregate, p).to_dict()))
                all_partials.append((p, window, window.aggregate))
            partials += len(out)
            wm = fin.watermark
            if wm is not None:
                closed = wm - wm % WINDOW_MS
                if out or closed_sent.get(p) != closed:
                    out.append(dumps(Progress(p, closed).to_dict()))
                    closed_sent[p] = closed
                    marks += 1
            t2 = time.process_time()
            size = len(dumps(fin.to_dict()))
            t3 = time.process_time()
            if size > snap_max[0]:
                snap_max = (size, fin.remembered_requests)
            for raw in out:
                merger.add(parse_merge_record(loads(raw)))
            merged.extend(merger.due(now))
            t4 = time.process_time()
            add_s += t1 - t0
            emit_s += t2 - t1
            snap_s += t3 - t2
            merge_s += t4 - t3
            late += len(res.late)
            future += len(res.future)
            dups += res.duplicates
    n = inp.outcomes
    check = check_windows(merged, inp.truth)
    shortcut = merge_all(all_partials)
    agree = sorted((w.window_id, w.response_count) for w in shortcut) == sorted(
        (w.window_id, w.response_count) for w in merged
    )
    return {
        "batch": batch,
        "batches": batches,
        "partials": partials,
        "progress_marks": marks,
        "merged_windows": len(merged),
        "pending_in_merger": merger.pending_windows,
        "late": late,
        "future": future,
        "duplicates": dups,
        "sum_check": check,
        "merge_all_agrees": agree,
        "add_us": add_s / n * 1e6,
        "emit_us": emit_s / n * 1e6,
        "state_snapshot_us": snap_s / n * 1e6,
        "merge_us": merge_s / n * 1e6,
        "snapshot_max_bytes": snap_max[0],
        "snapshot_max_remembered": snap_max[1],
    }


def native_pass(inp: CoreInput, batch: int) -> dict[str, Any] | None:
    """The native batch core's path (what the windows stage runs when canary_native is built): decode_columns and
    add_columns (with the native request memory) per micro-batch, timed apart, and whether the finalizers end in
    the object path's state."""
    decoder = OutcomeDecoder(native="auto")
    if decoder.native is None:
        return None
    reference = OutcomeDecoder()
    aggregator = aggregator_for_policy(default_policy())
    decode_s = add_s = 0.0
    same = True
    now = now_ms()
    for p, values in inp.streams.items():
        # The native request memory too, as the stage takes it (canary.pipeline.memory); the reference beside it.
        fin = WindowFinalizer(WINDOW_MS, GRACE_MS, 12, aggregator=lambda _k: aggregator, memory=request_memory("auto"))
        ref = WindowFinalizer(WINDOW_MS, GRACE_MS, 12, aggregator=lambda _k: aggregator)
        for i in range(0, len(values), batch):
            chunk = values[i : i + batch]
            t0 = time.process_time()
            columns, _refused = decoder.decode_columns(chunk)
            t1 = time.process_time()
            assert columns is not None, "the bench's records are all ordinary outcomes and watermark records"
            fin.add_columns(p, columns, now)
            t2 = time.process_time()
            decode_s += t1 - t0
            add_s += t2 - t1
            ref.add(p, [reference.decode(v) for v in chunk], now)
        same = same and fin.to_dict() == ref.to_dict()
    n = inp.outcomes
    return {"batch": batch, "decode_us": decode_s / n * 1e6, "add_us": add_s / n * 1e6, "same_state": same}


def core_bench(outcomes: Sequence[SearchOutcome], partitions: int, every: int, small_batch: int) -> dict[str, Any]:
    inp = core_input(outcomes, partitions, every)
    n = inp.outcomes
    decoded, decode_s = decode_pass(inp, strict=False)
    _, strict_s = decode_pass(inp, strict=True)
    passes = {}
    for b in (BATCH, small_batch):
        f = finalize_pass(decoded, inp, b)
        f["decode_us"] = decode_s / n * 1e6
        f["total_us"] = f["decode_us"] + f["add_us"] + f["emit_us"] + f["state_snapshot_us"] + f["merge_us"]
        f["core_ceiling"] = 1e6 / f["total_us"] if f["total_us"] else math.nan
        passes[str(b)] = f
    return {
        "outcomes": n,
        "watermark_records": inp.watermarks,
        "partitions": partitions,
        "decode_us": decode_s / n * 1e6,
        "decode_rate": rate(n, decode_s),
        "strict_decode_us": strict_s / n * 1e6,
        "passes": passes,
        "native": [x for b in (BATCH, small_batch) if (x := native_pass(inp, b)) is not None],
    }


CHECKPOINT_LIMIT = CHECKPOINT_MAX_BYTES  # the stage producer's max_request_size and the topic's max.message.bytes
DEDUP_HORIZON_S = (DEFAULT_DEDUP_RETENTION_MS + WINDOW_MS) / 1000  # remembered this long after its window


def checkpoint_estimate(sample: Sequence[SearchOutcome], per_partition: int, span_s: float) -> dict[str, Any]:
    """A windows-stage state record holds state that stays bounded (open windows, clocks, series); the request
    ids its partition remembers for dedup (60 s after the request's window) are written apart as segments, 8 B a
    request, each once (streams/seen_segments.py). Measured on a sample in one finalizer: the record's bytes;
    the memory projected for ``per_partition`` outcomes over ``span_s`` of event time."""
    aggregator = aggregator_for_policy(default_policy())
    fin = WindowFinalizer(WINDOW_MS, GRACE_MS, 12, aggregator=lambda _k: aggregator)
    fin.add(0, sample, now_ms())
    rest = len(json.dumps(fin.to_dict(seen=False)))
    per_entry = 8.0  # a request key, raw little-endian uint64, in one segment
    remembered = per_partition * (min(1.0, DEDUP_HORIZON_S / span_s) if span_s > 0 else 1.0)
    return {
        "bytes_per_remembered_request": per_entry,
        "bounded_state_bytes": rest,
        "busiest_partition_outcomes": per_partition,
        "remembered": round(remembered),
        "memory_bytes": per_entry * remembered,
        "projected_bytes": rest,
        "limit_bytes": CHECKPOINT_LIMIT,
        "over_limit": rest > CHECKPOINT_LIMIT,
    }


# -- main --------------------------------------------------------------------------------------------------


async def prepare(bootstrap: Cluster, topics: Topics, deps: Sequence[str], backlog: Backlog) -> dict[str, Any]:
    await asyncio.to_thread(ensure_topics, bootstrap, topics)
    for dep in deps:  # each deployment started, so the worker judges every key as in production
        await send_command(bootstrap, topics, start_command(CANDIDATE, weight=0.2, deployment_id=dep))
    return await produce(bootstrap, topics.search_results, backlog)


def run(args: Any) -> dict[str, Any]:
    n = args.n
    span_ms = int(args.span_s * 1000)
    if args.deployments < 1:
        raise SystemExit(f"--deployments must be at least 1, got {args.deployments}")
    run_id = uuid.uuid4().hex[:6]
    deps = [f"canary_bench{run_id}{i:02d}" for i in range(args.deployments)]
    keys = sorted(key_strings(deps))
    result: dict[str, Any] = {"benchmark": "aggregation", "machine": machine(), "n": n, "span_s": args.span_s}
    result["deployments"] = args.deployments

    with kafka() as target, tempfile.TemporaryDirectory(prefix="canary-bench-agg-") as tmp_text:
        tmp = Path(tmp_text)
        result["kafka"] = target.describe()
        phases = [Topics(unique_prefix("agg"))]
        if not args.skip_two:
            phases.append(Topics(unique_prefix("agg2w")))
        result["topic_prefixes"] = [t.prefix for t in phases]
        partitions = declared_partitions(phases[0], phases[0].search_results)
        result["partitions"] = partitions
        base = now_ms() - span_ms - 2 * WINDOW_MS
        base -= base % WINDOW_MS
        log(f"building {n:,} outcomes over {args.span_s:g} s of event time, keys {keys}")
        outcomes = synth_outcomes(n, deps, base, span_ms)
        backlog = build_backlog(outcomes, partitions, args.watermark_every, base + span_ms)
        truth = window_truth(outcomes)
        result["watermark_records"] = backlog.watermarks
        result["watermark_ticks"] = backlog.ticks
        result["avg_record_bytes"] = round(sum(len(k) + len(v) for _, k, v, m in backlog.records if not m) / n, 1)
        busiest = max(Counter(p for p, _, _, m in backlog.records if not m).values())
        result["checkpoint_size"] = ckpt = checkpoint_estimate(outcomes[:6000], busiest, args.span_s)
        if ckpt["over_limit"]:
            log(
                f"WARNING: the windows-stage state record will reach ≈ {ckpt['projected_bytes'] / 1024:,.0f} KiB, "
                f"over the {CHECKPOINT_LIMIT // 1024} KiB a record may have: expect the worker to fail sending it"
            )
        try:
            with control_keys(tmp / "keys") as keys_from:
                result["control_keys"] = keys_from
                one = phases[0]
                log(
                    f"(a) producing {n:,} outcomes + {backlog.watermarks:,} watermark records onto {one.search_results}"
                )
                produced = asyncio.run(prepare(target.bootstrap, one, deps, backlog))
                wm_offsets = produced.pop("watermark_offsets")
                result["produce"] = produced
                log(
                    f"    {fmt_rate(produced['rate'])} records in {produced['seconds']:.1f}s {produced['by_partition']}"
                )

                log(f"(b) raw aiokafka consumer: read {partitions} partitions + OutcomeDecoder.decode each")
                raw = asyncio.run(raw_consume(target.bootstrap, one.search_results, partitions))
                result["raw_consumer"] = raw
                log(f"    {fmt_rate(raw['rate'])} outcomes ({raw['seconds']:.1f}s)")
                total_records = len(backlog.records)
                log("(b') the engine's pace on the same topic: kcat and confluent-kafka read every record, no decode")
                result["kcat"] = kcat_read(target.bootstrap, one.search_results, total_records)
                result["confluent"] = confluent_read(target.bootstrap, one.search_results, partitions, total_records)
                for name in ("kcat", "confluent"):
                    got = result[name]
                    if "records_rate" in got:
                        # Watermark records are read too: the same share of every reader's records is outcomes.
                        got["outcomes_rate"] = got["records_rate"] * n / total_records
                        log(f"    {name}: {fmt_rate(got['records_rate'])} records ({got['seconds']:.2f}s)")
                    else:
                        log(f"    {name}: skipped ({got['skipped']})")

                if args.skip_quix:
                    result["quix"] = {"skipped": "--skip-quix"}
                else:
                    log("(b'') a quix-streams tumbling-window job on the same topic (group_by + 5 s window)")
                    result["quix"] = quix_job(target.bootstrap, one.search_results, n, args.timeout_s)
                    got = result["quix"]
                    if "outcomes_rate" in got:
                        log(f"    quix-streams: {fmt_rate(got['outcomes_rate'])} outcomes ({got['seconds']:.2f}s)")
                    else:
                        log(f"    quix-streams: skipped ({got['skipped']})")

                log("(c) ONE `canary worker` subprocess on the backlog")
                result["one_worker"] = asyncio.run(
                    run_workers_phase(
                        target.bootstrap, one, 1, n, deps, truth, wm_offsets, tmp, args.timeout_s, args.logs_dir
                    )
                )
                if not result["one_worker"].get("complete"):
                    log(f"    the merged windows did not account for all {n} outcomes within {args.timeout_s:.0f}s")

                if not args.skip_two:
                    two = phases[1]
                    log(f"(d) producing the same backlog onto {two.search_results}")
                    produced2 = asyncio.run(prepare(target.bootstrap, two, deps, backlog))
                    log("    TWO `canary worker` subprocesses, spawned together")
                    result["two_workers"] = asyncio.run(
                        run_workers_phase(
                            target.bootstrap,
                            two,
                            2,
                            n,
                            deps,
                            truth,
                            produced2["watermark_offsets"],
                            tmp,
                            args.timeout_s,
                            args.logs_dir,
                        )
                    )
                    if not result["two_workers"].get("complete"):
                        log(f"    the merged windows did not account for all {n} outcomes within {args.timeout_s:.0f}s")
        finally:
            if target.external and not args.keep_topics:
                for t in phases:
                    delete_prefixed_topics(target.bootstrap, t.prefix)
        del backlog

    core_n = min(n, args.core_n)
    log(f"(e) in-process core on {core_n:,} outcomes over {partitions} partitions (no Kafka)")
    result["core"] = core_bench(outcomes[:core_n], partitions, args.watermark_every, args.core_small_batch)

    w1 = result["one_worker"]
    # Figures of a phase that did not finish (a worker died, the timeout) are not a rate.
    agg_rate = w1.get("aggregation_rate", math.nan) if w1.get("complete") else math.nan
    ratio = agg_rate / raw["rate"] if raw["rate"] else math.nan
    result["ratio_worker_to_raw"] = ratio
    merged_rate = w1.get("first_batch_to_merged_rate", math.nan)
    result["ratio_merged_to_raw"] = merged_rate / raw["rate"] if raw["rate"] else math.nan
    for name in ("kcat", "confluent", "quix"):
        engine = result.get(name, {}).get("outcomes_rate")
        result[f"ratio_worker_to_{name}"] = agg_rate / engine if engine else math.nan
    result["machine"]["loadavg_at_end"] = loadavg()
    result["targets"] = {
        "ratio_min": TARGET_RATIO,
        "ratio_met": bool(ratio >= TARGET_RATIO),
        "rate_min": TARGET_RATE,
        "rate_met": bool(agg_rate >= TARGET_RATE),
    }
    return result


def _f(value: Any, spec: str, width: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f"{value:{spec}}".rjust(width)


def _sum_line(check: dict[str, Any]) -> str:
    verdict = "OK" if check["ok"] else "FAILED"
    return (
        f"{verdict}: {check['windows']} windows ({check['non_empty']} non-empty), Σ response_count "
        f"{check['counted']:,} of {check['expected']:,}, late {check['late']}, wrong windows {check['wrong_count']}"
        f"{' ' + str(check['wrong_windows']) if check['wrong_windows'] else ''}, slots missing {check['missing_slots']}"
    )


def _checkpoint_line(c: dict[str, Any], core: dict[str, Any]) -> str:
    big = max(core["passes"].values(), key=lambda f: f["snapshot_max_bytes"])
    line = (
        f"  checkpoint size: state record ≈ {c['bounded_state_bytes'] / 1024:,.0f} KiB; request memory in segments, "
        f"{c['bytes_per_remembered_request']:.0f} B a request written once: this run's busiest partition "
        f"({c['busiest_partition_outcomes']:,} outcomes) ≈ {c['memory_bytes'] / 1024:,.0f} KiB "
        f"(largest in-process snapshot with the memory inline: {big['snapshot_max_bytes'] / 1024:,.0f} KiB with "
        f"{big['snapshot_max_remembered']:,} requests)"
    )
    if c["over_limit"]:
        line += (
            f" — the record is OVER the {c['limit_bytes'] // 1024:,} KiB a record may have (producer "
            "max_request_size): expect the windows stage to fail sending it"
        )
    return line


def _row(
    label: str, rate_: float | None, secs: float | None = None, us: float | None = None, cores: float | None = None
) -> str:
    return f"  {label:<46}{_f(rate_, ',.0f', 11)}{_f(secs, '.2f', 8)}{_f(us, '.1f', 13)}{_f(cores, '.2f', 11)}"


def _cpu_totals(per: Sequence[dict[str, Any]], seconds: float) -> tuple[float | None, float | None]:
    """CPU µs per outcome and cores busy of all workers together over an interval."""
    cpu = [p["cpu_s_aggregating"] for p in per]
    if any(c is None for c in cpu):
        return None, None
    applied = sum(p["outcomes_in_interval"] for p in per)
    total = sum(cpu)
    return (total * 1e6 / applied if applied else None), (total / seconds if seconds > 0 else None)


def render(r: dict[str, Any]) -> str:
    raw, core, t, m = r["raw_consumer"], r["core"], r["targets"], r["machine"]
    cpus = m["cpus"]
    head = f"  {'':<46}{'outcomes/s':>11}{'wall s':>8}{'CPU µs/outc.':>13}{'cores busy':>11}"
    lines = [
        f"machine: {cpus} CPUs, load average at start {m['loadavg_at_start']}, at end {m['loadavg_at_end']} "
        "(other work on the machine competes for the CPUs)",
        f"Aggregation — {r['n']:,} outcomes + {r['watermark_records']:,} router watermark records "
        f"({r['watermark_ticks']} ticks × {r['partitions']} partitions) over {r['span_s']:g} s of event time, "
        f"{r['deployments']} running deployment(s) = {2 * r['deployments'] + 1} window keys, "
        f"{r['avg_record_bytes']:.0f} B/outcome, {r['partitions']} partitions of search_results (key = request id)",
        f"  {r['kafka']}; prefixes {', '.join(r['topic_prefixes'])}; control keys: {r['control_keys']}",
        head,
        f"  {'produce (aiokafka acks=1, records incl. marks)':<46}{_f(r['produce']['rate'], ',.0f', 11)}"
        f"{_f(r['produce']['seconds'], '.2f', 8)}",
        f"  {'raw consume + OutcomeDecoder (bench process)':<46}{_f(raw['rate'], ',.0f', 11)}"
        f"{_f(raw['seconds'], '.2f', 8)}{_f(raw['cpu_us_per_outcome'], '.1f', 13)}{_f(raw['cores_busy'], '.2f', 11)}",
    ]
    readers = (("kcat", "kcat -C -f '%s\\n' (librdkafka, payloads)"), ("confluent", "confluent-kafka consume(10k)"))
    for name, label in readers:
        got = r.get(name, {})
        if "outcomes_rate" in got:
            lines.append(
                f"  {label:<46}{_f(got['outcomes_rate'], ',.0f', 11)}{_f(got['seconds'], '.2f', 8)}"
                f"{_f(got['cpu_us_per_record'], '.1f', 13)}   (per record; {got['records_rate']:,.0f} records/s)"
            )
        elif got:
            lines.append(f"  {label}: skipped ({got['skipped']})")
    quix = r.get("quix", {})
    label = "quix-streams group_by + 5 s tumbling window"
    if "outcomes_rate" in quix:
        lines.append(
            f"  {label:<46}{_f(quix['outcomes_rate'], ',.0f', 11)}{_f(quix['seconds'], '.2f', 8)}"
            f"{_f(quix['cpu_us_per_outcome'], '.1f', 13)}   ({quix['windows_emitted']} windows out)"
        )
    elif quix:
        lines.append(f"  {label}: skipped ({quix['skipped']})")
    for label, w in (("ONE worker", r["one_worker"]), ("TWO workers", r.get("two_workers"))):
        if w is None:
            continue
        if w.get("error"):
            lines.append(f"  {label}: ERROR {w['error']} (figures below cover what it did)")
        if "aggregation_rate" not in w:
            lines.append(f"  {label}: no figures")
            continue
        us, cores = _cpu_totals(w["per_worker"], w["aggregation_s"])
        lines.append(
            _row(f"{label}: first checkpoint → all applied*", w["aggregation_rate"], w["aggregation_s"], us, cores)
        )
        if "steady_rate_10_90" in w:
            lines.append(_row("    steady state, 10 % → 90 % applied", w["steady_rate_10_90"]))
        if w.get("complete"):
            lines.append(
                _row(
                    "    first checkpoint → all merged windows out",
                    w["first_batch_to_merged_rate"],
                    w["first_batch_to_merged_s"],
                )
            )
        shared = w.get("shared")
        if shared is not None and "rate" in shared:
            us, cores = _cpu_totals(shared["per_worker"], shared["seconds"])
            lines.append(
                _row("    all workers holding partitions → all applied", shared["rate"], shared["seconds"], us, cores)
            )
            for i, p in enumerate(shared["per_worker"]):
                who = f"      worker {i}: {p['outcomes_in_interval']:,} outcomes, partitions {p['partitions']}"
                lines.append(_row(who, None, None, p["cpu_us_per_outcome"], p["cores_busy_aggregating"]))
        elif shared is not None:
            lines.append(f"    {shared['error']}")
    lines.append(
        "  * all applied = the earlier of the checkpoint covering the last offset and the merged window that "
        f"completes Σ = N (both come only after the last record); checkpoints are ≤ {COMMIT_INTERVAL_MS} ms apart"
    )
    lines.append("")
    for label, w in (("ONE worker", r["one_worker"]), ("TWO workers", r.get("two_workers"))):
        if w is None or "aggregation_rate" not in w:
            continue
        lines.append(
            f"  {label}: startup {w['startup_s']:.2f} s (spawn → first checkpoint, not counted); "
            f"{w['checkpoints']} checkpoints; merged windows on canary_windows: "
            + (
                f"last one {w['merge_tail_s']:.2f} s after the checkpoint covering the last offset "
                f"(checkpoints are ≤ {COMMIT_INTERVAL_MS} ms apart, so this may be < 0), spawn → all out "
                f"{w['spawn_to_merged_s']:.2f} s"
                if w.get("complete")
                else "INCOMPLETE"
            )
        )
        lines.append(f"    sum check: {_sum_line(w['sum_check'])}; duplicate window ids {w['duplicate_windows']}")
        if len(w["per_worker"]) > 1:
            firsts = [p["first_acquired_ms"] for p in w["per_worker"]]
            skew = (max(firsts) - min(firsts)) / 1000 if all(f is not None for f in firsts) else None
            lines.append(
                f"    outcomes per worker from: {w['attribution']}; start-up skew (first windows partitions of "
                f"each worker) {_f(skew, '.2f', 0)} s"
            )
            for i, p in enumerate(w["per_worker"]):
                lines.append(
                    f"    worker {i}: CPU {_f(p['cpu_s_total'], '.2f', 0)} s in total (spawn → all merged out; "
                    f"{_f(p['cpu_us_per_outcome_total'], '.1f', 0)} µs per outcome it applied), "
                    f"{_f(p['cpu_s_aggregating'], '.2f', 0)} s first checkpoint → all applied; "
                    f"{p['outcomes_applied']:,} outcomes applied; {p['acquisitions']} acquisitions before all "
                    f"windows were out, then holding {p['final_partitions']}"
                )
        shared = w.get("shared")
        for what, interval in (("first checkpoint → all applied", w), ("all holding partitions", shared)):
            if interval is None or interval.get("machine_cores_busy") is None:
                continue
            busy = interval["machine_cores_busy"]
            mine = sum(p["cores_busy_aggregating"] or 0 for p in interval["per_worker"])
            lines.append(
                f"    cores, {what}: machine {busy:.2f} of {cpus} busy; worker process(es) {mine:.2f}; "
                f"everything else (broker, this bench, other work) {max(0.0, busy - mine):.2f}"
            )
    lines += [
        "",
        f"  ratio ONE worker / raw consume+decode   {r['ratio_worker_to_raw']:.2f}  (target ≥ {t['ratio_min']}: "
        f"{'MET' if t['ratio_met'] else 'NOT MET'}); counting the merge tail too: {r['ratio_merged_to_raw']:.2f}",
        f"  ONE worker ≥ {t['rate_min']:,.0f} outcomes/s (earlier target): {'MET' if t['rate_met'] else 'NOT MET'}",
        f"  ratio ONE worker / kcat (same topic, same run)   {r.get('ratio_worker_to_kcat', math.nan):.2f}  "
        f"(issue #24 target ≥ {TARGET_KCAT_RATIO}); / confluent-kafka "
        f"{r.get('ratio_worker_to_confluent', math.nan):.2f}; / the quix-streams job "
        f"{r.get('ratio_worker_to_quix', math.nan):.2f}",
        _checkpoint_line(r["checkpoint_size"], core),
        "",
        f"  core in-process (no Kafka), {core['outcomes']:,} outcomes + {core['watermark_records']:,} watermark "
        f"records over {core['partitions']} partitions, CPU µs per outcome (process time):",
    ]
    passes = list(core["passes"].values())
    lines.append(f"    {'micro-batch size':<40}" + "".join(f"{p['batch']:>10}" for p in passes))
    rows = [
        ("OutcomeDecoder.decode", "decode_us"),
        ("WindowFinalizer.add", "add_us"),
        ("due_closed + partials + progress", "emit_us"),
        ("WindowMerger parse + add + due", "merge_us"),
        ("state snapshot per batch (to_dict+JSON)", "state_snapshot_us"),
        ("sum", "total_us"),
    ]
    for label, k in rows:
        lines.append(f"    {label:<40}" + "".join(f"{p[k]:>10.2f}" for p in passes))
    lines.append(f"    {'core ceiling (outcomes/s)':<40}" + "".join(f"{p['core_ceiling']:>10,.0f}" for p in passes))
    lines.append(
        f"    (reference decode, OutcomeDecoder(strict=True) = json.loads + SearchOutcome.from_dict: "
        f"{core['strict_decode_us']:.2f} µs; the stage snapshots at most every {COMMIT_INTERVAL_MS} ms, not per batch)"
    )
    native = core.get("native") or []
    if native:
        lines.append(
            f"    {'native: decode_columns (canary_native)':<40}" + "".join(f"{x['decode_us']:>10.2f}" for x in native)
        )
        lines.append(
            f"    {'native: WindowFinalizer.add_columns':<40}" + "".join(f"{x['add_us']:>10.2f}" for x in native)
        )
        lines.append(
            f"    {'native: decode + add vs the two above':<40}"
            + "".join(
                f"{(x['decode_us'] + x['add_us']) / (p['decode_us'] + p['add_us']):>9.2f}×"
                for x, p in zip(native, passes, strict=True)
            )
            + f"   (same finalizer state as the object path: {all(x['same_state'] for x in native)})"
        )
    else:
        lines.append("    native decoder: not built (canary_native absent; `make install` builds it where cargo is)")
    for p in passes:
        lines.append(
            f"    batches of {p['batch']}: {p['partials']} partials, {p['progress_marks']} progress marks → "
            f"{p['merged_windows']} merged windows ({p['pending_in_merger']} left pending); late {p['late']}, "
            f"future {p['future']}, duplicates {p['duplicates']}; merge_all agrees: {p['merge_all_agrees']}"
        )
        lines.append(f"      sum check: {_sum_line(p['sum_check'])}")
    return "\n".join(lines)


def main() -> int:
    parser = base_parser("outcomes/s through one and two streams workers vs. a raw consume + decode")
    parser.add_argument("-n", "--outcomes", dest="n", type=int, default=None, help="outcomes (default 300000)")
    parser.add_argument("--quick", action="store_true", help="small run: 30000 outcomes, 20000 in-process")
    parser.add_argument("--span-s", type=float, default=60.0, help="event-time span of the outcomes (default 60)")
    parser.add_argument(
        "--deployments",
        type=int,
        default=1,
        help="running deployments, 2 window keys each plus traffic outside them (default 1: 3 keys; 20: 41 keys)",
    )
    parser.add_argument("--core-n", type=int, default=None, help="outcomes for the in-process part (default 100000)")
    parser.add_argument(
        "--core-small-batch", type=int, default=100, help="second core pass with batches this small (default 100)"
    )
    parser.add_argument(
        "--watermark-every",
        type=int,
        default=1000,
        help="a watermark tick every this many outcomes per partition (default 1000; at most 1 s of event time)",
    )
    parser.add_argument("--skip-two", action="store_true", help="skip the two-worker phase")
    parser.add_argument(
        "--skip-quix", action="store_true", help="skip the quix-streams job (its venv is made on first use)"
    )
    parser.add_argument("--timeout-s", type=float, default=240.0, help="give up on a worker phase after this long")
    parser.add_argument("--keep-topics", action="store_true", help="external Kafka: keep the run's topics")
    parser.add_argument("--logs-dir", type=Path, default=None, help="keep the workers' logs in this directory")
    args = parser.parse_args()
    if args.n is None:
        args.n = 30_000 if args.quick else 300_000
    if args.core_n is None:
        args.core_n = 20_000 if args.quick else 100_000
    if args.n < 1 or args.core_n < 1 or args.watermark_every < 1:
        parser.error("--outcomes, --core-n and --watermark-every must be positive")
    if args.logs_dir is not None:
        args.logs_dir.mkdir(parents=True, exist_ok=True)
    with sigterm_as_exit():
        result = run(args)
    emit(result, render(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
