"""Deployment commands of the spec's CLI: list, status, start, stop (and weight/pause/resume)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from canary.cli.output import emit as _emit
from canary.core.rollout import plan_status, plan_text
from canary.kafka.clients import KafkaConnection
from canary.ops.status import status_payload
from canary.settings import Settings


def _topics(settings: Settings) -> Any:
    from canary.kafka.topics import Topics

    return Topics(settings.topic_prefix)


def _security(settings: Settings) -> Any:
    from canary.security import ControlSecurity

    return ControlSecurity.operator(settings)


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from canary.config import PresetStore

    entries = PresetStore(settings.presets_dir).list()
    payload = [
        {
            "name": e.name,
            "version": e.version,
            "hash": e.content_hash,
            "valid": e.valid,
            "error": e.error,
            "description": e.description,
            "path": str(e.path),
        }
        for e in entries
    ]
    rows = [f"{'NAME':28} {'VERSION':9} {'HASH':17} VALID"]
    for e in entries:
        rows.append(f"{e.name:28} {e.version or '-':9} {e.content_hash or '-':17} {'yes' if e.valid else 'NO'}")
        if e.error:
            rows += [f"    {line}" for line in e.error.splitlines()]
    _emit(args, {"presets_dir": str(settings.presets_dir), "presets": payload}, "\n".join(rows))
    return 0 if all(e.valid for e in entries) else 2


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    payload = status_payload(settings, deployment_id=args.deployment)
    lines = []
    if payload["source"] == "cache":
        lines.append("(Kafka unreachable — showing the last cached view)")
    split = payload["traffic_split"]
    lines += [
        f"deployment:  {payload['deployment_id'] or '-'}",
        f"status:      {payload['status']}",
        f"active:      {payload['active_config']}   last_good: {payload['last_good']}",
        f"candidate:   {payload['candidate_config'] or '-'}",
        f"split:       active {split['active']:.0%} / candidate {split['candidate']:.0%}"
        + (
            f" (all {len(payload['deployments'])} candidates: {1 - split['active']:.0%})"
            if len(payload["deployments"]) > 1
            else ""
        ),
        f"requests:    {payload['total_requests']}",
    ]
    if payload.get("shadow_mirror"):
        lines.append(
            f"shadow:      no user on the candidate; {payload['shadow_mirror']:.0%} of last_good's requests mirrored"
        )
    if payload["rollout"]:
        lines.append(f"rollout:     {plan_text(payload['rollout'])}")
    if len(payload["deployments"]) > 1:
        lines.append(f"running:     {len(payload['deployments'])} candidates side by side (each on its own users)")
        lines += [
            f"  {d['deployment_id']}  {d['candidate_config']}  {d['status']}  weight {d['weight']:.0%}"
            f"  requests {d['requests']}"
            for d in payload["deployments"]
        ]
    if payload["reason"]:
        lines.append(f"reason:      {payload['reason']}")
    live = [r for r in payload["routers"] if r["live"]]
    lines.append(f"routers:     {len(live)} live / {len(payload['routers'])} known")
    # Live (it heartbeats and obeys control) is not serving: say which routers hold request partitions
    # they do not read.
    lines += [
        f"  {r['router_id']} NOT taking requests: {r['requests_stalled']}" for r in live if r.get("requests_stalled")
    ]
    if payload["rejected_commands"]:
        counts: dict[str, int] = {}
        for r in payload["rejected_commands"]:
            counts[r["reason"]] = counts.get(r["reason"], 0) + 1
        summary = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))
        lines.append(f"rejected:    {len(payload['rejected_commands'])} control record(s) not applied ({summary})")
    if payload["refused_commands"]:
        last = payload["refused_commands"][-1]
        lines.append(
            f"refused:     {len(payload['refused_commands'])} verified command(s) the ledger refused "
            f"(last: {last['command_id']}: {last['note']})"
        )
    _emit(args, payload, "\n".join(lines))
    return 0


def _print_ack(args: argparse.Namespace, ack: Any, verb: str) -> int:
    payload = ack.to_dict()
    if ack.rejected:
        human = f"{verb} {ack.command.deployment_id}: the command was REJECTED, nothing applied — {ack.rejected}"
        _emit(args, {**payload, "ok": False}, human)
        print(f"canary: error: {human}", file=sys.stderr)
        return 4
    if ack.compensated:
        human = (
            f"{verb} {ack.command.deployment_id}: only {len(ack.acked_by)}/{len(ack.waited_for)} routers "
            "acknowledged in time; the start was withdrawn with an abort (nothing left half-applied)"
        )
        _emit(args, {**payload, "ok": False}, human)
        print(f"canary: error: {human}", file=sys.stderr)
        return 4
    accepted = getattr(args, "allow_unacked", False) or getattr(args, "no_router_check", False)
    if not ack.waited_for and not accepted:
        # Nobody obeyed it: a quiet "ok" here once hid that no router was left to stop the candidate.
        human = (
            f"{verb} {ack.command.deployment_id} is on the control topic, but no live router acknowledged it "
            "(none published a heartbeat in the last 15 s); routers apply it when they start. "
            "Pass --allow-unacked to accept that."
        )
        _emit(args, {**payload, "ok": False}, human)
        print(f"canary: error: {human}", file=sys.stderr)
        return 4
    missing = sorted(set(ack.waited_for) - set(ack.acked_by))
    if missing:
        human = f"{verb} {ack.command.deployment_id} issued, but not acknowledged by: {', '.join(missing)}"
        _emit(args, {**payload, "ok": False}, human)
        print(f"canary: error: {human} (timeout)", file=sys.stderr)
        return 4
    human = f"{verb} {ack.command.deployment_id}: acknowledged by {len(ack.acked_by)} router(s) in {ack.elapsed_ms} ms"
    _emit(args, {**payload, "ok": True}, human)
    return 0


def cmd_start(args: argparse.Namespace, settings: Settings) -> int:
    from canary.kafka.connect import require_kafka
    from canary.ops.commands import prepare_start, start_prepared

    # Input first (exit 2), then Kafka (exit 3), then the deployment state (exit 4).
    request = asyncio.run(prepare_start(settings, args.name, args.weight, shadow=args.shadow, mirror=args.mirror))
    bootstrap = require_kafka(settings)
    ack = asyncio.run(
        start_prepared(
            settings,
            bootstrap,
            request,
            timeout=args.timeout,
            security=_security(settings),
            require_router=not args.no_router_check,
            parallel=args.parallel,
        )
    )
    return _print_ack(args, ack, "started")


def cmd_stop(args: argparse.Namespace, settings: Settings) -> int:
    from canary.kafka.connect import require_kafka
    from canary.ops.commands import stop_canary

    bootstrap = require_kafka(settings)
    security = _security(settings)
    ack = asyncio.run(
        stop_canary(
            bootstrap,
            _topics(settings),
            promote=args.promote,
            timeout=args.timeout,
            security=security,
            deployment_id=args.deployment,
        )
    )
    return _print_ack(args, ack, "promoted" if args.promote else "rolled back")


def cmd_weight(args: argparse.Namespace, settings: Settings) -> int:
    from canary.kafka.connect import require_kafka
    from canary.ops.commands import simple_command

    bootstrap = require_kafka(settings)
    security = _security(settings)
    if args.action == "weight":
        ack = asyncio.run(
            simple_command(
                bootstrap,
                _topics(settings),
                "set_weight",
                weight=args.value,
                security=security,
                deployment_id=args.deployment,
            )
        )
    else:
        ack = asyncio.run(
            simple_command(bootstrap, _topics(settings), args.action, security=security, deployment_id=args.deployment)
        )
    return _print_ack(args, ack, args.action)


def cmd_load(args: argparse.Namespace, settings: Settings) -> int:
    from canary.errors import ConfigError
    from canary.kafka.connect import require_kafka
    from canary.ops.load import bundled_queries, produce_load

    if args.qps <= 0 or args.duration <= 0 or args.users <= 0:
        raise ConfigError(f"--qps {args.qps} --duration {args.duration} --users {args.users}: must all be > 0")
    bootstrap = require_kafka(settings)

    def progress(sent: int, elapsed: float) -> None:
        if not args.json:
            print(f"\r  sent {sent} in {elapsed:.0f}s ({sent / elapsed:.0f}/s)", end="", file=sys.stderr, flush=True)

    report = asyncio.run(
        produce_load(
            bootstrap,
            _topics(settings),
            args.qps,
            args.duration,
            users=args.users,
            seed=args.seed,
            progress=progress,
            labeled=not args.unlabeled,
            queries=bundled_queries(settings.corpus),
        )
    )
    if not args.json:
        print(file=sys.stderr)
    human = (
        f"sent {report.sent} {'unlabeled' if args.unlabeled else 'labeled'} queries to "
        f"{_topics(settings).search_requests} in {report.seconds:.1f}s, "
        f"{report.acked} acknowledged by the broker ({report.achieved_qps:.1f}/s, target {report.target_qps}/s, "
        f"{report.users} users, max {report.max_behind_ms:.0f} ms behind schedule)"
    )
    _emit(args, report.to_dict(), human)
    if report.undelivered:
        # Exit 3 (Kafka misbehaved), with what did not get through; the run itself went to its end.
        print(
            f"canary: error: only {report.acked} of {report.sent + report.not_queued} requests reached the "
            f"broker ({report.failed} failed to deliver, {report.not_queued} not taken by the producer while "
            f"the broker did not answer, {report.unconfirmed} unconfirmed at the end)",
            file=sys.stderr,
        )
        return 3
    return 0


async def _watch(args: argparse.Namespace, settings: Settings, bootstrap: KafkaConnection) -> None:
    from canary.ops.view import read_view_async
    from canary.ops.watch import WatchState, format_window, tail_windows

    topics = _topics(settings)
    state = WatchState()
    security = _security(settings)
    view = await read_view_async(bootstrap, topics, verifier=security.verifier(topics.control))
    last_status = 0.0
    deadline = time.monotonic() + args.seconds if args.seconds else None
    where = "their beginning" if args.from_beginning else "what is published from now on"

    def ready(names: list[str]) -> None:
        print(f"watching {' and '.join(names)}: {where}", file=sys.stderr, flush=True)

    async for item in tail_windows(bootstrap, topics, from_beginning=args.from_beginning, on_ready=ready):
        window = state.add(item)
        if args.json:
            print(json.dumps(item.to_dict()), flush=True)
        else:
            if time.monotonic() - last_status > 2:
                view = await read_view_async(bootstrap, topics, verifier=security.verifier(topics.control))
                last_status = time.monotonic()
            dep = view.ledger.current or view.ledger.latest
            plan = plan_status(dep.candidate.snapshot, dep.weight) if dep else None
            header = (
                f"canary watch — {time.strftime('%H:%M:%S')}  deployment {dep.deployment_id if dep else '-'} "
                f"[{dep.status if dep else 'idle'}]  candidate {dep.candidate.name if dep else '-'} "
                f"weight {dep.candidate_weight if dep else 0:.0%}" + (f"  rollout {plan_text(plan)}" if plan else "")
            )
            rows = [
                format_window(w, state.streak_text(w)) + state.outage_text(w) for _, w in sorted(state.latest.items())
            ]
            if args.plain:
                print(format_window(window, state.streak_text(window)) + state.outage_text(window), flush=True)
            else:
                print("\x1b[2J\x1b[H" + header + "\n" + "\n".join(rows), flush=True)
        if deadline is not None and time.monotonic() > deadline:
            return


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    from canary.kafka.connect import require_kafka

    bootstrap = require_kafka(settings)
    with contextlib.suppress(TimeoutError):
        asyncio.run(asyncio.wait_for(_watch(args, settings, bootstrap), args.seconds + 5 if args.seconds else None))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "watch",
        help="live view: per arm p95, recall@10, counts, SLO verdicts and streak, weight, status",
        description="Refreshes as windows are published. Ctrl-C to leave.",
    )
    p.add_argument("--from-beginning", action="store_true", help="replay the window topic from its start")
    p.add_argument("--plain", action="store_true", help="one line per window instead of a refreshed screen")
    p.add_argument("--seconds", type=float, default=0, help="stop after this many seconds (0 = until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="one JSON window per line")
    p.set_defaults(handler=cmd_watch)

    p = sub.add_parser(
        "load",
        help="produce labeled (or --unlabeled) queries onto search_requests at a steady rate",
        description="Queries and relevance labels come from the bundled generated corpus. With --unlabeled the "
        "requests carry no relevant_ids: recall@10 then comes from the routers' sampled exact searches "
        "(CANARY_RECALL_SAMPLE_RATE).",
    )
    p.add_argument("--qps", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, required=True, help="seconds")
    p.add_argument("--users", type=int, default=1000, help="distinct user ids (sticky split key)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--unlabeled", action="store_true", help="send the queries without relevance labels")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_load)

    p = sub.add_parser("list", help="list presets with version, content hash and validity")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser(
        "status",
        help="current deployment, pointers, traffic split, routers",
        description="Folds the control and state topics; falls back to the last cached view if Kafka is down.",
    )
    p.add_argument(
        "--deployment",
        metavar="ID",
        help="describe this deployment (default: the most recently started running one, else the latest)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser(
        "start",
        help="start a canary of preset NAME (snapshot goes into the start command)",
        description=(
            "Validates the preset, refuses if a canary is already running (unless --parallel asks for several "
            "candidates at once; the same preset never runs twice), issues 'start' on the control topic and "
            "waits for every live router to acknowledge. If they do not within --timeout, the start is "
            "withdrawn with an abort."
        ),
    )
    p.add_argument("name", help="preset name (see 'canary list')")
    p.add_argument(
        "--parallel",
        action="store_true",
        help="run this candidate beside the running one(s), each on its own users (A/B/n); a different preset "
        "only, and last_good keeps at least CANARY_MIN_LAST_GOOD_SHARE of traffic",
    )
    p.add_argument(
        "--weight",
        type=float,
        default=None,
        help="candidate traffic share (default 0.10; a preset with a rollout plan starts at its first step)",
    )
    p.add_argument(
        "--shadow",
        action="store_true",
        help="start in shadow: no user is served by the candidate; a share of last_good's requests (--mirror) is "
        "also sent to it off the serving path, and its outcomes are judged with the same rules (a failing shadow "
        "is rolled back before anyone saw it). A preset whose plan starts with a shadow step does this itself",
    )
    p.add_argument(
        "--mirror",
        type=float,
        default=None,
        metavar="SHARE",
        help="share of last_good's requests mirrored to a shadow candidate (default 0.10; implies --shadow)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for acknowledgements")
    p.add_argument("--no-router-check", action="store_true", help="issue even when no router is live")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_start)

    p = sub.add_parser("stop", help="end the running canary: --promote or --rollback")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--promote", action="store_true", help="candidate becomes last_good and active")
    group.add_argument(
        "--rollback",
        action="store_true",
        help="all traffic back to last_good; with no canary running, reverts a promotion still in its bake",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for acknowledgements")
    p.add_argument(
        "--allow-unacked",
        action="store_true",
        help="exit 0 even when no live router acknowledged the command (it stays on the control topic)",
    )
    p.add_argument(
        "--deployment",
        metavar="ID",
        help="which running canary (required when several run at once; see 'canary status')",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_stop)

    for action, help_text in (("pause", "send no traffic to the candidate for now"), ("resume", "resume the canary")):
        p = sub.add_parser(action, help=help_text)
        p.add_argument(
            "--allow-unacked",
            action="store_true",
            help="exit 0 even when no live router acknowledged the command (it stays on the control topic)",
        )
        p.add_argument(
            "--deployment",
            metavar="ID",
            help="which running canary (required when several run at once; see 'canary status')",
        )
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(handler=cmd_weight, action=action)
    p = sub.add_parser("weight", help="change the candidate's traffic share")
    p.add_argument("value", type=float, help="new candidate share in (0, 1]")
    p.add_argument(
        "--allow-unacked",
        action="store_true",
        help="exit 0 even when no live router acknowledged the command (it stays on the control topic)",
    )
    p.add_argument(
        "--deployment",
        metavar="ID",
        help="which running canary (required when several run at once; see 'canary status')",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_weight, action="weight")
