"""Reporting commands of the spec's CLI: metrics, export, audit. Registered with :func:`register`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from canary.cli.output import emit as _emit
from canary.cli.output import safe_name
from canary.errors import ConfigError
from canary.settings import Settings

if TYPE_CHECKING:
    from canary.control import ControlHistory

INSECURE_HELP = (
    "INSECURE: read control commands without verifying their signatures (an unsigned lab topic; same as "
    "CANARY_INSECURE_CONTROL=1). Without it, a command the routers would reject is not applied here either"
)


def _audit_file(args: argparse.Namespace) -> Path | None:
    return Path(args.audit_log) if getattr(args, "audit_log", None) else None


# -- metrics ------------------------------------------------------------------------------------------------
def _fmt(v: float | None, spec: str, unit: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def _ends(control: ControlHistory | None) -> dict[str, int]:
    """When each ended deployment ended, as the ledger folds the (verified) control topic."""
    if control is None:
        return {}
    deployments = control.ledger.deployments.values()
    return {d.deployment_id: d.ended_at_ms for d in deployments if d.ended_at_ms is not None}


def _insecure(args: argparse.Namespace, settings: Settings) -> Settings:
    """``--insecure``: read an unsigned lab topic (the control commands are not verified)."""
    return settings.with_overrides(insecure_control=True) if getattr(args, "insecure", False) else settings


def _failed(s: dict[str, Any]) -> str:
    if s["failed_buckets"] is None:
        return "-"  # last_good is not judged
    return f"{s['failed_buckets']}/{s['judged_buckets']}"


def cmd_metrics(args: argparse.Namespace, settings: Settings) -> int:
    from canary.reports.export import read_topics
    from canary.reports.metrics import MetricsCollector

    if args.window is not None and args.window <= 0:
        raise ConfigError(f"--window {args.window}: must be > 0 minutes")
    if args.pooled and not args.config:
        raise ConfigError("--pooled: needs --config NAME (without it every config is listed, each pooled)")
    data = read_topics(_insecure(args, settings), control=bool(args.config), windows=True)
    collector = MetricsCollector(data.windows)
    known = collector.config_names()
    if args.config and args.config not in known:
        seen = ", ".join(known) if known else "none yet (no windows on the topic)"
        raise ConfigError(f"no windows for config {args.config!r}; configs seen: {seen}")
    scope = f"last {args.window:g} min" if args.window is not None else "all windows"
    if args.config and args.pooled:
        s = collector.get_summary_stats(args.config, args.window, deployment_id=args.deployment)
        s["scope"] = "pooled"
        human = "\n".join(
            [
                f"config:          {s['config_name']}   ({scope}; every deployment and arm pooled)",
                f"buckets:         {s['buckets']} ({s['failed_buckets']} failed an SLO rule)",
                f"requests:        {s['total_requests']} ({s['total_errors']} errors)",
                f"avg p95:         {_fmt(s['avg_p95_ms'], '.1f', ' ms')} (max {_fmt(s['max_p95_ms'], '.1f', ' ms')})",
                f"avg recall@10:   {_fmt(s['avg_recall_at_10'], '.3f')}",
                f"SLO violations:  {s['total_slo_violations']} requests",
                f"deployments:     {', '.join(s['deployments']) or '-'}",
            ]
        )
        _emit(args, s, human)
        return 0
    if args.config:
        rows = collector.per_deployment(
            args.config, args.window, deployment_id=args.deployment, ends=_ends(data.control)
        )
        lines = [
            f"config {args.config} ({scope}), per deployment and arm, oldest first; --pooled for one figure over all",
            f"{'DEPLOYMENT':26} {'ARM':9} {'BUCKETS':>7} {'FAILED':>7} {'REQUESTS':>8} {'AVG P95 MS':>10} "
            f"{'RECALL@10':>9} {'SLO VIOL':>8}",
        ]
        for s in rows:
            lines.append(
                f"{s['deployment_id']:26} {s['arm']:9} {s['buckets']:>7} {_failed(s):>7} {s['total_requests']:>8} "
                f"{_fmt(s['avg_p95_ms'], '.1f'):>10} {_fmt(s['avg_recall_at_10'], '.3f'):>9} "
                f"{s['total_slo_violations']:>8}"
            )
        if not rows:
            lines.append("(no windows in this scope)")
        lines.append(
            "FAILED: judged candidate buckets that failed a rule, until the deployment ended (last_good is not "
            "judged: -); SLO VIOL: requests that broke a threshold"
        )
        payload = {
            "config_name": args.config,
            "window_minutes": args.window,
            "scope": "deployment",
            "deployments": rows,
        }
        _emit(args, payload, "\n".join(lines))
        return 0
    stats = [collector.get_summary_stats(n, args.window) for n in known]
    table = [f"{'CONFIG':28} {'BUCKETS':>7} {'REQUESTS':>9} {'AVG P95 MS':>11} {'RECALL@10':>9} {'SLO VIOL':>8}"]
    for s in stats:
        table.append(
            f"{s['config_name']:28} {s['buckets']:>7} {s['total_requests']:>9} "
            f"{_fmt(s['avg_p95_ms'], '.1f'):>11} {_fmt(s['avg_recall_at_10'], '.3f'):>9} {s['total_slo_violations']:>8}"
        )
    if not stats:
        table.append("(no windows on the topic yet)")
    footer = f"\n({scope}; each config over all its deployments and arms: --config NAME shows them one by one)"
    _emit(args, {"window_minutes": args.window, "configs": stats}, "\n".join(table) + footer)
    return 0


# -- export -------------------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from canary.reports.export import export_deployment
    from canary.reports.files import canary_result

    out_dir = Path(args.output) if args.output else settings.reports_dir
    done = export_deployment(
        _insecure(args, settings), out_dir, args.deployment, audit_file=_audit_file(args), from_topics=args.from_topics
    )
    report, paths, source, events = done.report, done.paths, done.audit_source, done.audit_events
    result = canary_result(report)
    payload = {
        "deployment_id": report.deployment_id,
        "status": report.status,
        "output_dir": str(out_dir),
        "files": {k: str(p) for k, p in paths.items()},
        "buckets": len(report.all_windows),
        "audit_events": events,
        "audit_source": source,
        "invalid_windows": done.invalid_windows,
        "result": result,
    }
    lines = [f"exported {report.deployment_id} ({report.status}) to {out_dir}:"]
    lines += [
        f"  {p.name:20} {desc}"
        for p, desc in (
            (
                paths["canary_result"],
                f"status, {result['total_requests']} requests, {result['duration_seconds']:.0f} s",
            ),
            (paths["metrics"], f"{len(report.all_windows)} buckets"),
            (paths["audit"], f"{events} events (from {source})"),
            (paths["report_html"], "open in a browser"),
        )
    ]
    if result["rollback_reason"]:
        lines.append(f"reason: {result['rollback_reason']}")
    _emit(args, payload, "\n".join(lines))
    return 0


# -- audit --------------------------------------------------------------------------------------------------
def _detail(event: dict[str, Any]) -> str:
    d = event.get("details") or {}
    if event.get("event_type") == "router_state":
        return f"{d.get('status', '?')} active={d.get('active_config', '?')} weight={d.get('weight', '?')}"
    parts = []
    split = d.get("traffic_split")
    if isinstance(split, dict):
        parts.append(f"candidate {float(split.get('candidate', 0)):.0%}")
    if d.get("reason"):
        parts.append(str(d["reason"]))
    return "; ".join(parts)


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from canary.core.models import iso_ms
    from canary.reports.export import load_audit
    from canary.reports.files import event_time_ms

    if args.hours <= 0:
        raise ConfigError(f"--hours {args.hours}: must be > 0")
    events, source, _ = load_audit(
        _insecure(args, settings), audit_file=_audit_file(args), from_topics=args.from_topics
    )
    now = int(time.time() * 1000)
    since = now - int(args.hours * 3_600_000)
    recent = sorted((e for e in events if event_time_ms(e) >= since), key=event_time_ms)
    if args.deployment:
        recent = [e for e in recent if e.get("deployment_id") == args.deployment]
    rows = [f"{'TIME (UTC)':24} {'EVENT':18} {'DEPLOYMENT':20} {'BY':16} {'CONFIG':24} DETAIL"]
    for e in recent:
        cells = [e.get(k) or "-" for k in ("timestamp", "event_type", "deployment_id", "user_id", "config_name")]
        ts, kind, dep, user, config = (str(c) for c in cells)
        rows.append(f"{ts:24} {kind:18} {dep:20} {user:16} {config:24} {_detail(e)}")
    rows.append(f"({len(recent)} event(s) in the last {args.hours:g} h, from {source})")
    payload = {"source": source, "hours": args.hours, "since": iso_ms(since), "count": len(recent), "events": recent}
    _emit(args, payload, "\n".join(rows))
    return 0


# -- registration -------------------------------------------------------------------------------------------
def register(sub: Any) -> None:
    p = sub.add_parser(
        "metrics",
        help="summary stats (avg p95, avg recall@10, SLO violations) of a config's windows",
        description=(
            "Reads the finalized 5 s windows from the windows topic. avg_p95_ms is the mean of the buckets' "
            "p95; avg_recall_at_10 the mean over requests with a recall (labels or sampled exact search). "
            "With --config: one row per deployment and arm the config served in (failed buckets counted until "
            "the deployment ended), --pooled for one figure over all of them. Without --config: every config "
            "seen, each pooled."
        ),
    )
    p.add_argument("--config", metavar="NAME", help="preset name as it appears in the windows (config_name)")
    p.add_argument("--window", type=float, metavar="MINUTES", help="only windows that ended in the last MINUTES")
    p.add_argument(
        "--deployment", metavar="ID", type=safe_name("deployment id"), help="only windows of this deployment"
    )
    p.add_argument(
        "--pooled",
        action="store_true",
        help="with --config: one summary over every deployment and both arms (the spec's get_summary_stats)",
    )
    p.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_metrics)

    p = sub.add_parser(
        "export",
        help="write canary_result.json, metrics.json, audit.log and report.html for a deployment",
        description=(
            "Folds the control and windows topics for one deployment (default: the latest started) and writes "
            "the spec's files plus a static HTML report into --output. audit.log: --audit-log if given, else an "
            "audit.log already in --output (the worker's own log; left as is), else the worker's default "
            "reports/canary/audit.log, else rebuilt from the control and state topics."
        ),
    )
    p.add_argument("--output", metavar="DIR", help="output directory (default reports/canary)")
    p.add_argument(
        "--deployment",
        metavar="ID",
        type=safe_name("deployment id"),
        help="deployment id (default: the latest started)",
    )
    p.add_argument("--audit-log", metavar="PATH", help="the worker's audit log (default reports/canary/audit.log)")
    p.add_argument(
        "--from-topics", action="store_true", help="rebuild audit.log from the topics even if the file exists"
    )
    p.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser(
        "audit",
        help="audit events of the last H hours (control commands, router state changes)",
        description=(
            "From the worker's audit.log if present, else rebuilt from the control and state topics "
            "(the state topic is compacted, so older router states may be missing there)."
        ),
    )
    p.add_argument("--hours", type=float, default=24.0, metavar="H", help="look back H hours (default 24)")
    p.add_argument("--deployment", metavar="ID", type=safe_name("deployment id"), help="only events of this deployment")
    p.add_argument("--audit-log", metavar="PATH", help="the worker's audit log (default reports/canary/audit.log)")
    p.add_argument("--from-topics", action="store_true", help="rebuild from the topics even if the file exists")
    p.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_audit)
