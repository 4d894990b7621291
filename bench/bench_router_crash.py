"""Both routers SIGKILLed mid-canary and restarted: how long until every request partition is served again,
and does every request get its outcome?

The acceptance scenario of issue #19 (Build item 3), on a real broker (KAFKA_BOOTSTRAP_SERVERS, or a local
broker started here), topics under a unique prefix, every part a real process:

  1. ``canary worker`` and two ``canary router --instance N`` (bundled backend, modeled rerank, metrics on).
  2. ``canary start candidate_high_recall --weight 0.2``: a canary is running while everything happens.
  3. ``canary load --qps Q --duration D``; after ``--kill-after`` s both routers are SIGKILLed (no clean
     stop: in-flight requests are neither answered nor committed), and restarted ``--down`` s later.
  4. Every 0.5 s: the router group's committed offset and the end offset of each ``search_requests``
     partition. A partition is *served again* when its committed offset moves past where it stood at the
     restart (or it has nothing left to serve). A partition *stalls* when it has lag and its committed
     offset does not move for ``--stall-s`` s while the routers are up.
  5. After the load ends, until every partition's lag is 0 (or ``--watch`` s): requests on
     ``search_requests`` vs distinct request ids with an outcome on ``search_results``.

Printed: seconds from the restart until every partition is served again (and per partition), the longest
stall after that, requests / answered / unanswered, outcomes per request (≥ 1: re-processing after the
crash is expected, the windows stage counts a request once), each router's /readyz at the end and its exit.

    .venv/bin/python -m bench.bench_router_crash [--qps 60] [--duration 60] [--kill-after 15] [--down 3] [--json]
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
from aiokafka.admin import AIOKafkaAdminClient

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
    sigterm_as_exit,
    unique_prefix,
)
from canary.kafka.clients import Cluster, client_kwargs
from canary.kafka.topics import Topics, ensure_topics
from canary.ops.view import read_topic


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


async def group_progress(
    admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, group: str, tps: list[TopicPartition]
) -> dict[int, tuple[int, int]]:
    """partition -> (committed offset, end offset)."""
    committed = await admin.list_consumer_group_offsets(group, partitions=tps)
    ends = await consumer.end_offsets(tps)
    out = {}
    for tp in tps:
        meta = committed.get(tp)
        out[tp.partition] = (meta.offset if meta is not None and meta.offset >= 0 else 0, ends[tp])
    return out


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
    group = f"{prefix}canary-router"
    result: dict[str, Any] = {"prefix": prefix, "logs": str(tmp)}
    admin = AIOKafkaAdminClient(**client_kwargs(bootstrap))
    probe = AIOKafkaConsumer(**client_kwargs(bootstrap), group_id=None, enable_auto_commit=False)
    await admin.start()
    await probe.start()
    load: subprocess.Popen[bytes] | None = None
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
        tps = [TopicPartition(topics.search_requests, p) for p in range(3)]
        load = subprocess.Popen(
            [*py, "load", "--qps", str(args.qps), "--duration", str(args.duration)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "load.log").open("ab"),
        )
        load_started = time.monotonic()
        log(f"load: {args.qps} requests/s for {args.duration} s; both routers SIGKILLed after {args.kill_after} s")
        await asyncio.sleep(args.kill_after)
        for r in routers:
            r.kill()
        log(f"both routers SIGKILLed; restarting them in {args.down} s")
        await asyncio.sleep(args.down)
        for r in routers:
            r.start()
        restarted = time.monotonic()
        at_restart = await group_progress(admin, probe, group, tps)
        served_at: dict[int, float] = {}
        last_move: dict[int, float] = dict.fromkeys(at_restart, restarted)
        last_committed = {p: c for p, (c, _) in at_restart.items()}
        longest_stall = dict.fromkeys(at_restart, 0.0)
        stall_log: list[dict[str, Any]] = []
        load_done_at: float | None = None
        watch_deadline = None
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            progress = await group_progress(admin, probe, group, tps)
            for p, (committed, end) in progress.items():
                if p not in served_at and (committed > at_restart[p][0] or committed >= end):
                    served_at[p] = now - restarted
                    log(f"partition {p} served again {served_at[p]:.1f} s after the restart")
                if committed != last_committed[p] or committed >= end:
                    last_move[p] = now
                    last_committed[p] = committed
                elif p in served_at:
                    stalled = now - last_move[p]
                    if stalled > longest_stall[p]:
                        longest_stall[p] = stalled
                    if stalled >= args.stall_s and not any(s["partition"] == p and s["open"] for s in stall_log):
                        stall_log.append({"partition": p, "since_s": last_move[p] - restarted, "open": True})
                        log(f"partition {p} STALLED: lag {end - committed}, no commit for {stalled:.0f} s")
                for s in stall_log:
                    if s["partition"] == p and s["open"] and last_move[p] == now:
                        s["open"] = False
                        s["lasted_s"] = round(now - restarted - s["since_s"], 1)
                        log(f"partition {p} moves again after {s['lasted_s']} s")
            for r in routers:
                if r.proc is not None and not r.alive():
                    log(f"{r.name} exited with {r.exits[-1]}")
            if load_done_at is None and load.poll() is not None:
                load_done_at = now
                watch_deadline = now + args.watch
                log(f"load finished ({now - load_started:.0f} s); waiting for the backlog (≤ {args.watch} s)")
            if load_done_at is not None:
                assert watch_deadline is not None
                if all(c >= e for c, e in progress.values()) or now > watch_deadline:
                    break
        final = await group_progress(admin, probe, group, tps)
        readiness = {r.name: r.readyz() for r in routers}
        await asyncio.sleep(2)  # the last acknowledged outcomes are on the topic before their commit
        requests = [r.get("request_id") for r in await read_all(bootstrap, topics.search_requests)]
        outcomes = [
            o for o in await read_all(bootstrap, topics.search_results) if isinstance(o, dict) and "kind" not in o
        ]
        per_request = Counter(o.get("request_id") for o in outcomes)
        distinct = set(requests)
        unanswered = sorted(r for r in distinct if r not in per_request)
        result.update(
            {
                "qps": args.qps,
                "duration_s": args.duration,
                "kill_after_s": args.kill_after,
                "down_s": args.down,
                "served_again_s": {str(p): round(s, 1) for p, s in sorted(served_at.items())},
                "all_served_again_s": round(max(served_at.values()), 1) if len(served_at) == len(tps) else None,
                "longest_stall_s": {str(p): round(s, 1) for p, s in sorted(longest_stall.items())},
                "stalls": stall_log,
                "final_lag": {str(p): e - c for p, (c, e) in sorted(final.items())},
                "requests": len(requests),
                "distinct_requests": len(distinct),
                "answered": len(distinct) - len(unanswered),
                "unanswered": len(unanswered),
                "outcomes": len(outcomes),
                "outcomes_per_request": dict(sorted(Counter(per_request.values()).items())),
                "readyz_at_end": {n: {"status": s, "body": b} for n, (s, b) in readiness.items()},
                "routers_alive_at_end": {r.name: r.alive() for r in routers},
            }
        )
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        for r in routers:
            code = r.stop()
            result.setdefault("router_exit_codes", {})[r.name] = [*r.exits] if code is None else r.exits
        result["worker_exit"] = worker.stop()
        await probe.stop()
        await admin.close()
    return result


def text(result: dict[str, Any]) -> str:
    lines = [
        f"scenario: {result['qps']} requests/s for {result['duration_s']} s; both routers SIGKILLed at "
        f"{result['kill_after_s']} s, restarted {result['down_s']} s later",
        f"every search_requests partition served again after: {result['all_served_again_s']} s "
        f"(per partition: {result['served_again_s']})",
        f"longest stall after being served (lag > 0, no commit): {result['longest_stall_s']} s",
        f"stalls ≥ threshold: {result['stalls'] or 'none'}",
        f"final lag per partition: {result['final_lag']}",
        f"requests: {result['requests']} ({result['distinct_requests']} distinct); answered: {result['answered']}; "
        f"UNANSWERED: {result['unanswered']}",
        f"outcomes: {result['outcomes']} (outcomes per request → requests: {result['outcomes_per_request']})",
        f"routers alive at the end: {result['routers_alive_at_end']}; exits: {result.get('router_exit_codes')}",
    ]
    for name, ready in result["readyz_at_end"].items():
        lines.append(f"{name} /readyz at the end: {ready['status']} {json.dumps(ready['body'])}")
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
    parser.add_argument("--stall-s", type=float, default=10.0, help="no commit with lag for this long = a stall")
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
