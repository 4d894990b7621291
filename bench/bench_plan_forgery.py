"""A stolen worker key attacking a rollout plan for its whole walk: is any step or promotion applied before
the plan allows it? And is a command signed for another environment ever applied? (issue #19)

Setup (real broker, unique topic prefix): ONE `canary worker` subprocess, ONE in-process RouterService under
--qps requests/s, a healthy `candidate_progressive` (10 → 25 → 50 → 100 %, 2 windows per step, promotion
≥ 30 s after the start). While it walks, an attacker holding the worker key writes to the control topic
every --attack-interval-s, always for the step after the weight the router has now:

  best       the next step (or the promotion at 100 %), citing every aligned 5 s window of the step that
             ends by now + 1 s — fabricated ids, the most a forger can claim
  bare       the same without evidence (the issue's attack: weight 1.0 and promoted within seconds)
  skip       the step after the next one
  promote    the promotion, whatever the step

plus, once, a start and a rollback signed by the operator key for environment "prod". When the canary
ends, the control topic is folded exactly as every reader folds it (verifier bound to the topic's scope,
ledger with each record's append time) and each record is classified. A step or promotion is *due* at
max(step began + min_duration_s, first aligned window start + min_windows × 5 s − 1 s) — and a promotion
no earlier than start + min_total_duration_s; one applied before that is "before its time". The attacker
uses the SLO agent's own ids, so a forgery appended when a step is due is applied (then the agent's copy
is a duplicate): that is the plan's pace, which the figures show.

    .venv/bin/python -m bench.bench_plan_forgery [--qps 60] [--attack-interval-s 0.25] [--json]
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
    unique_prefix,
)
from canary.control import read_records
from canary.core import wire
from canary.core.deployment import ControlLedger
from canary.core.models import CommandType, ControlCommand
from canary.core.rollout import (
    MIN_WINDOW_MS,
    WINDOW_END_TOLERANCE_MS,
    RolloutPlan,
    candidate_window_id,
    plan_of_snapshot,
    promote_command_id,
    step_command_id,
)
from canary.kafka.clients import client_kwargs
from canary.kafka.topics import Topics, ensure_topics
from canary.security import Scope
from devtools.harness import (
    LoadGenerator,
    WorkerProcess,
    make_backend,
    operator_signer,
    preset_ref,
    send_command,
    send_raw,
    start_command,
    worker_signer,
)
from router.service import RouterService

CANDIDATE = "candidate_progressive"
STEP_FIELDS = ("command_id", "by", "step", "in_step_s", "due_in_s", "since_start_s", "early")
ATTACKER = "attacker"
W = MIN_WINDOW_MS


def forged(dep: str, command_id: str, kind: CommandType, weight: float | None, evidence: Any) -> ControlCommand:
    return ControlCommand(command_id, kind, dep, None, None, None, weight, "forged", evidence, ATTACKER, now_ms())


def best_evidence(dep: str, began_ms: int) -> dict[str, Any]:
    """Every aligned window of the step that ends by now + the ledger's tolerance."""
    first = -(-began_ms // W) * W
    last_end = now_ms() + WINDOW_END_TOLERANCE_MS
    starts = range(first, max(first, last_end - W + 1), W)
    return {"windows": [candidate_window_id(dep, CANDIDATE, s) for s in starts], "window_ms": W}


async def attack(
    bootstrap: str, topics: Topics, router: RouterService, dep: str, plan: RolloutPlan, sent: list[str], every_s: float
) -> None:
    signer = worker_signer(topics)
    weights = plan.weights
    while True:
        current = router.ledger.deployments.get(dep)
        if current is None or not current.live:
            return
        step = plan.step_of_weight(current.weight)
        began = current.weight_set_at_ms or current.started_at_ms
        batch: list[tuple[str, ControlCommand]] = []
        best = best_evidence(dep, began)
        promote = promote_command_id(dep)
        if step is not None and step + 1 < len(weights):
            nxt = step + 1
            batch.append(("best", forged(dep, step_command_id(dep, nxt), "set_weight", weights[nxt], best)))
            batch.append(("bare", forged(dep, step_command_id(dep, nxt), "set_weight", weights[nxt], None)))
            if nxt + 1 < len(weights):
                batch.append(("skip", forged(dep, step_command_id(dep, nxt + 1), "set_weight", weights[nxt + 1], best)))
            batch.append(("promote", forged(dep, promote, "promote", None, best)))
        elif step is not None:
            batch.append(("best", forged(dep, promote, "promote", None, best)))
            batch.append(("bare", forged(dep, promote, "promote", None, None)))
        for kind, cmd in batch:
            await send_raw(bootstrap, topics, signer.sign_command(cmd), key=dep)
            sent.append(kind)
        await asyncio.sleep(every_s)


async def run(args: Any, bootstrap: str, topics: Topics, tmp: Path) -> dict[str, Any]:
    worker = WorkerProcess(bootstrap, topics, tmp / "audit.log", tmp / "worker-data", tmp / "worker.log")
    router = RouterService(bootstrap, topics, make_backend(), preset_ref("last_good"), consume_requests=False)
    out: dict[str, Any] = {}
    sent: list[str] = []
    worker.start()
    load_task: asyncio.Task[None] | None = None
    attack_task: asyncio.Task[None] | None = None
    load: LoadGenerator | None = None
    try:
        await router.start()
        load = LoadGenerator(router, qps=args.qps)
        load_task = asyncio.create_task(load.run(10**9))
        await asyncio.sleep(args.warm_up_s)
        # Signed by a key this environment trusts, for environment "prod".
        prod = operator_signer(topics).for_scope(Scope("prod", f"{topics.prefix}prod.canary_control"))
        other_start = start_command(CANDIDATE, weight=0.10)
        await send_raw(bootstrap, topics, prod.sign_command(other_start), key=other_start.deployment_id)
        cmd = start_command(CANDIDATE, weight=0.10)
        dep = cmd.deployment_id
        await send_command(bootstrap, topics, cmd)
        deadline = time.monotonic() + 30
        while dep not in router.ledger.deployments and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        plan = plan_of_snapshot(router.ledger.deployments[dep].candidate.snapshot)
        assert plan is not None
        other_rollback = ControlCommand(
            f"rollback-prod-{dep}", "rollback", dep, None, None, None, 0.0, "prod", None, "cli:prod", now_ms()
        )
        await send_raw(bootstrap, topics, prod.sign_command(other_rollback), key=dep)
        out["other_environment_ids"] = [other_start.command_id, other_rollback.command_id]
        attack_task = asyncio.create_task(attack(bootstrap, topics, router, dep, plan, sent, args.attack_interval_s))
        log(f"{dep}: walking the plan under attack")
        deadline = time.monotonic() + args.timeout_s
        while router.ledger.deployments[dep].live and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        out["deployment_id"] = dep
        out["final_status"] = router.ledger.deployments[dep].status
        out["final_weight"] = router.ledger.deployments[dep].weight
        log(f"{dep}: {out['final_status']} at weight {out['final_weight']}")
    finally:
        for task in (attack_task, load_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if load is not None:
            await load.drain()
        await router.stop()
        out["worker_exit_code"] = worker.stop()
    out["sent"] = {k: sent.count(k) for k in sorted(set(sent))}
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(**client_kwargs(bootstrap), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        out["control"] = await read_records(consumer, topics.control, timeout=60)
    finally:
        await consumer.stop()
    await asyncio.sleep(3)  # the worker's audit agent has written every line before it stopped
    audit = tmp / "audit.log"
    out["audit"] = [json.loads(x) for x in audit.read_text().splitlines() if x.strip()] if audit.exists() else []
    return out


def classify(raw: dict[str, Any], topics: Topics) -> dict[str, Any]:
    """Fold the control topic as every reader does; judge each applied rollout command against its due time."""
    from canary.security import ControlSecurity
    from canary.settings import load_settings

    verifier = ControlSecurity.operator(load_settings()).verifier(topics.control)
    ledger = ControlLedger()
    rows: list[dict[str, Any]] = []
    for record, at in raw["control"]:
        verdict = verifier.check(record, at)
        value = wire.as_json(record, wire.CONTROL)
        value = value if isinstance(value, dict) else {}
        row: dict[str, Any] = {"by": value.get("issued_by"), "command_id": value.get("command_id"), "at": at}
        if not verdict.accepted or verdict.command is None:
            row.update(outcome="rejected", reason=verdict.reason)
            rows.append(row)
            continue
        cmd = verdict.command
        before = ledger.deployments.get(cmd.deployment_id)
        t = ledger.apply(cmd, at)
        row.update(outcome="applied" if t.applied else "refused", note=t.note)
        if not t.applied:
            if "rollout plan (" in t.note:
                row["reason"] = t.note.split("rollout plan (", 1)[1].split(":", 1)[0]
            else:  # a copy of an id applied already, or the deployment had ended
                row["reason"] = "duplicate" if t.note.startswith("duplicate") else "ended"
        if t.applied and before is not None and cmd.command_id.startswith("rollout-") and cmd.type != "pause":
            plan = plan_of_snapshot(before.candidate.snapshot)
            assert plan is not None and at is not None
            step = plan.step_of_weight(before.weight)
            assert step is not None
            began = before.weight_set_at_ms or before.started_at_ms
            first = -(-began // W) * W
            done = plan.steps[step]
            due = max(began + int(done.min_duration_s * 1000), first + done.min_windows * W - WINDOW_END_TOLERANCE_MS)
            if cmd.type == "promote":
                due = max(due, (before.began_at_ms or before.started_at_ms) + int(plan.min_total_duration_s * 1000))
            row.update(step=step + 1, in_step_s=(at - began) / 1000, due_in_s=(due - began) / 1000, early=at < due)
            row["since_start_s"] = (at - (before.began_at_ms or before.started_at_ms)) / 1000
        rows.append(row)
    return {"rows": rows}


def main() -> int:
    os.environ.setdefault("CANARY_RERANK", "modeled")
    parser = base_parser("a stolen worker key attacking a rollout plan for its whole walk")
    parser.add_argument("--qps", type=float, default=60.0, help="LoadGenerator requests/s (default 60)")
    parser.add_argument("--warm-up-s", type=float, default=8.0, help="traffic before the start (default 8)")
    parser.add_argument("--attack-interval-s", type=float, default=0.25, help="between forgery batches (0.25)")
    parser.add_argument("--timeout-s", type=float, default=240.0, help="give up on the walk after this long")
    parser.add_argument("--keep-topics", action="store_true", help="external Kafka: keep the run's topics")
    args = parser.parse_args()
    result: dict[str, Any] = {"benchmark": "plan_forgery", "machine": machine(), "settings": vars(args)}
    started = time.monotonic()
    with (
        sigterm_as_exit(),
        kafka() as target,
        tempfile.TemporaryDirectory(prefix="canary-bench-forgery-") as tmp,
        control_keys(Path(tmp) / "keys") as keys_from,
    ):
        result["control_keys"] = keys_from
        topics = Topics(unique_prefix("forge"))
        result["kafka"] = target.describe()
        try:
            ensure_topics(target.bootstrap, topics)
            raw = asyncio.run(run(args, str(target.bootstrap), topics, Path(tmp)))
            rows = classify(raw, topics)["rows"]
        finally:
            if target.external and not args.keep_topics:
                delete_prefixed_topics(target.bootstrap, topics.prefix)
    result["elapsed_s"] = time.monotonic() - started
    result["machine"]["loadavg_at_end"] = loadavg()
    attacker = [r for r in rows if r["by"] == ATTACKER]
    applied = [r for r in rows if r["outcome"] == "applied" and str(r["command_id"]).startswith("rollout-")]
    reasons: dict[str, int] = {}
    for r in attacker:
        if r["outcome"] != "applied":
            reasons[r.get("reason") or r["outcome"]] = reasons.get(r.get("reason") or r["outcome"], 0) + 1
    other_env = [r for r in rows if r["command_id"] in raw.get("other_environment_ids", [])]
    audit_by_id: dict[str, list[dict[str, Any]]] = {}
    for e in raw["audit"]:
        audit_by_id.setdefault(e.get("details", {}).get("command_id"), []).append(e)
    result.update(
        deployment_id=raw.get("deployment_id"),
        final_status=raw.get("final_status"),
        final_weight=raw.get("final_weight"),
        worker_exit_code=raw.get("worker_exit_code"),
        forged_sent=raw["sent"],
        forged_records=len(attacker),
        forged_applied=sum(1 for r in attacker if r["outcome"] == "applied"),
        forged_applied_early=sum(1 for r in attacker if r.get("early")),
        forged_refused_by_reason=dict(sorted(reasons.items())),
        steps=[{k: r.get(k) for k in STEP_FIELDS} for r in applied],
        applied_early=sum(1 for r in applied if r.get("early")),
        other_environment=[{k: r.get(k) for k in ("command_id", "outcome", "reason")} for r in other_env],
        other_environment_applied=sum(1 for r in other_env if r["outcome"] == "applied"),
        audit_lines=len(raw["audit"]),
        # Copies of an applied id are deduplicated in the audit (one line per command id once applied).
        audit_forged_success=sum(1 for e in raw["audit"] if e["user_id"] == ATTACKER and e["success"]),
        audit_forged_failures=sum(1 for e in raw["audit"] if e["user_id"] == ATTACKER and not e["success"]),
        audit_other_environment_failures=sum(
            1 for r in other_env for e in audit_by_id.get(r["command_id"], []) if not e["success"]
        ),
    )
    emit(result, render(result), args.json)
    return 0


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"machine: {m['cpus']} CPUs, load average at start {m['loadavg_at_start']}, at end {m['loadavg_at_end']}",
        f"{CANDIDATE} under a stolen worker key, {r['kafka']}, {r['elapsed_s']:.0f} s in all",
        f"  deployment {r['deployment_id']}: {r['final_status']} at weight {r['final_weight']} "
        f"(worker exit code {r['worker_exit_code']})",
        f"  forged records: {r['forged_records']} ({r['forged_sent']}); applied {r['forged_applied']}, "
        f"of which before their time: {r['forged_applied_early']}",
        f"  refused by reason: {r['forged_refused_by_reason']}",
        "  steps and promotion as applied (step began → applied, due after, since start):",
    ]
    for s in r["steps"]:
        lines.append(
            f"    {s['command_id']:<40} by {s['by']:<10} step {s['step']}: {s['in_step_s']:6.1f} s "
            f"(due {s['due_in_s']:5.1f} s), {s['since_start_s']:6.1f} s since start{'  EARLY' if s['early'] else ''}"
        )
    lines += [
        f"  applied before their time: {r['applied_early']}",
        f"  other environment: {r['other_environment']} → applied {r['other_environment_applied']}; "
        f"audited success:false {r['audit_other_environment_failures']}",
        f"  audit: {r['audit_lines']} lines; forged commands audited success:true {r['audit_forged_success']}, "
        f"success:false {r['audit_forged_failures']} (copies of an applied id are deduplicated)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
