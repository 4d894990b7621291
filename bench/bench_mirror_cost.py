"""What shadow traffic and result-diff sampling cost a router (issue #23): CPU per served request and the
served latency, with a backend whose every search burns a fixed amount of CPU.

A RouterService (consume_requests=False, in this process) applies a real signed ``start`` from the control
topic of a real broker, then serves ``--requests`` requests through the in-process API at ``--qps``; every
search of the backend spins the CPU for ``--search-ms`` (a stand-in for an engine whose cost is all CPU:
the worst case for a mirror or a diff search, which then competes with the served searches for the same
core). Four configurations, same requests:

    baseline   candidate at weight 0.2, result-diff sampling off
    diff 10 %  the same, result-diff sampling at the default 10 % of candidate requests
    shadow 10 % / 50 %   weight 0 (shadow), that share of last_good's requests mirrored to the candidate

For each: the process's CPU seconds per served request (``/proc/self/stat``, the router is the only busy
thing in this process), the extra searches the router ran (measured + busy counts), and the served
latency (the in-process API's wall time, p50 / p95) — which is the contested figure on a shared machine,
so the load average is printed beside it.

    .venv/bin/python -m bench.bench_mirror_cost [--requests 600] [--qps 60] [--search-ms 4] [--json]
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec.structs

from bench.common import (
    base_parser,
    control_keys,
    emit,
    kafka,
    loadavg,
    log,
    machine,
    process_cpu_s,
    summary,
    unique_prefix,
)
from canary.kafka.topics import Topics, ensure_topics
from devtools.harness import preset_ref, send_command, start_command
from router.backends.memory import KeywordBackend, numbered_corpus
from router.service import RouterService

CANDIDATE = "candidate_high_recall"


class BusyBackend:
    """The keyword engine, plus ``search_ms`` of pure CPU per search (the event loop's thread: as an engine
    running in-process would)."""

    def __init__(self, search_ms: float) -> None:
        self.inner = KeywordBackend(numbered_corpus())
        self.search_s = search_ms / 1000.0
        self.searches = 0

    async def search(self, query: str, collection: str, params: Mapping[str, Any]) -> Sequence[str]:
        self.searches += 1
        end = time.perf_counter() + self.search_s
        while time.perf_counter() < end:
            pass
        return await self.inner.search(query, collection, params)


async def _configuration(
    bootstrap: Any, topics: Topics, name: str, weight: float, mirror: float | None, diff: float, args: Any
) -> dict[str, Any]:
    backend = BusyBackend(args.search_ms)
    router = RouterService(
        bootstrap, topics, backend, preset_ref("last_good"), consume_requests=False, diff_sample_rate=diff
    )
    await router.start()
    try:
        cmd = start_command(CANDIDATE, weight=weight)
        if mirror is not None:
            cmd = msgspec.structs.replace(cmd, mirror=mirror)
        await send_command(bootstrap, topics, cmd)
        while cmd.deployment_id not in router.ledger.deployments:
            await asyncio.sleep(0.05)
        latencies: list[float] = []
        cpu0 = process_cpu_s(os.getpid()) or 0.0
        searches0 = backend.searches
        started = time.perf_counter()

        async def one(i: int) -> None:
            t = time.perf_counter()
            await router.execute_search(f"q{i % 200}", "documents", user_id=f"user-{i}")
            latencies.append((time.perf_counter() - t) * 1000)

        tasks = []
        for i in range(args.requests):
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(max(0.0, started + (i + 1) / args.qps - time.perf_counter()))
        await asyncio.gather(*tasks)
        await asyncio.gather(*router.searcher.exact_tasks)  # the background searches, mirrored and diff
        cpu = (process_cpu_s(os.getpid()) or 0.0) - cpu0
        return {
            "configuration": name,
            "served": args.requests,
            "by_arm": dict(router.stats.by_arm),
            "extra_searches": backend.searches - searches0 - args.requests,
            "mirrored": dict(router.stats.mirrored),
            "diff_samples": dict(router.stats.diff_samples),
            "cpu_ms_per_served_request": round(cpu / args.requests * 1000, 3),
            "served_latency_ms": summary(latencies),
            "loadavg": loadavg(),
        }
    finally:
        await router.stop()


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--requests", type=int, default=600, help="served requests per configuration")
    parser.add_argument("--qps", type=float, default=60.0, help="request rate (default 60)")
    parser.add_argument("--search-ms", type=float, default=4.0, help="CPU each backend search burns (default 4)")
    args = parser.parse_args()
    configurations = [
        ("baseline (weight 0.2, diff off)", 0.2, None, 0.0),
        ("diff 10 % (weight 0.2)", 0.2, None, 0.10),
        ("shadow, mirror 10 %", 0.0, 0.10, 0.0),
        ("shadow, mirror 50 %", 0.0, 0.50, 0.0),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, control_keys(Path(tmp)), kafka() as target:
        log(target.describe())
        for name, weight, mirror, diff in configurations:
            log(f"{name}: {args.requests} requests at {args.qps:g}/s, {args.search_ms:g} ms CPU per search")
            topics = Topics(unique_prefix("mirror"))
            ensure_topics(target.bootstrap, topics)
            rows.append(asyncio.run(_configuration(target.bootstrap, topics, name, weight, mirror, diff, args)))
    lines = [
        f"{args.requests} served requests per configuration at {args.qps:g}/s; every search burns "
        f"{args.search_ms:g} ms of CPU",
        f"{'configuration':34} {'extra searches':>14} {'CPU ms / served':>16} {'served p50 ms':>14} {'p95 ms':>8}",
    ]
    for r in rows:
        lat = r["served_latency_ms"]
        lines.append(
            f"{r['configuration']:34} {r['extra_searches']:>14} {r['cpu_ms_per_served_request']:>16.2f} "
            f"{lat['median']:>14.2f} {lat['p95']:>8.2f}"
        )
    lines.append(f"machine: {machine()}; load average at the end {loadavg()}")
    emit({"rows": rows, "machine": machine(), "args": vars(args)}, "\n".join(lines), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
