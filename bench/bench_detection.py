"""Detection-to-rollback latency over scripted bad canaries, broken down by stage.

Setup (real broker, unique topic prefix): ONE `canary worker` subprocess (grace 1000 ms by default),
ONE in-process RouterService whose FaultInjectingBackend makes `candidate_slow` 1500 ms slow, and a
LoadGenerator sending --qps requests/s through it for the whole benchmark. Runs are sequential: each
sends a `start` (weight 0.2) for a new deployment, waits until the router has applied the rollback the
SLO agent issues, keeps the traffic on for --tail-s more (a router that kept dispatching to the
candidate would show up in the total), and the next run starts right after.

Per run, from the windows and control topics and the router's own stats:
  T0           end of the 2nd consecutive failing candidate window: the rollback evidence's
               triggering_window (= the last window in evidence["windows"]), its window_end_ms
  window close the merged triggering window's emitted_at_ms − T0: routers' watermarks (every 50 ms)
               pass its end, partial windows reach the merge step, which emits the window
  slo agent    rollback issued_at_ms − triggering window emitted_at_ms: windows topic → SLO agent
  router       router applied_at_ms (RouterService.stats.applied) − issued_at_ms: control topic → router
  total        router.stats.last_candidate_dispatch_ms − T0: last request routed to the candidate
  residual     total − (window close + slo agent + router); ≤ 0 means the last candidate request
               was dispatched before the rollback was applied, as it must be
All timestamps are wall-clock ms on this one machine (worker, router and this script share the clock).

    .venv/bin/python -m bench.bench_detection [--runs 10] [--qps 50] [--grace-ms 1000] [--json]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    base_parser,
    control_keys,
    delete_prefixed_topics,
    emit,
    kafka,
    loadavg,
    log,
    machine,
    now_ms,
    sigterm_as_exit,
    summary,
    unique_prefix,
)
from canary.kafka.topics import Topics, ensure_topics
from devtools.harness import (
    LoadGenerator,
    WorkerProcess,
    make_backend,
    preset_ref,
    read_all,
    send_command,
    start_command,
)
from router.backends.fault import Fault
from router.service import RouterService

CANDIDATE = "candidate_slow"
PARTS = ("window_close", "slo_agent", "router")


async def wait_for(predicate: Any, timeout_s: float, what: str, poll_s: float = 0.01) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(poll_s)
    return time.monotonic() - started


async def warm_up(bootstrap: str, topics: Topics, worker: WorkerProcess, timeout_s: float) -> float:
    """Until the worker emits a window for the live traffic: group joined, agents running."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if worker.proc is not None and worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.proc.returncode}:\n{worker.log_tail()}")
        if await read_all(bootstrap, topics.windows, timeout=5):
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the worker emitted no window within {timeout_s:.0f}s:\n{worker.log_tail()}")


async def run_canaries(args: Any, bootstrap: str, topics: Topics, tmp: Path) -> dict[str, Any]:
    worker = WorkerProcess(
        bootstrap, topics, tmp / "audit.log", tmp / "worker-data", tmp / "worker.log", grace_ms=args.grace_ms
    )
    backend = make_backend({CANDIDATE: Fault(added_latency_ms=args.candidate_latency_ms)})
    router = RouterService(bootstrap, topics, backend, preset_ref("last_good"), consume_requests=False)
    runs: list[dict[str, Any]] = []
    out: dict[str, Any] = {"runs": runs}
    worker.start()
    load_task: asyncio.Task[None] | None = None
    load: LoadGenerator | None = None
    try:
        await router.start()
        load = LoadGenerator(router, qps=args.qps)
        load_started = time.monotonic()
        load_task = asyncio.create_task(load.run(10**9))
        log("warming up: waiting for the worker's first window")
        out["warm_up_s"] = await warm_up(bootstrap, topics, worker, args.warm_up_timeout_s)
        log(f"worker live after {out['warm_up_s']:.1f}s of traffic")
        for i in range(args.runs):
            if worker.proc is not None and worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.proc.returncode}:\n{worker.log_tail()}")
            cmd = start_command(CANDIDATE, weight=args.weight)
            dep = cmd.deployment_id
            run: dict[str, Any] = {"run": i + 1, "deployment_id": dep, "start_issued_ms": cmd.issued_at_ms}
            runs.append(run)
            candidate_before = router.stats.by_arm["candidate"]
            await send_command(bootstrap, topics, cmd)
            await wait_for(lambda dep=dep: dep in router.ledger.deployments, 30, f"router to apply start {dep}")
            run["start_applied_ms"] = now_ms()
            try:
                await wait_for(
                    lambda dep=dep: router.ledger.deployments[dep].status != "running",
                    args.run_timeout_s,
                    f"rollback of {dep}",
                )
            except TimeoutError as exc:
                run["error"] = str(exc)
                log(f"run {i + 1}: {exc}")
                continue
            run["status"] = router.ledger.deployments[dep].status
            run["rollback_seen_ms"] = now_ms()
            # Keep the traffic on: a router still dispatching to the candidate would move the total.
            await asyncio.sleep(args.tail_s)
            run["last_candidate_dispatch_ms"] = router.stats.last_candidate_dispatch_ms
            run["candidate_requests"] = router.stats.by_arm["candidate"] - candidate_before
            run["applied"] = [(c, t, at) for c, t, at in router.stats.applied if c == f"rollback-{dep}"]
            log(
                f"run {i + 1}/{args.runs}: {dep} {run['status']} "
                f"{(run['rollback_seen_ms'] - run['start_applied_ms']) / 1000:.1f}s after start"
            )
        out["achieved_qps"] = load.sent / (time.monotonic() - load_started)
    finally:
        if load_task is not None:
            load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load_task
        if load is not None:
            await load.drain()
        await router.stop()
        code = worker.stop()
        out["worker_exit_code"] = code
        if code not in (0, None):
            log(f"worker exited with {code}; log tail:\n{worker.log_tail(30)}")
    # Candidate windows as the SLO agent judged them (verdicts topic); last_good ones from the windows topic.
    judged = [j["window"] for j in await read_all(bootstrap, topics.verdicts, timeout=30) if isinstance(j, dict)]
    out["windows"] = await read_all(bootstrap, topics.windows, timeout=30)
    out["windows"] = [w for w in out["windows"] if w.get("arm") != "candidate"] + judged
    out["control"] = await read_all(bootstrap, topics.control, timeout=30)
    return out


def analyse(run: dict[str, Any], windows: list[dict[str, Any]], control: list[dict[str, Any]], grace: int) -> None:
    """Fill in T0 and the stage times of one run (in place)."""
    dep = run["deployment_id"]
    rollbacks = [c for c in control if c["deployment_id"] == dep and c["type"] == "rollback"]
    run["rollback_commands"] = len(rollbacks)
    if not rollbacks:
        run.setdefault("error", "no rollback command on the control topic")
        return
    rb = rollbacks[0]
    evidence = rb.get("evidence") or {}
    trigger_id = evidence.get("triggering_window")
    last_evidence = (evidence.get("windows") or [{}])[-1].get("window_id")
    run["rule"] = evidence.get("rule")
    run["evidence_consistent"] = trigger_id == last_evidence
    copies = [w for w in windows if w.get("window_id") == trigger_id]
    if not copies:
        run["error"] = f"triggering window {trigger_id} not found on the windows topic"
        return
    trigger = min(copies, key=lambda w: w["emitted_at_ms"])
    t0 = trigger["window_end_ms"]
    candidate = sorted(
        (w for w in windows if w["deployment_id"] == dep and w["arm"] == "candidate"),
        key=lambda w: w["window_start_ms"],
    )
    run["failing_windows_before_rollback"] = sum(
        1
        for w in candidate
        if w["window_start_ms"] <= trigger["window_start_ms"] and any(v["outcome"] == "fail" for v in w["verdicts"])
    )
    applied = [at for _, kind, at in run.get("applied", []) if kind == "rollback"]
    run["t0_ms"] = t0
    run["triggering_window"] = trigger_id
    run["triggering_emitted_ms"] = trigger["emitted_at_ms"]
    run["rollback_issued_ms"] = rb["issued_at_ms"]
    run["rollback_applied_ms"] = applied[0] if applied else None
    parts = {
        # Routers' watermarks close the window (no fixed grace); then partial windows → merge step.
        "window_close": float(trigger["emitted_at_ms"] - t0),
        "slo_agent": float(rb["issued_at_ms"] - trigger["emitted_at_ms"]),
        "router": float(applied[0] - rb["issued_at_ms"]) if applied else None,
    }
    run["parts_ms"] = parts
    last = run.get("last_candidate_dispatch_ms")
    run["total_ms"] = float(last - t0) if last is not None else None
    if run["total_ms"] is not None and parts["router"] is not None:
        run["residual_ms"] = run["total_ms"] - sum(v for v in parts.values() if v is not None)
    run["start_to_rollback_applied_s"] = (applied[0] - run["start_applied_ms"]) / 1000 if applied else None


def main() -> int:
    # Detection latency is the pipeline's, not the reranker's: the routers wait the model's cost (50 qps of
    # the real model would saturate this 2-core machine; see bench/bench_reranker.py).
    os.environ.setdefault("CANARY_RERANK", "modeled")
    parser = base_parser("detection-to-rollback latency over scripted bad canaries")
    parser.add_argument("--runs", type=int, default=10, help="bad canaries, one after another (default 10)")
    parser.add_argument("--qps", type=float, default=50.0, help="LoadGenerator requests/s (default 50)")
    parser.add_argument("--weight", type=float, default=0.2, help="candidate traffic share (default 0.2)")
    parser.add_argument("--grace-ms", type=int, default=1000, help="worker grace (default 1000)")
    parser.add_argument("--candidate-latency-ms", type=float, default=1500.0, help="injected candidate latency")
    parser.add_argument("--tail-s", type=float, default=1.0, help="traffic kept on after the rollback (default 1)")
    parser.add_argument("--run-timeout-s", type=float, default=60.0, help="give up on one run after this long")
    parser.add_argument("--warm-up-timeout-s", type=float, default=90.0)
    parser.add_argument("--keep-topics", action="store_true", help="external Kafka: keep the run's topics")
    args = parser.parse_args()

    result: dict[str, Any] = {
        "benchmark": "detection",
        "machine": machine(),
        "settings": {
            "runs": args.runs,
            "qps": args.qps,
            "weight": args.weight,
            "grace_ms": args.grace_ms,
            "candidate": CANDIDATE,
            "candidate_latency_ms": args.candidate_latency_ms,
            "tail_s": args.tail_s,
        },
    }
    started = time.monotonic()
    with (
        sigterm_as_exit(),
        kafka() as target,
        tempfile.TemporaryDirectory(prefix="canary-bench-det-") as tmp,
        control_keys(Path(tmp) / "keys") as keys_from,
    ):
        result["control_keys"] = keys_from
        topics = Topics(unique_prefix("det"))
        result["kafka"] = target.describe()
        result["topic_prefix"] = topics.prefix
        try:
            ensure_topics(target.bootstrap, topics)
            raw = asyncio.run(run_canaries(args, target.bootstrap, topics, Path(tmp)))
        finally:
            if target.external and not args.keep_topics:
                delete_prefixed_topics(target.bootstrap, topics.prefix)
    result["elapsed_s"] = time.monotonic() - started
    result["machine"]["loadavg_at_end"] = loadavg()
    result["warm_up_s"] = raw.get("warm_up_s")
    result["achieved_qps"] = raw.get("achieved_qps")
    runs = raw["runs"]
    for run in runs:
        if "error" not in run:
            analyse(run, raw["windows"], raw["control"], args.grace_ms)
        run.pop("applied", None)
    ok = [r for r in runs if "error" not in r and r.get("total_ms") is not None and r["parts_ms"]["router"] is not None]
    result["runs"] = runs
    result["ok_runs"] = len(ok)
    result["total_ms"] = summary([r["total_ms"] for r in ok])
    result["parts_ms"] = {p: summary([r["parts_ms"][p] for r in ok]) for p in PARTS}
    result["residual_ms"] = summary([r["residual_ms"] for r in ok])
    result["start_to_rollback_s"] = summary([r["start_to_rollback_applied_s"] for r in ok])
    budget = 400  # issue #10: end of the 2nd failing window → last candidate dispatch, p95
    late = sum(int(w.get("late_count", 0)) for w in raw["windows"] if w.get("arm") in ("candidate", "last_good"))
    result["late_outcomes"] = late
    p95 = result["total_ms"]["p95"]
    result["target"] = {"p95_total_max_ms": budget, "met": bool(ok) and p95 <= budget}
    emit(result, render(result), args.json)
    return 0


def render(r: dict[str, Any]) -> str:
    s = r["settings"]
    m = r["machine"]
    lines = [
        f"machine: {m['cpus']} CPUs, load average at start {m['loadavg_at_start']}, at end {m['loadavg_at_end']}",
        f"Detection → rollback: {r['ok_runs']}/{s['runs']} bad canaries ({s['candidate']} +"
        f"{s['candidate_latency_ms']:.0f} ms, weight {s['weight']}, {s['qps']:g} qps, grace {s['grace_ms']} ms), "
        f"{r['kafka']}, {r['elapsed_s']:.0f} s in all (worker warm-up {r['warm_up_s'] or float('nan'):.1f} s)",
        "  T0 = end of the 2nd failing candidate window (the rollback's triggering_window)",
        "",
        f"  {'ms after T0':<34}{'min':>8}{'median':>9}{'p95':>8}{'max':>8}",
    ]
    labels = {
        "window_close": "window closed: merged emitted − T0",
        "slo_agent": "SLO agent: issued − emitted",
        "router": "router: applied − issued",
    }
    for p in PARTS:
        st = r["parts_ms"][p]
        lines.append(f"  {labels[p]:<34}{st['min']:>8.0f}{st['median']:>9.0f}{st['p95']:>8.0f}{st['max']:>8.0f}")
    st = r["residual_ms"]
    lines.append(
        f"  {'residual: total − Σ parts':<34}{st['min']:>8.0f}{st['median']:>9.0f}{st['p95']:>8.0f}{st['max']:>8.0f}"
    )
    st = r["total_ms"]
    lines.append(
        f"  {'TOTAL: last candidate dispatch − T0':<34}{st['min']:>8.0f}{st['median']:>9.0f}{st['p95']:>8.0f}"
        f"{st['max']:>8.0f}"
    )
    st = r["start_to_rollback_s"]
    lines += [
        "",
        f"  load actually sent: {r['achieved_qps'] or float('nan'):.1f} requests/s",
        f"  start applied → rollback applied: median {st['median']:.1f} s (min {st['min']:.1f}, max {st['max']:.1f})",
        f"  target p95 total ≤ {r['target']['p95_total_max_ms']} ms: "
        f"{'MET' if r['target']['met'] else 'NOT MET'} (p95 {r['total_ms']['p95']:.0f} ms); "
        f"outcomes counted late in any window: {r['late_outcomes']}",
    ]
    bad = [x for x in r["runs"] if "error" in x]
    for x in bad:
        lines.append(f"  run {x['run']} ({x['deployment_id']}): {x['error']}")
    odd = [x for x in r["runs"] if "error" not in x and (x.get("rule") != "p95_ms" or not x.get("evidence_consistent"))]
    for x in odd:
        lines.append(
            f"  run {x['run']}: rule {x.get('rule')}, triggering window = last evidence: {x.get('evidence_consistent')}"
        )
    lines.append("  per run (ms after T0: window close / SLO / router / total; failing windows; start→rollback s):")
    for x in r["runs"]:
        if "parts_ms" not in x:
            continue
        pm = x["parts_ms"]
        lines.append(
            f"    {x['run']:>2} {x['deployment_id']}: {pm['window_close']:5.0f} / {pm['slo_agent']:4.0f} / "
            f"{pm['router'] if pm['router'] is not None else float('nan'):4.0f} / "
            f"{x['total_ms'] if x['total_ms'] is not None else float('nan'):5.0f};  "
            f"{x['failing_windows_before_rollback']} failing;  {x['start_to_rollback_applied_s'] or float('nan'):.1f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
