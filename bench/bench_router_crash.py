"""Both routers SIGKILLed mid-canary and restarted: how long until every request partition is served again,
and does every request get its outcome?

The acceptance scenario of issue #19 (Build item 3), on a real broker (KAFKA_BOOTSTRAP_SERVERS, or a local
broker started here), topics under a unique prefix, every part a real process:

  1. ``canary worker`` and two ``canary router --instance N`` (bundled backend, modeled rerank, metrics on).
  2. ``canary start candidate_high_recall --weight 0.2``: a canary is running while everything happens.
  3. ``canary load --qps Q --duration D``; after ``--kill-after`` s both routers are SIGKILLed (no clean
     stop: in-flight requests are neither answered nor committed), and restarted ``--down`` s later.
  4. Every request (its partition, its produce time) and every outcome are tailed as they reach the broker.
     A partition is *served again* when the first outcome stamped after the kill arrives for one of its
     requests. It *stalls* when it has unanswered requests and no outcome arrives for it for ``--stall-s``
     s (the zombie router of issue #19: a partition kept, never read).
  5. After the load ends, until every request is answered (or ``--watch`` s): requests on
     ``search_requests`` vs distinct request ids with an outcome on ``search_results`` (read in full).

Printed: seconds from the restart until every partition is served again (and per partition), the stalls
after that, requests / answered / unanswered, outcomes per request (≥ 1: re-processing after the crash is
expected, the windows stage counts a request once), each router's /readyz ``consuming`` check and what
``canary status`` says about the routers at the end, and their exit codes.

    .venv/bin/python -m bench.bench_router_crash [--qps 60] [--duration 60] [--kill-after 15] [--down 3]
        [--rerank modeled] [--backend package.module:factory] [--json]
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import (
    ROOT,
    base_parser,
    control_keys,
    delete_prefixed_topics,
    emit,
    free_port,
    kafka,
    log,
    machine,
    now_ms,
    sigterm_as_exit,
    unique_prefix,
)
from canary.control import read_topic
from canary.kafka.clients import Cluster, client_kwargs
from canary.kafka.topics import Topics, ensure_topics


@dataclass
class Proc:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    exits: list[int] = field(default_factory=list)

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def alive(self) -> bool:
        if self.proc is None:
            return False
        code = self.proc.poll()
        if code is not None:
            self.exits.append(code)
            self.proc = None
            return False
        return True

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.exits.append(code)
        self.proc = None
        return code

    def readyz(self) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except (OSError, ValueError):
            return 0, {}


class Tail:
    """Every request (its partition, produce time) and every outcome (arrival) as they reach the broker."""

    def __init__(self, bootstrap: Cluster, topics: Topics) -> None:
        self.consumer = AIOKafkaConsumer(**client_kwargs(bootstrap), group_id=None, enable_auto_commit=False)
        self.topics = topics
        self.partition_of: dict[str, int] = {}
        self.unanswered: dict[int, dict[str, int]] = {p: {} for p in range(3)}  # partition -> id -> produced ms
        self.answered: set[str] = set()
        self.early: list[tuple[str, int, float]] = []  # outcomes read before their request
        self.last_outcome: dict[int, float] = {}  # partition -> monotonic arrival of its latest outcome
        self.first_after: dict[int, float] = {}  # partition -> first outcome stamped after ``since_ms``
        self.since_ms: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        tps = [TopicPartition(self.topics.search_requests, p) for p in range(3)]
        tps += [TopicPartition(self.topics.search_results, p) for p in range(6)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for tp, records in batch.items():
                for record in records:
                    try:
                        value = json.loads(record.value or b"null")
                    except ValueError:
                        continue
                    if not isinstance(value, dict) or not isinstance(value.get("request_id"), str):
                        continue
                    if tp.topic == self.topics.search_requests:
                        self.partition_of[value["request_id"]] = tp.partition
                        if value["request_id"] not in self.answered:
                            self.unanswered[tp.partition][value["request_id"]] = record.timestamp
                    elif "kind" not in value:
                        self._outcome(value["request_id"], int(value.get("ts") or 0), now)
            if self.early:
                early, self.early = self.early, []
                for rid, ts, arrived in early:
                    self._outcome(rid, ts, arrived)

    def _outcome(self, rid: str, ts: int, arrived: float) -> None:
        partition = self.partition_of.get(rid)
        if partition is None:
            self.early.append((rid, ts, arrived))
            return
        self.answered.add(rid)
        self.unanswered[partition].pop(rid, None)
        self.last_outcome[partition] = arrived
        if self.since_ms is not None and ts > self.since_ms and partition not in self.first_after:
            self.first_after[partition] = arrived


async def read_all(bootstrap: Cluster, topic: str) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(**client_kwargs(bootstrap), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        return await read_topic(consumer, topic, timeout=60)
    finally:
        await consumer.stop()


async def run(args: Any, bootstrap: Cluster, tmp: Path) -> dict[str, Any]:
    prefix = unique_prefix("crash")
    topics = Topics(prefix)
    await asyncio.to_thread(ensure_topics, bootstrap, topics)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": str(bootstrap),
        "CANARY_TOPIC_PREFIX": prefix,
        "CANARY_RERANK": args.rerank,
        "PYTHONUNBUFFERED": "1",
    }
    py = [sys.executable, "-m", "canary.cli"]
    worker = Proc(
        "worker",
        [*py, "worker", "--audit-log", str(tmp / "audit.log"), "--data-dir", str(tmp / "data"), "--log-format", "json"],
        env,
        tmp / "worker.log",
    )
    routers = []
    for n in (1, 2):
        port = free_port()
        routers.append(
            Proc(
                f"router-{n}",
                [*py, "router", "--instance", str(n), "--metrics-port", str(port), "--log-format", "json"]
                + (["--backend", args.backend] if args.backend else []),
                env,
                tmp / f"router-{n}.log",
                port,
            )
        )
    result: dict[str, Any] = {"prefix": prefix, "logs": str(tmp)}
    load = Proc("load", [*py, "load", "--qps", str(args.qps), "--duration", str(args.duration)], env, tmp / "load.log")
    tail = Tail(bootstrap, topics)
    await tail.start()
    try:
        worker.start()
        for r in routers:
            r.start()
        deadline = time.monotonic() + 120
        while not all(r.readyz()[0] == 200 for r in routers):
            if time.monotonic() > deadline or not all(r.alive() for r in routers):
                raise SystemExit(f"routers did not become ready; logs in {tmp}")
            await asyncio.sleep(0.5)
        log("both routers ready; starting a canary")
        started = await asyncio.to_thread(
            subprocess.run,
            [*py, "start", "candidate_high_recall", "--weight", "0.2", "--json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=60,
        )
        if started.returncode != 0:
            raise SystemExit(f"canary start failed: {started.stdout.decode()} {started.stderr.decode()}")
        load.start()
        load_started = time.monotonic()
        log(f"load: {args.qps} requests/s for {args.duration} s; both routers SIGKILLed after {args.kill_after} s")
        await asyncio.sleep(args.kill_after)
        for r in routers:
            r.kill()  # returns once the process is gone
        tail.since_ms = now_ms()  # any outcome stamped later comes from a restarted router
        log(f"both routers SIGKILLed; restarting them in {args.down} s")
        await asyncio.sleep(args.down)
        for r in routers:
            r.start()
        restarted = time.monotonic()
        # A partition stalls when it has unanswered requests and no outcome arrived for it for --stall-s.
        stalls: list[dict[str, Any]] = []
        open_stall: dict[int, dict[str, Any]] = {}
        reported: set[int] = set()
        ready_at: dict[str, float] = {}  # router -> seconds from the restart until its /readyz said 200
        load_done_at: float | None = None
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for r in routers:
                if r.name not in ready_at and await asyncio.to_thread(lambda r=r: r.readyz()[0]) == 200:
                    ready_at[r.name] = now - restarted
                    log(
                        f"{r.name} ready {ready_at[r.name]:.1f} s after the restart (connected, control read, assigned)"
                    )
            for p in range(3):
                if p in tail.first_after and p not in reported:
                    reported.add(p)
                    log(f"partition {p} served again {tail.first_after[p] - restarted:.1f} s after the restart")
                if p not in tail.first_after:
                    continue
                quiet = now - max(tail.last_outcome.get(p, 0.0), tail.first_after[p])
                if tail.unanswered[p] and quiet >= args.stall_s and p not in open_stall:
                    open_stall[p] = {"partition": p, "since_s": round(now - quiet - restarted, 1)}
                    log(f"partition {p} STALLED: {len(tail.unanswered[p])} unanswered, no outcome for {quiet:.0f} s")
                elif p in open_stall and quiet < args.stall_s:
                    stall = open_stall.pop(p)
                    stall["lasted_s"] = round(now - restarted - stall["since_s"], 1)
                    stalls.append(stall)
                    log(f"partition {p} answered again after {stall['lasted_s']} s")
            for r in routers:
                if r.proc is not None and not r.alive():
                    log(f"{r.name} exited with {r.exits[-1]}")
            if load_done_at is None and not load.alive():
                load_done_at = now
                log(f"load finished ({now - load_started:.0f} s); waiting for the backlog (≤ {args.watch:.0f} s)")
            if load_done_at is not None:
                backlog = sum(len(u) for u in tail.unanswered.values())
                if backlog == 0 or now > load_done_at + args.watch:
                    break
        stalls += [{**s, "lasted_s": None} for s in open_stall.values()]  # still open at the end
        readiness = {r.name: r.readyz() for r in routers}
        status = await asyncio.to_thread(
            subprocess.run, [*py, "status", "--json"], cwd=ROOT, env=env, capture_output=True, timeout=60
        )
        requests = [r.get("request_id") for r in await read_all(bootstrap, topics.search_requests)]
        outcomes = [
            o for o in await read_all(bootstrap, topics.search_results) if isinstance(o, dict) and "kind" not in o
        ]
        per_request = Counter(o.get("request_id") for o in outcomes)
        distinct = set(requests)
        unanswered = sorted(r for r in distinct if r not in per_request)
        served = {p: at - restarted for p, at in sorted(tail.first_after.items())}
        try:
            status_routers = [
                {k: r.get(k) for k in ("router_id", "live", "request_partitions", "requests_stalled")}
                for r in json.loads(status.stdout)["routers"]
            ]
        except (ValueError, KeyError):
            status_routers = [{"error": status.stderr.decode(errors="replace")[-300:]}]
        result.update(
            {
                "qps": args.qps,
                "duration_s": args.duration,
                "kill_after_s": args.kill_after,
                "down_s": args.down,
                "served_again_s": {str(p): round(s, 1) for p, s in served.items()},
                "all_served_again_s": round(max(served.values()), 1) if len(served) == 3 else None,
                "router_ready_s": {n: round(t, 1) for n, t in sorted(ready_at.items())},
                "stalls": stalls,
                "requests": len(requests),
                "distinct_requests": len(distinct),
                "answered": len(distinct) - len(unanswered),
                "unanswered": len(unanswered),
                "outcomes": len(outcomes),
                "outcomes_per_request": dict(sorted(Counter(per_request.values()).items())),
                "readyz_at_end": {
                    n: {"status": s, "consuming": b.get("checks", {}).get("consuming")}
                    for n, (s, b) in readiness.items()
                },
                "status_routers": status_routers,
                "routers_alive_at_end": {r.name: r.alive() for r in routers},
            }
        )
    finally:
        load.kill()
        for r in routers:
            code = r.stop()
            result.setdefault("router_exit_codes", {})[r.name] = [*r.exits] if code is None else r.exits
        result["worker_exit"] = worker.stop()
        await tail.stop()
    return result


def text(result: dict[str, Any]) -> str:
    lines = [
        f"scenario: {result['qps']:.0f} requests/s for {result['duration_s']} s; both routers SIGKILLed at "
        f"{result['kill_after_s']:.0f} s, restarted {result['down_s']:.0f} s later",
        f"every search_requests partition served again after: {result['all_served_again_s']} s "
        f"(per partition: {result['served_again_s']}); each router ready after {result['router_ready_s']} s "
        "(process start, backend, control catch-up, group join)",
        f"stalls (a partition with requests waiting and no outcome for --stall-s): {result['stalls'] or 'none'}",
        f"requests: {result['requests']} ({result['distinct_requests']} distinct); answered: {result['answered']}; "
        f"UNANSWERED: {result['unanswered']}",
        f"outcomes: {result['outcomes']} (outcomes per request → requests: {result['outcomes_per_request']})",
        f"routers alive at the end: {result['routers_alive_at_end']}; exits: {result.get('router_exit_codes')}",
    ]
    for name, ready in result["readyz_at_end"].items():
        lines.append(f"{name} /readyz at the end: {ready['status']}, consuming: {ready['consuming']}")
    lines.append(f"canary status: {result['status_routers']}")
    lines.append(f"logs: {result['logs']}")
    return "\n".join(lines)


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--qps", type=float, default=60.0)
    parser.add_argument("--duration", type=int, default=60, help="seconds of load")
    parser.add_argument("--kill-after", type=float, default=15.0, help="seconds into the load")
    parser.add_argument("--down", type=float, default=3.0, help="seconds between the kill and the restart")
    parser.add_argument("--watch", type=float, default=180.0, help="seconds to wait for the backlog after the load")
    parser.add_argument(
        "--backend", help="the routers' search backend ('package.module:factory'; default: the bundled one)"
    )
    parser.add_argument(
        "--rerank",
        choices=("model", "modeled", "off"),
        default="modeled",
        help="the bundled backend's rerank stage (default modeled: the real model needs ~15 cores at 120/s)",
    )
    parser.add_argument(
        "--stall-s", type=float, default=10.0, help="requests waiting and no outcome for this long = a stall"
    )
    args = parser.parse_args()
    with sigterm_as_exit(), kafka() as target:
        tmp = Path(tempfile.mkdtemp(prefix="canary-bench-crash-"))
        with control_keys(tmp):
            log(f"Kafka: {target.describe()}")
            result = asyncio.run(run(args, target.bootstrap, tmp))
        result["machine"] = machine()
        if target.external:
            delete_prefixed_topics(target.bootstrap, result["prefix"])
        emit(result, text(result), args.json)


if __name__ == "__main__":
    main()
