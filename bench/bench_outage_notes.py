"""A broker outage under a running canary: what the verdicts and the report say about it.

Setup (always a local broker on a free port: the benchmark stops and restarts it): ONE `canary worker`
and ONE `canary router --rerank modeled` subprocess (the demo's router), labeled load at --qps from this
process through a producer that waits for the broker, and a healthy canary (--candidate, default
candidate_high_recall, weight 0.1). After --before-s of steady traffic the broker is stopped, left down
for --down-s, and started again on the same port and data dir (a JVM start adds ~9 s to the outage);
the load goes on throughout; --after-s later everything is read back.

Printed: the outage as this script timed it and as the worker noted it; per candidate window from
--before-s before the outage to the end, both arms' p95 and response counts, the verdicts and the note
(`outage` / `drain` / none); any decision and whether its evidence carries the note; the worker's log
lines during the outage; the report's outage panel (rows, as `canary export` would draw them).

    .venv/bin/python -m bench.bench_outage_notes [--qps 120] [--down-s 13] [--json]      # ~2.5 min
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import base_parser, control_keys, emit, free_port, log, machine, sigterm_as_exit, unique_prefix
from canary.core.judge import Judgement
from canary.core.models import WindowResult, iso_ms
from canary.core.outages import OutageNote
from canary.kafka.clients import client_kwargs
from canary.kafka.topics import Topics, ensure_topics
from canary.ops.load import bundled_queries
from canary.reports.export import read_topics_async
from canary.reports.model import build_report
from canary.settings import load_settings
from devtools.broker import LocalBroker
from devtools.harness import ROOT, WorkerProcess, read_all, send_command, start_command


async def produce(bootstrap: str, topics: Topics, qps: float, stop: asyncio.Event, counts: dict[str, int]) -> None:
    """Labeled requests on a fixed schedule; a request timeout beyond the outage, so batches wait for the
    broker instead of expiring (what clients with retries do)."""
    from aiokafka import AIOKafkaProducer

    query_of, n_queries = bundled_queries()
    producer = AIOKafkaProducer(**client_kwargs(bootstrap), linger_ms=5, acks="all", request_timeout_ms=150_000)
    await producer.start()

    def count(fut: asyncio.Future[Any]) -> None:
        counts["failed" if fut.cancelled() or fut.exception() is not None else "acked"] += 1

    try:
        n, start = 0, time.monotonic()
        while not stop.is_set():
            text, relevant = query_of(n % n_queries)
            body = {
                "request_id": f"bench-{n}",
                "query": text,
                "collection": "documents",
                "user_id": f"user-{n % 1000}",
                "ts": int(time.time() * 1000),
                "relevant_ids": list(relevant) or None,
            }
            try:
                ack = await producer.send(topics.search_requests, json.dumps(body).encode(), key=b"%d" % n)
                ack.add_done_callback(count)
            except Exception:
                counts["failed"] += 1
            counts["sent"] += 1
            n += 1
            await asyncio.sleep(max(0.0, start + n / qps - time.monotonic()))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.flush(), 60)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 10)


def start_router(bootstrap: str, topics: Topics, log_path: Path) -> subprocess.Popen[bytes]:
    import os

    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CANARY_TOPIC_PREFIX": topics.prefix}
    cmd = [sys.executable, "-m", "canary.cli", "router", "--router-id", "bench-router", "--rerank", "modeled"]
    with log_path.open("ab") as fh:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)


async def run(args: Any, tmp: Path) -> dict[str, Any]:
    settings = load_settings()
    broker = LocalBroker(settings.home, free_port(), data_dir=tmp / "kafka")
    try:
        await asyncio.to_thread(broker.start, log=log)  # it probes with asyncio.run: not on this loop
    except BaseException:
        await asyncio.to_thread(broker.stop, log=log)
        raise
    bootstrap = f"127.0.0.1:{broker.port}"
    topics = Topics(unique_prefix("outagenotes"))
    router: subprocess.Popen[bytes] | None = None
    worker = WorkerProcess(bootstrap, topics, tmp / "audit.log", tmp / "worker-data", tmp / "worker.log")
    stop = asyncio.Event()
    counts = {"sent": 0, "acked": 0, "failed": 0}
    load: asyncio.Task[None] | None = None
    out: dict[str, Any] = {"machine": machine(), "qps": args.qps, "candidate": args.candidate}
    try:
        await asyncio.to_thread(ensure_topics, bootstrap, topics)
        worker.start()
        router = start_router(bootstrap, topics, tmp / "router.log")
        load = asyncio.create_task(produce(bootstrap, topics, args.qps, stop, counts))
        log("waiting for the first windows")
        deadline = time.monotonic() + 180
        while not await read_all(bootstrap, topics.windows, timeout=5):
            if time.monotonic() > deadline:
                raise TimeoutError("no window within 180 s:\n" + worker.log_tail())
            await asyncio.sleep(1)
        cmd = start_command(args.candidate, weight=args.weight)
        dep = cmd.deployment_id
        await send_command(bootstrap, topics, cmd)
        log(f"canary {dep} of {args.candidate} started; {args.before_s:g} s of steady traffic")
        await asyncio.sleep(args.before_s)
        worker_lines_before = len(worker.log_path.read_text(errors="replace").splitlines())
        stopped_at = time.time()
        log("stopping the broker")
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(args.down_s)
        log("starting the broker again")
        await asyncio.to_thread(broker.start)
        back_at = time.time()
        worker_lines_during = len(worker.log_path.read_text(errors="replace").splitlines()) - worker_lines_before
        log(f"broker back after {back_at - stopped_at:.1f} s; {args.after_s:g} s more")
        await asyncio.sleep(args.after_s)
        stop.set()
        await load
        out["requests"] = counts
        out["outage_timed"] = {"start": iso_ms(int(stopped_at * 1000)), "seconds": round(back_at - stopped_at, 1)}
        out["worker_log_lines_during_outage"] = worker_lines_during
        out["worker_exited"] = worker.proc is not None and worker.proc.poll() is not None
        out["router_exited"] = router.poll() is not None
        judged: dict[str, Judgement] = {}
        for raw in await read_all(bootstrap, topics.verdicts, timeout=20):
            j = Judgement.from_dict(raw)
            if j.deployment_id == dep:
                judged.setdefault(j.window_id, j)
        lg: dict[int, WindowResult] = {}
        for raw in await read_all(bootstrap, topics.windows, timeout=20):
            w = WindowResult.from_dict(raw)
            if w.deployment_id == dep and w.arm == "last_good":
                lg[w.window_start_ms] = w
        rows = []
        first = stopped_at * 1000 - args.before_s * 1000
        for j in sorted(judged.values(), key=lambda j: j.window.window_start_ms):
            w = j.window
            if w.window_start_ms < first:
                continue
            note = OutageNote.from_context(j.context)
            base = lg.get(w.window_start_ms)
            rows.append(
                {
                    "window_start": iso_ms(w.window_start_ms)[11:19],
                    "phase": note.phase if note else None,
                    "candidate_p95_ms": w.p95_ms,
                    "last_good_p95_ms": base.p95_ms if base else None,
                    "candidate_n": w.response_count,
                    "last_good_n": base.response_count if base else 0,
                    "verdicts": {v.rule: v.outcome for v in w.verdicts},
                    "decision": j.decision.type if j.decision else None,
                }
            )
        notes = [n for j in judged.values() if (n := OutageNote.from_context(j.context)) is not None]
        out["outage_noted"] = notes[-1].outage.to_dict() if notes else None
        out["windows"] = rows
        control = [c for c in await read_all(bootstrap, topics.control) if c.get("deployment_id") == dep]
        out["decisions"] = [
            {
                "type": c["type"],
                "reason": c.get("reason"),
                "issued_at": c.get("issued_at"),
                "evidence_notes_outage": bool(OutageNote.from_context((c.get("evidence") or {}).get("context"))),
            }
            for c in control
            if c.get("issued_by") == "slo-agent"
        ]
        data = await read_topics_async(bootstrap, topics.prefix, control=True, windows=True)
        report = build_report(commands=data.commands, windows=data.windows, deployment_id=dep, outages=data.outages)
        out["report_outage_slots"] = [
            {"start": iso_ms(s.start_ms)[11:19], "phase": s.phase}
            for o in report.outages
            for s in report.outage_slots(o)
        ]
        return out
    finally:
        stop.set()
        if load is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(load, 30)
        if router is not None and router.poll() is None:
            router.terminate()
            try:
                router.wait(30)
            except subprocess.TimeoutExpired:
                router.kill()
        worker.stop()
        await asyncio.to_thread(broker.stop, log=log)


def render(r: dict[str, Any]) -> str:
    lines = [
        f"broker outage under a canary of {r['candidate']} at {r['qps']:g} req/s "
        f"({r['machine'].get('cpus')} cpus, load at start {r['machine'].get('loadavg_at_start')})",
        f"  timed by this script: from {r['outage_timed']['start']} for {r['outage_timed']['seconds']} s",
    ]
    noted = r.get("outage_noted")
    if noted:
        lines.append(
            f"  noted by the worker:  from {noted['start']} for {noted['duration_s']} s, drain assumed until "
            f"{iso_ms(noted['drain_until_ms'])}"
        )
    else:
        lines.append("  noted by the worker:  nothing")
    lines.append(
        f"  requests sent {r['requests']['sent']}, acked {r['requests']['acked']}, failed {r['requests']['failed']}; "
        f"worker exited: {r['worker_exited']}, router exited: {r['router_exited']}; worker log lines during the "
        f"outage: {r['worker_log_lines_during_outage']}"
    )
    lines.append("  window    phase   cand p95  lg p95    n cand/lg  verdicts")
    for w in r["windows"]:
        cand = "-" if w["candidate_p95_ms"] is None else f"{w['candidate_p95_ms']:.0f}"
        base = "-" if w["last_good_p95_ms"] is None else f"{w['last_good_p95_ms']:.0f}"
        verdicts = " ".join(f"{k}:{v}" for k, v in w["verdicts"].items())
        decision = f"  → {w['decision'].upper()}" if w["decision"] else ""
        counts = f"{w['candidate_n']:>4}/{w['last_good_n']:<5}"
        lines.append(
            f"  {w['window_start']}  {w['phase'] or '-':7} {cand:>8}  {base:>6}  {counts} {verdicts}{decision}"
        )
    for d in r["decisions"]:
        lines.append(
            f"  decision {d['type']} at {d['issued_at']}: {d['reason']} (evidence notes the outage: "
            f"{d['evidence_notes_outage']})"
        )
    lines.append(f"  report outage panel rows: {len(r['report_outage_slots'])}")
    return "\n".join(lines)


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--qps", type=float, default=120.0)
    parser.add_argument("--candidate", default="candidate_high_recall")
    parser.add_argument("--weight", type=float, default=0.1)
    parser.add_argument("--before-s", type=float, default=30.0)
    parser.add_argument("--down-s", type=float, default=13.0, help="seconds between stop and start (+ ~9 s start)")
    parser.add_argument("--after-s", type=float, default=50.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="canary-bench-outage-notes-"))
    try:
        with sigterm_as_exit(), control_keys(tmp):
            result = asyncio.run(run(args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    emit(result, render(result), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
