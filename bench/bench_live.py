"""One `canary worker` under live traffic: CPU per outcome and memory at steady rates (issue #24).

The backlog benchmark (bench_aggregation) measures how fast a worker drains a topic; in production a worker
mostly keeps up with traffic that arrives as it happens, in small batches, where fixed costs per batch,
window and checkpoint weigh more. Here, for each rate in --rates, on fresh topics of a real broker:

  1. every --deployments deployment is started with a signed command (2 window keys each, plus traffic
     outside any deployment: 1 deployment = 3 window keys, 20 = 41), and one worker is spawned;
  2. once its windows stage holds its partitions, this process produces outcomes for --seconds at the rate,
     stamped with the time they are sent, the way a router does (key = request id, partition =
     router.outcomes.outcome_partition, a watermark record to every partition every 50 ms);
  3. before the traffic, --idle-s seconds of the worker's CPU with none (its floor: loops, progress marks,
     commits); during it, every second it samples the worker's CPU (/proc/<pid>/stat) and resident memory
     (VmRSS); the first --warm-up-s seconds are left out of the CPU figure;
  4. at the end the router's last watermark closes every window, and the merged windows on canary_windows
     must count every outcome produced (the sum check), so the worker kept up and lost nothing.

Printed per rate: the rate actually produced, the worker's CPU µs per outcome and cores busy in the steady
part, RSS at the start of traffic, its peak and at the end (and the change end vs start), the windows stage's
lag when traffic stopped, and the sum check. The issue's targets: ≤ 8 µs per outcome at 8k/s; RSS flat
(± 10 %) over a 10-minute run at 16k/s (``--rates 16000 --seconds 600``).

    .venv/bin/python -m bench.bench_live [--rates 2000,8000,16000] [--seconds 60] [--deployments 1] [--json]
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.bench_aggregation import CANDIDATE, ROUTER_ID, declared_partitions, key_specs, proc_stat, watch_windows
from bench.common import (
    base_parser,
    control_keys,
    delete_prefixed_topics,
    emit,
    kafka,
    log,
    machine,
    now_ms,
    process_cpu_s,
    unique_prefix,
)
from canary.core.models import RouterWatermark
from canary.core.split import user_group
from canary.core.windows import DEFAULT_DEDUP_RETENTION_MS
from canary.kafka.clients import Cluster, client_kwargs
from canary.kafka.topics import Topics, ensure_topics
from devtools.harness import PRESETS, WorkerProcess, send_command, start_command
from router.outcomes import outcome_partition

TICK_S = 0.01  # outcomes are sent in 10 ms slices of the rate
WATERMARK_EVERY_S = 0.05  # a router's watermark tick
GRACE_MS = 1000


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class Traffic:
    """Outcomes as one router stamps and partitions them, made as they are sent."""

    def __init__(self, deps: list[str], partitions: int, seed: int) -> None:
        self.rng = random.Random(seed)
        specs = key_specs(deps)
        self.keys = [k for k, _ in specs]
        self.weights = [w for _, w in specs]
        self.partitions = partitions
        self.run = uuid.uuid4().hex[:8]
        self.i = 0
        self.templates = {
            k: {
                "deployment_id": k.deployment_id,
                "config_name": k.config_name,
                "config_version": PRESETS.get(k.config_name).to_dict()["metadata"]["version"],
                "config_hash": PRESETS.get(k.config_name).content_hash,
                "arm": k.arm,
                "router_id": ROUTER_ID,
            }
            for k in self.keys
        }

    def make(self, count: int, ts: int) -> list[tuple[int, bytes, bytes]]:
        out = []
        for key in self.rng.choices(self.keys, weights=self.weights, k=count):
            self.i += 1
            request_id = f"{self.run}-{self.i}"
            error = "backend_error" if self.rng.random() < 0.005 else None
            slow = 1.25 if key.arm == "candidate" else 1.0
            value = {
                "event_id": f"{ROUTER_ID}:{request_id}",
                "request_id": request_id,
                "ts": ts,
                **self.templates[key],
                "latency_ms": round(min(5000.0, self.rng.lognormvariate(math.log(120 * slow), 0.5)), 3),
                "recall_at_10": None if error else round(self.rng.uniform(0.5, 0.95), 3),
                "result_count": 0 if error else 10,
                "error": error,
                "user_group": user_group(request_id),
            }
            out.append((outcome_partition(request_id, self.partitions), request_id.encode(), orjson.dumps(value)))
        return out


async def lag(bootstrap: Cluster, topics: Topics) -> int | None:
    """Records of search_results past the windows stage's committed offsets (watermark records included)."""
    consumer = AIOKafkaConsumer(**client_kwargs(bootstrap), group_id=f"{topics.prefix}canary-streams-windows")
    await consumer.start()
    try:
        tps = [
            TopicPartition(topics.search_results, p) for p in range(declared_partitions(topics, topics.search_results))
        ]
        ends = await consumer.end_offsets(tps)
        total = 0
        for tp in tps:
            committed = await consumer.committed(tp)
            total += ends[tp] - (committed or 0)
        return total
    finally:
        await consumer.stop()


async def live_phase(
    bootstrap: Cluster, topics: Topics, deps: list[str], target: float, args: Any, tmp: Path
) -> dict[str, Any]:
    await asyncio.to_thread(ensure_topics, bootstrap, topics)
    for dep in deps:
        await send_command(bootstrap, topics, start_command(CANDIDATE, weight=0.2, deployment_id=dep))
    partitions = declared_partitions(topics, topics.search_results)
    worker = WorkerProcess(
        bootstrap,
        topics,
        tmp / f"audit-{topics.prefix}log",
        tmp / f"data-{topics.prefix}",
        tmp / f"worker-{topics.prefix}log",
        grace_ms=GRACE_MS,
    )
    worker.start()
    assert worker.proc is not None
    pid = worker.proc.pid
    out: dict[str, Any] = {"target_rate": target, "seconds": args.seconds, "deployments": len(deps)}
    producer = AIOKafkaProducer(**client_kwargs(bootstrap), acks=1, linger_ms=5)
    await producer.start()
    try:
        deadline = time.monotonic() + 120
        while "windows: acquired partitions" not in worker.log_tail(400):
            if time.monotonic() > deadline or worker.proc is None or worker.proc.poll() is not None:
                out["error"] = f"the worker did not take its partitions:\n{worker.log_tail(20)}"
                return out
            await asyncio.sleep(0.2)
        # The worker's own pace with no traffic at all (its loops, progress marks, commits): its floor.
        idle_cpu0, idle_t0 = process_cpu_s(pid), time.monotonic()
        await asyncio.sleep(args.idle_s)
        idle_cpu1 = process_cpu_s(pid)
        if idle_cpu0 is not None and idle_cpu1 is not None:
            out["idle_cores"] = (idle_cpu1 - idle_cpu0) / (time.monotonic() - idle_t0)
        traffic = Traffic(deps, partitions, seed=7)
        seq = 0

        async def watermark(status: str, mark: int) -> None:
            nonlocal seq
            seq += 1
            value = orjson.dumps(RouterWatermark(ROUTER_ID, mark, status, seq).to_dict())  # type: ignore[arg-type]
            for p in range(partitions):
                await producer.send(topics.search_results, value, key=ROUTER_ID.encode(), partition=p)

        await watermark("start", now_ms() - 1)
        samples: list[tuple[float, float | None, int | None]] = []  # (monotonic s, CPU s, RSS bytes)
        machine_samples: list[tuple[float, tuple[int, int] | None]] = []  # (monotonic s, (busy, total) jiffies)
        produced = 0
        started = time.monotonic()
        next_sample = started
        next_mark = started
        owed = 0.0
        while (now := time.monotonic()) < started + args.seconds:
            if now >= next_sample:
                samples.append((now - started, process_cpu_s(pid), rss_bytes(pid)))
                machine_samples.append((now - started, proc_stat()))
                next_sample += 1.0
            if now >= next_mark:
                await watermark("running", now_ms() - 1)
                next_mark += WATERMARK_EVERY_S
            owed += target * TICK_S
            count = int(owed)
            owed -= count
            ts = now_ms()
            for partition, key, value in traffic.make(count, ts):
                await producer.send(topics.search_results, value, key=key, partition=partition)
            produced += count
            await asyncio.sleep(max(0.0, started + (produced / target) - time.monotonic()))
        elapsed = time.monotonic() - started
        await producer.flush()
        samples.append((time.monotonic() - started, process_cpu_s(pid), rss_bytes(pid)))
        out["lag_at_stop"] = await lag(bootstrap, topics)
        # The last watermark closes every window the traffic touched.
        await watermark("running", now_ms() + 2 * 5000)
        await producer.flush()
        keys = {k.as_str() for k in traffic.keys}
        watched, windows, _ = await watch_windows(
            bootstrap, topics.windows, declared_partitions(topics, topics.windows), keys, produced, 120, [worker]
        )
        counted = sum(w.response_count + w.late_count for w in windows.values())
        # How long after its end each merged window came out while traffic flowed (the last ones close on the
        # final watermark, after the traffic: left out) — what a rollback waits for on top of the judge.
        stop_ms = now_ms()
        delays = sorted(w.emitted_at_ms - w.window_end_ms for w in windows.values() if w.window_end_ms < stop_ms - 6000)
    finally:
        await producer.stop()
        code = await asyncio.to_thread(worker.stop)
        if code not in (0, None):
            log(f"worker exited with code {code}; log tail:\n{worker.log_tail(30)}")
    steady = [s for s in samples if s[0] >= args.warm_up_s and s[1] is not None]
    cpu_s = steady[-1][1] - steady[0][1] if len(steady) >= 2 else math.nan  # type: ignore[operator]
    span = steady[-1][0] - steady[0][0] if len(steady) >= 2 else math.nan
    outcomes = produced * span / elapsed if elapsed > 0 else math.nan  # produced evenly over the run
    rss = [s[2] for s in samples if s[2] is not None]
    # The dedup memory grows until it holds its retention (60 s after each window): RSS is judged flat or not
    # from then on (traffic start + warm-up + retention + two windows), when the run lasts that long.
    filled_at = args.warm_up_s + (DEFAULT_DEDUP_RETENTION_MS + 2 * 5000) / 1000
    filled = next((s[2] for s in samples if s[0] >= filled_at and s[2] is not None), None)
    first_rss = next((s[2] for s in samples if s[0] >= args.warm_up_s and s[2] is not None), rss[0] if rss else None)
    idle = out.get("idle_cores")
    busy = [(t, st) for t, st in machine_samples if t >= args.warm_up_s and st is not None]
    if len(busy) >= 2 and busy[-1][1][1] > busy[0][1][1]:
        (_, (b0, t0)), (_, (b1, t1)) = busy[0], busy[-1]
        out["machine_cores_busy"] = (b1 - b0) / (t1 - t0) * (machine()["cpus"] or 1)
    out.update(
        cpu_us_per_outcome_above_idle=(cpu_s - idle * span) * 1e6 / outcomes if idle is not None and outcomes else None,
        produced=produced,
        rate=produced / elapsed if elapsed > 0 else math.nan,
        cpu_us_per_outcome=cpu_s * 1e6 / outcomes if outcomes else math.nan,
        cores_busy=cpu_s / span if span else math.nan,
        rss_start=first_rss,
        rss_peak=max(rss) if rss else None,
        rss_end=rss[-1] if rss else None,
        rss_change=(rss[-1] - first_rss) / first_rss if rss and first_rss else None,
        rss_series=[(round(t, 1), r) for t, _, r in samples],
        rss_filled_at_s=filled_at if filled is not None else None,
        rss_filled=filled,
        rss_change_after_fill=(rss[-1] - filled) / filled if filled and rss else None,
        counted=counted,
        emit_delay_ms={
            "windows": len(delays),
            "p50": delays[len(delays) // 2] if delays else None,
            "p95": delays[int(0.95 * (len(delays) - 1))] if delays else None,
            "max": delays[-1] if delays else None,
        },
        complete=bool(watched.get("complete")) and counted == produced,
    )
    return out


def run(args: Any) -> dict[str, Any]:
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    if not rates or any(r <= 0 for r in rates):
        raise SystemExit(f"--rates: positive numbers separated by commas, got {args.rates!r}")
    if args.deployments < 1:
        raise SystemExit(f"--deployments must be at least 1, got {args.deployments}")
    deps = [f"canary_live{uuid.uuid4().hex[:6]}{i:02d}" for i in range(args.deployments)]
    result: dict[str, Any] = {"benchmark": "live", "machine": machine(), "rows": []}
    with kafka() as target, tempfile.TemporaryDirectory(prefix="canary-bench-live-") as tmp_text:
        tmp = Path(tmp_text)
        result["kafka"] = target.describe()
        with control_keys(tmp / "keys") as keys_from:
            result["control_keys"] = keys_from
            for rate_ in rates:
                topics = Topics(unique_prefix("live"))
                keys = 2 * len(deps) + 1
                log(f"{rate_:,.0f} outcomes/s for {args.seconds:g} s, {keys} window keys, topics {topics.prefix}")
                try:
                    row = asyncio.run(live_phase(target.bootstrap, topics, deps, rate_, args, tmp))
                finally:
                    if target.external and not args.keep_topics:
                        delete_prefixed_topics(target.bootstrap, topics.prefix)
                result["rows"].append(row)
                log(f"    {render_row(row)}")
    return result


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f}"


def render_row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['target_rate']:,.0f}/s: ERROR {r['error']}"
    change = "-" if r["rss_change"] is None else f"{100 * r['rss_change']:+.1f} %"
    if r.get("rss_filled") is not None:
        change += (
            f"; from {_mib(r['rss_filled'])} MiB at {r['rss_filled_at_s']:.0f} s, dedup memory full: "
            f"{100 * r['rss_change_after_fill']:+.1f} %"
        )
    above = r.get("cpu_us_per_outcome_above_idle")
    idle = r.get("idle_cores")
    return (
        f"{r['rate']:>8,.0f}/s  CPU {r['cpu_us_per_outcome']:6.1f} µs/outcome "
        f"({'-' if above is None else format(above, '.1f')} above idle)  cores {r['cores_busy']:.2f} "
        f"(idle {'-' if idle is None else format(idle, '.2f')}; machine {r.get('machine_cores_busy', math.nan):.2f})  "
        f"RSS start {_mib(r['rss_start'])} peak {_mib(r['rss_peak'])} end {_mib(r['rss_end'])} MiB ({change})  "
        f"lag at stop {r['lag_at_stop']}  window out after its end p50/p95/max "
        f"{r['emit_delay_ms']['p50']}/{r['emit_delay_ms']['p95']}/{r['emit_delay_ms']['max']} ms  "
        f"sum check {'OK' if r['complete'] else 'FAILED'} "
        f"({r['counted']:,} of {r['produced']:,})"
    )


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"machine: {m['cpus']} CPUs, load average at start {m['loadavg_at_start']}",
        f"one worker under live traffic; {result['kafka']}; control keys: {result['control_keys']}",
        "CPU of the worker process only (steady part, after the warm-up); RSS = VmRSS; lag = search_results records",
        "past the windows stage's committed offsets when traffic stopped",
    ]
    lines += [f"  {render_row(r)}" for r in result["rows"]]
    return "\n".join(lines)


def main() -> int:
    parser = base_parser(__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--rates", default="2000,8000,16000", help="outcomes/s, comma-separated (default 2000,8000,16000)"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="traffic per rate (default 60)")
    parser.add_argument("--warm-up-s", type=float, default=10.0, help="left out of the CPU figure (default 10)")
    parser.add_argument(
        "--idle-s", type=float, default=5.0, help="worker CPU measured with no traffic first (default 5)"
    )
    parser.add_argument(
        "--deployments", type=int, default=1, help="running deployments: 2 window keys each + 1 (default 1: 3 keys)"
    )
    parser.add_argument("--keep-topics", action="store_true", help="external Kafka: keep the run's topics")
    args = parser.parse_args()
    result = run(args)
    emit(result, render(result), args.json)
    return 0 if all(r.get("complete") for r in result["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
