"""Replay speed: recomputation in-process (raw records → windows, verdicts, decisions) and reading from Kafka.

Synthetic traffic: one deployment (candidate 16 %, its last_good 64 %) plus 20 % traffic outside any
deployment, each key on its own partition of 3, event times evenly spread at ``--rate`` outcomes/s
(so the replay's 50 ms micro-batches hold ``rate / 3 / 20`` records of a partition), Kafka timestamp =
event time + 3 ms, ~0.5 % errors, the candidate 25 % slower.

  1. in-process, no Kafka (``-n``, default 1M):
       decode       OutcomeDecoder (replay's fast path) vs json.loads + SearchOutcome.from_dict (reference)
       windows      WindowFinalizer add/due/flush + judge + SLO evaluation on already decoded outcomes
       recompute    canary.pipeline.recompute end to end on raw records (what `canary replay` runs), and the
                    same with strict decoding (reference objects) on a subset
  2. Kafka (``--kafka-n``, default 300k; KAFKA_BOOTSTRAP_SERVERS or a local broker started here): produce
     to a fresh topic prefix (explicit partitions and timestamps), then
       read         canary.replay.reader over the whole topic (raw records, no decoding)
       replay       read_span (all topics a replay reads) + run_replay on that span

    .venv/bin/python -m bench.bench_replay [-n 1000000] [--rate 50000] [--kafka-n 300000] [--profile] [--json]
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import json
import math
import pstats
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaProducer

from bench.common import (
    base_parser,
    delete_prefixed_topics,
    emit,
    fmt_rate,
    kafka,
    log,
    machine,
    now_ms,
    rate,
    sigterm_as_exit,
    unique_prefix,
)
from canary.core.models import ControlCommand, SearchOutcome
from canary.core.split import user_group
from canary.core.windows import WindowFinalizer
from canary.kafka.clients import client_kwargs
from canary.kafka.topics import Topics, ensure_topics
from canary.pipeline.decode import OutcomeDecoder
from canary.pipeline.loop import fold_commands
from canary.pipeline.policies import PolicyBook
from canary.pipeline.recompute import evaluate, recompute, recompute_partition
from canary.pipeline.settings import PipelineSettings
from canary.replay.postmortem import run_replay
from canary.replay.reader import new_consumer, read_outcome_records, read_span
from canary.runtime import reuse_freed_memory

TARGET_RECOMPUTE = 1_000_000.0  # issue #24 (it was 500k/s before)
TARGET_READ = 100_000.0
TARGET_REPLAY = 300_000.0  # issue #24: whole `canary replay`, Kafka read included
PARTITIONS = 3
CANDIDATE = "candidate_slow"

Record = tuple[int, int, int | None, bytes | None]


# -- synthetic data ----------------------------------------------------------------------------------------


def start_command(dep: str, at_ms: int) -> ControlCommand:
    def snap(name: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "version": "1.0.0"}, "slo": {"p95_ms": 1200, "recall_at_10": 0.3}}

    return ControlCommand(
        command_id=f"start-{dep}",
        type="start",
        deployment_id=dep,
        candidate_config=snap(CANDIDATE),
        candidate_config_hash="benchhash",
        last_good_config=snap("last_good"),
        weight=0.2,
        reason=None,
        evidence=None,
        issued_by="cli:bench",
        issued_at_ms=at_ms,
    )


def synth(n: int, per_s: float, base_ms: int, seed: int = 7) -> tuple[list[Record], str]:
    """``n`` raw outcome records over ``n / per_s`` seconds; returns records and the deployment id."""
    rng = random.Random(seed)
    dep = f"canary_bench{uuid.uuid4().hex[:6]}"
    keys = [
        (0, dep, CANDIDATE, "candidate", 1.25),
        (1, dep, "last_good", "last_good", 1.0),
        (2, None, "last_good", "last_good", 1.0),
    ]
    offsets = [0, 0, 0]
    run = uuid.uuid4().hex[:8]
    template = (
        '{"event_id": "bench-router:%s-%d", "request_id": "%s-%d", "ts": %d, "deployment_id": %s, '
        '"config_name": "%s", "config_version": "1.0.0", "config_hash": "benchhash", "arm": "%s", '
        '"latency_ms": %.3f, "recall_at_10": %s, "result_count": %d, "error": %s, "router_id": "bench-router", '
        '"user_group": %d}'
    )
    choices = rng.choices(range(3), weights=[0.16, 0.64, 0.20], k=n)
    log_mu = math.log(120)
    out: list[Record] = []
    for i, k in enumerate(choices):
        part, d, config, arm, slow = keys[k]
        ts = base_ms + int(i * 1000 / per_s)
        error = rng.random() < 0.005
        latency = min(5000.0, rng.lognormvariate(log_mu, 0.5) * slow)
        raw = template % (
            run,
            i,
            run,
            i,
            ts,
            f'"{d}"' if d else "null",
            config,
            arm,
            latency,
            "null" if error else f"{rng.uniform(0.5, 0.95):.3f}",
            0 if error else 10,
            '"backend_error"' if error else "null",
            user_group(f"{run}-{i}"),  # as a router sets it for a request without a user id
        )
        out.append((part, offsets[part], ts + 3, raw.encode()))
        offsets[part] += 1
    return out, dep


# -- in-process --------------------------------------------------------------------------------------------


class Predecoded:
    """A decoder stand-in returning outcomes decoded beforehand (to time windowing alone), by the identity of
    the record's value: the pipeline hands it the very bytes objects of ``records`` (which keep them alive)."""

    def __init__(self, table: dict[int, SearchOutcome]) -> None:
        self.table = table

    def decode(self, raw: bytes | None) -> SearchOutcome:
        return self.table[id(raw)]

    def decode_columns(self, values: object, offset_at: object = None) -> tuple[None, list[Any]]:
        return None, []  # objects already made: the windows pass below measures windows alone


def in_process(records: list[Record], commands: list[ControlCommand], strict_n: int, profile: bool) -> dict[str, Any]:
    n = len(records)
    settings = PipelineSettings()
    res: dict[str, Any] = {"n": n}

    dec = OutcomeDecoder()
    started = time.perf_counter()
    decoded = {id(raw): dec.decode(raw) for _, _, _, raw in records}
    s = time.perf_counter() - started
    res["decode_fast"] = {"seconds": s, "rate": rate(n, s)}
    log(f"decode (replay fast path): {fmt_rate(rate(n, s))}")

    native = OutcomeDecoder(native="auto")
    if native.native is not None:
        values = [raw for _, _, _, raw in records]
        started = time.perf_counter()
        for i in range(0, n, 16_384):
            native.decode_columns(values[i : i + 16_384])
        s = time.perf_counter() - started
        res["decode_native"] = {"seconds": s, "rate": rate(n, s)}
        log(f"decode (native columns, canary_native): {fmt_rate(rate(n, s))}")
    else:
        log("decode (native columns): canary_native is not built")

    sub = records[: min(n, strict_n)]
    started = time.perf_counter()
    for _, _, _, raw in sub:
        SearchOutcome.from_dict(json.loads(raw or b"null"))
    s = time.perf_counter() - started
    res["decode_reference"] = {"n": len(sub), "seconds": s, "rate": rate(len(sub), s)}
    log(f"decode (json.loads + SearchOutcome.from_dict): {fmt_rate(rate(len(sub), s))}")

    started = time.perf_counter()
    for _, _, _, raw in sub:
        json.loads(raw or b"null")
    s = time.perf_counter() - started
    res["json_loads_only"] = {"n": len(sub), "seconds": s, "rate": rate(len(sub), s)}

    # windows + judge + SLO on decoded outcomes, batched exactly like recompute()
    ledger = fold_commands(commands)
    book = PolicyBook(ledger)
    pre = Predecoded(decoded)
    by_part: dict[int, list[Record]] = {}
    for r in records:
        by_part.setdefault(r[0], []).append(r)
    started = time.perf_counter()
    windows = []
    batches = 0
    for p, recs in sorted(by_part.items()):
        fin = WindowFinalizer(aggregator=book.aggregator_for)
        out, stats = recompute_partition(p, recs, fin, pre, settings)  # type: ignore[arg-type]
        windows += out
        batches += stats.batches
    evaluate(windows, book, commands, settings)
    s = time.perf_counter() - started
    res["windows_only"] = {"seconds": s, "rate": rate(n, s), "batches": batches, "per_batch": n / max(1, batches)}
    log(f"windows+judge+SLO on decoded outcomes: {fmt_rate(rate(n, s))} ({n / max(1, batches):.0f} per batch)")

    started = time.perf_counter()
    rc = recompute(records, commands)
    s = time.perf_counter() - started
    res["recompute"] = {
        "seconds": s,
        "rate": rate(n, s),
        "windows": len(rc.windows),
        "decisions": [d.window_id for d in rc.decisions],
        "late": rc.late,
        "invalid": rc.invalid,
    }
    log(f"recompute end to end (raw → decisions): {fmt_rate(rate(n, s))}; {len(rc.windows)} windows")
    if profile:  # a separate run: the profiler's overhead must not count in the figure above
        profiler = cProfile.Profile()
        profiler.enable()
        recompute(records[: min(n, strict_n)], commands)
        profiler.disable()
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(14)
        res["profile"] = buf.getvalue()

    started = time.perf_counter()
    ref = recompute(sub, commands, strict_decode=True)
    s = time.perf_counter() - started
    fast_sub = recompute(sub, commands)
    same = [w.to_dict() | {"emitted_at_ms": 0, "emitted_at": ""} for w in ref.windows] == [
        w.to_dict() | {"emitted_at_ms": 0, "emitted_at": ""} for w in fast_sub.windows
    ]
    res["recompute_reference"] = {"n": len(sub), "seconds": s, "rate": rate(len(sub), s), "identical_windows": same}
    log(f"recompute with reference decoding (SearchOutcome objects): {fmt_rate(rate(len(sub), s))}; same={same}")
    return res


# -- Kafka -------------------------------------------------------------------------------------------------


async def produce(bootstrap: str, topics: Topics, records: list[Record], command: ControlCommand) -> dict[str, Any]:
    producer = AIOKafkaProducer(**client_kwargs(bootstrap), acks=1, max_batch_size=1 << 20, max_request_size=8 << 20)
    await producer.start()
    try:
        await producer.send_and_wait(topics.control, json.dumps(command.to_dict()).encode(), key=b"bench")
        started = time.perf_counter()
        futures = []
        batches: dict[int, Any] = {}
        for p, _, ts, raw in records:
            batch = batches.get(p)
            if batch is None:
                batch = batches[p] = producer.create_batch()
            if batch.append(key=None, value=raw, timestamp=ts) is None:
                batch.close()
                futures.append(await producer.send_batch(batch, topics.search_results, partition=p))
                batch = batches[p] = producer.create_batch()
                batch.append(key=None, value=raw, timestamp=ts)
        for p, batch in batches.items():
            batch.close()
            futures.append(await producer.send_batch(batch, topics.search_results, partition=p))
        await asyncio.gather(*futures)
        s = time.perf_counter() - started
    finally:
        await producer.stop()
    return {"seconds": s, "rate": rate(len(records), s)}


async def read_all(bootstrap: str, topics: Topics, expected: int) -> dict[str, Any]:
    consumer = new_consumer(bootstrap)
    await consumer.start()
    try:
        started = time.perf_counter()
        got, _ = await read_outcome_records(consumer, topics.search_results, None, None)
        s = time.perf_counter() - started
    finally:
        await consumer.stop()
    return {"records": len(got), "expected": expected, "seconds": s, "rate": rate(len(got), s)}


def with_kafka(args: Any, records: list[Record], dep: str, commands: list[ControlCommand]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    with kafka() as target:
        log(target.describe())
        res["kafka"] = target.describe()
        prefix = unique_prefix("replay")
        topics = Topics(prefix)
        try:
            ensure_topics(target.bootstrap, topics)
            res["produce"] = asyncio.run(produce(target.bootstrap, topics, records, commands[0]))
            log(f"produced {len(records)} outcomes: {fmt_rate(res['produce']['rate'])}")
            res["read"] = asyncio.run(read_all(target.bootstrap, topics, len(records)))
            log(f"read (raw records, all partitions): {fmt_rate(res['read']['rate'])}")
            first, last = min(r[2] or 0 for r in records), max(r[2] or 0 for r in records)
            started = time.perf_counter()
            data = asyncio.run(read_span(target.bootstrap, topics, first, last + 1))
            read_s = time.perf_counter() - started
            started = time.perf_counter()
            report = run_replay(data, deployment_id=dep)
            replay_s = time.perf_counter() - started
            res["replay"] = {
                "records": len(data.records),
                "read_span_seconds": read_s,
                "read_rate": rate(len(data.records), read_s),
                "run_replay_seconds": replay_s,
                "run_replay_rate": rate(len(data.records), replay_s),
                "total_rate": rate(len(data.records), read_s + replay_s),
                "read_seconds_by_topic": data.read_seconds,
                "windows": len(report["windows"]),
                "decisions": [d["triggering_window"] for d in report["decisions"]],
            }
            log(
                f"canary replay path: read_span {fmt_rate(res['replay']['read_rate'])}, "
                f"run_replay {fmt_rate(res['replay']['run_replay_rate'])}"
            )
        finally:
            if target.external and not args.keep_topics:
                delete_prefixed_topics(target.bootstrap, prefix)
    return res


def render(r: dict[str, Any]) -> str:
    ip = r["in_process"]
    lines = [
        f"canary replay benchmark — {r['machine']['cpus']} CPUs, Python {r['machine']['python']}, "
        f"load {r['machine']['loadavg_at_start']}",
        f"synthetic: {ip['n']:,} outcomes at {r['rate']:,.0f}/s event rate, 3 partitions "
        f"({ip['windows_only']['per_batch']:.0f} outcomes per replay micro-batch)",
        "",
        "in-process (no Kafka)",
        f"  decode, replay fast path          {fmt_rate(ip['decode_fast']['rate']):>14}",
        "  decode, native columns            "
        + (f"{fmt_rate(ip['decode_native']['rate']):>14}" if "decode_native" in ip else "     not built"),
        f"  decode, from_dict reference       {fmt_rate(ip['decode_reference']['rate']):>14}"
        f"   (json.loads alone {fmt_rate(ip['json_loads_only']['rate'])})",
        f"  windows + judge + SLO (decoded)   {fmt_rate(ip['windows_only']['rate']):>14}",
        f"  recompute end to end (raw)        {fmt_rate(ip['recompute']['rate']):>14}   "
        f"target {TARGET_RECOMPUTE:,.0f}/s: {'MET' if ip['recompute']['rate'] >= TARGET_RECOMPUTE else 'NOT MET'}",
        f"  recompute, reference decoding     {fmt_rate(ip['recompute_reference']['rate']):>14}   "
        f"(identical windows: {ip['recompute_reference']['identical_windows']})",
        f"  result: {ip['recompute']['windows']} windows, decisions {ip['recompute']['decisions']}, "
        f"late {ip['recompute']['late']}",
    ]
    k = r.get("kafka")
    if k:
        lines += [
            "",
            f"Kafka: {k['kafka']}",
            f"  produce {k['produce']['seconds']:.1f}s ({fmt_rate(k['produce']['rate'])})",
            f"  read raw records                  {fmt_rate(k['read']['rate']):>14}   "
            f"({k['read']['records']:,} records; target {TARGET_READ:,.0f}/s: "
            f"{'MET' if k['read']['rate'] >= TARGET_READ else 'NOT MET'})",
            f"  read_span (replay's reader)       {fmt_rate(k['replay']['read_rate']):>14}",
            f"  run_replay on that span           {fmt_rate(k['replay']['run_replay_rate']):>14}",
            f"  canary replay total               {fmt_rate(k['replay']['total_rate']):>14}   "
            f"target {TARGET_REPLAY:,.0f}/s: {'MET' if k['replay']['total_rate'] >= TARGET_REPLAY else 'NOT MET'}",
        ]
    if "profile" in ip:
        lines += ["", "profile of recompute (tottime):", ip["profile"]]
    return "\n".join(lines)


def main() -> int:
    reuse_freed_memory()  # as every canary process does at start (canary.cli.main)
    parser = base_parser("replay recompute and Kafka read speed")
    parser.add_argument("-n", type=int, default=1_000_000, help="synthetic outcomes in-process (default 1M)")
    parser.add_argument("--rate", type=float, default=50_000.0, help="event rate of the synthetic traffic (/s)")
    parser.add_argument("--strict-n", type=int, default=200_000, help="outcomes for the reference-decoding pass")
    parser.add_argument("--kafka-n", type=int, default=300_000, help="outcomes produced to Kafka (0: skip Kafka)")
    parser.add_argument("--profile", action="store_true", help="cProfile the end-to-end recompute")
    parser.add_argument("--keep-topics", action="store_true", help="external Kafka: keep the run's topics")
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine(), "rate": args.rate}
    base = now_ms() - int(max(args.n, args.kafka_n) / args.rate * 1000) - 60_000
    with sigterm_as_exit():
        log(f"generating {args.n:,} synthetic outcomes")
        records, dep = synth(args.n, args.rate, base)
        commands = [start_command(dep, base - 1000)]
        result["in_process"] = in_process(records, commands, args.strict_n, args.profile)
        if args.kafka_n > 0:
            if args.kafka_n <= len(records):
                kafka_records, kafka_dep, kafka_commands = records[: args.kafka_n], dep, commands
            else:
                kafka_records, kafka_dep = synth(args.kafka_n, args.rate, base)
                kafka_commands = [start_command(kafka_dep, base - 1000)]
            result["kafka"] = with_kafka(args, kafka_records, kafka_dep, kafka_commands)
    emit(result, render(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
