"""Hostile records against the real fleet: memory and time of a junk flood on the control topic.

Setup (real broker, unique topic prefix): ONE `canary worker` and TWO `canary router` processes (keyword
backend), idle (no canary). After they are ready and have settled, --records hostile control records
(devtools/hostile.py: deep nesting, huge strings, non-objects, NaN, wrong types, bad UTF-8, lone surrogates,
nulls, garbage, truncations — only ones the verifier refuses, each at most 1 MB) are produced to the
control topic. Reported:

  rss           resident memory (VmRSS) of each process: before, and per round (--rounds floods in a row)
                when the worker has audited every record and --settle-s later: a high-water mark stays
                level from round to round, a leak grows with each
  audit         seconds until the worker's audit log holds a `success: false` line for every record, and
                its rate
  rejected      what each process's /metrics says it refused, by reason (routers and worker verify alike)
  cpu           CPU seconds each process spent from the first junk record to the end
  alive         every process still running at the end

Issue #19 reported the worker growing 101 → 222 MB on 10,000 junk control records, and staying there.

    .venv/bin/python -m bench.bench_hostile [--records 10000] [--settle-s 30] [--json]
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    base_parser,
    control_keys,
    emit,
    kafka,
    log,
    machine,
    process_cpu_s,
    sigterm_as_exit,
    unique_prefix,
)
from canary.kafka.clients import client_kwargs
from canary.kafka.topics import Topics, ensure_topics
from devtools import hostile
from devtools.services import Service, scrape
from devtools.signing import verifier

BROKER_MAX = 1_000_000


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def control_corpus(n: int, seed: int) -> list[bytes | None]:
    rng = random.Random(seed)
    sample = hostile.samples()["control"]
    out: list[bytes | None] = []
    while len(out) < n:
        raw = hostile.hostile(rng, rng.choice(sample))
        if raw is not None and len(raw) > BROKER_MAX:
            continue
        if not verifier().check(raw).accepted:
            out.append(raw)
    return out


async def produce(bootstrap: str, topic: str, values: list[bytes | None]) -> list[int]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**client_kwargs(bootstrap), acks="all", max_request_size=2 << 20, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, v, key=b"hostile") for v in values]
        return [md.offset for md in await asyncio.gather(*futures)]
    finally:
        await producer.stop()


def audited_offsets(path: Path) -> set[int]:
    out: set[int] = set()
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.split("\n"):  # not splitlines(): raw text in a line may hold U+2028 and the like
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("success") is False and isinstance(event.get("details"), dict):
            offset = event["details"].get("offset")
            if isinstance(offset, int):
                out.add(offset)
    return out


def rejected(port: int, prefix: str) -> dict[str, int]:
    try:
        samples = scrape(port)
    except OSError:
        return {}
    out: Counter[str] = Counter()
    for (name, labels), value in samples.items():
        if name.startswith(prefix) and name.endswith("commands_rejected_total") and value:
            out[dict(labels)["reason"]] += int(value)
    return dict(out)


async def run(args: Any, tmp: Path, target: Any) -> dict[str, Any]:
    # The broker and the keys are set up by main(), outside the event loop.
    bootstrap = str(target.bootstrap)
    prefix = unique_prefix("hostile")
    topics = Topics(prefix)
    await asyncio.to_thread(ensure_topics, bootstrap, topics)
    audit = tmp / "audit.log"
    worker = Service(
        "worker",
        "bench-worker",
        bootstrap,
        prefix,
        tmp / "worker.log",
        extra=["--audit-log", str(audit), "--data-dir", str(tmp / "faust")],
    )
    routers = [Service("router", f"bench-router-{i}", bootstrap, prefix, tmp / f"router-{i}.log") for i in range(2)]
    services = [worker, *routers]
    log(f"building {args.records} hostile control records")
    values = control_corpus(args.records, args.seed)
    size_mb = sum(len(v) for v in values if v is not None) / 1e6
    try:
        for s in services:
            s.start()
        deadline = time.monotonic() + 120
        while not all(s.ready() for s in services):
            if time.monotonic() > deadline:
                raise TimeoutError("\n".join(s.tail() for s in services))
            await asyncio.sleep(0.5)
        log(f"fleet ready; settling {args.settle_s:.0f} s")
        await asyncio.sleep(args.settle_s)
        pids = {s.name: s.proc.pid for s in services if s.proc is not None}
        before = {name: rss_mb(pid) for name, pid in pids.items()}
        cpu0 = {name: process_cpu_s(pid) for name, pid in pids.items()}
        rounds: list[dict[str, Any]] = []
        wanted: set[int] = set()
        for n in range(args.rounds):
            log(f"round {n + 1}: producing {len(values)} records ({size_mb:.1f} MB) to {topics.control}")
            started = time.monotonic()
            wanted |= set(await produce(bootstrap, topics.control, values))
            produced_s = time.monotonic() - started
            while not wanted <= audited_offsets(audit):
                if time.monotonic() - started > args.timeout_s:
                    raise TimeoutError(f"only {len(wanted & audited_offsets(audit))} of {len(wanted)} audited")
                await asyncio.sleep(0.5)
            audit_s = time.monotonic() - started
            at_audit = {name: rss_mb(pid) for name, pid in pids.items()}
            log(f"round {n + 1}: all audited after {audit_s:.1f} s; settling {args.settle_s:.0f} s")
            await asyncio.sleep(args.settle_s)
            after = {name: rss_mb(pid) for name, pid in pids.items()}
            rounds.append(
                {
                    "produced_s": round(produced_s, 1),
                    "audit_s": round(audit_s, 1),
                    "audit_rate_per_s": round(len(values) / audit_s),
                    "rss_mb": {name: {"audited": at_audit[name], "settled": after[name]} for name in pids},
                }
            )
        cpu = {name: round((process_cpu_s(pid) or 0.0) - (cpu0[name] or 0.0), 2) for name, pid in pids.items()}
        alive = {s.name: s.running for s in services}
        refused = {
            s.name: rejected(s.port, "canary_worker" if s.kind == "worker" else "canary_router") for s in services
        }
    finally:
        for s in services:
            if s.running:
                s.terminate()
    return {
        "machine": machine(),
        "kafka": target.describe(),
        "records": len(values),
        "megabytes": round(size_mb, 1),
        "rss_mb_before": before,
        "rounds": rounds,
        "cpu_s": cpu,
        "rejected": refused,
        "alive": alive,
    }


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--settle-s", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2, help="floods in a row (a leak grows each round)")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="canary-bench-hostile-"))
    with sigterm_as_exit(), control_keys(tmp), kafka() as target:
        result = asyncio.run(run(args, tmp, target))
    lines = [f"{result['records']} hostile control records ({result['megabytes']} MB) per round"]
    for n, r in enumerate(result["rounds"], 1):
        lines.append(
            f"round {n}: produced in {r['produced_s']} s; every one audited success:false after {r['audit_s']} s "
            f"({r['audit_rate_per_s']}/s)"
        )
    lines.append("RSS MB (before → each round: all audited / settled):")
    for name, before in result["rss_mb_before"].items():
        marks = " → ".join(
            f"{r['rss_mb'][name]['audited']:.0f} / {r['rss_mb'][name]['settled']:.0f}" for r in result["rounds"]
        )
        lines.append(f"  {name:14s} {before:.0f} → {marks}")
    lines.append(f"CPU s during the flood: {result['cpu_s']}")
    for name, reasons in result["rejected"].items():
        lines.append(f"  {name} refused: {sum(reasons.values())} {reasons}")
    lines.append(f"alive at the end: {result['alive']}")
    emit(result, "\n".join(lines), args.json)


if __name__ == "__main__":
    main()
