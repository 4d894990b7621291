"""``canary replay``: recompute a span's windows and SLO decisions from Kafka, compare with live, backtest rules.

Wire-up: ``cli_replay.register(sub)`` with the top-level subparsers (like ``cli_ops.register``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from canary.errors import ConfigError, InvalidEvent
from canary.settings import Settings


def _time_arg(value: str, option: str) -> int:
    from canary.core.models import parse_time

    try:
        return parse_time(value)
    except InvalidEvent as exc:
        raise ConfigError(f"{option} {value!r}: expected ISO 8601 time or epoch milliseconds ({exc})") from None


def replay_payload(
    settings: Settings,
    from_ms: int,
    to_ms: int,
    *,
    deployment_id: str | None = None,
    rules_file: Path | None = None,
    output: Path | None = None,
    window_ms: int = 5000,
    grace_ms: int = 1000,
) -> dict[str, Any]:
    """Read, replay, write the post-mortem; the report dict with ``report_files``. Used by the CLI and tests."""
    from canary.kafka.connect import require_kafka
    from canary.kafka.topics import Topics
    from canary.replay.output import write_report
    from canary.replay.postmortem import run_replay
    from canary.replay.reader import read_span
    from canary.replay.recompute import ReplaySettings
    from canary.replay.rules import load_rules_file

    if to_ms <= from_ms:
        raise ConfigError(f"--to must be after --from (got from={from_ms} to={to_ms})")
    rules = load_rules_file(rules_file) if rules_file is not None else None
    try:
        replay_settings = ReplaySettings(window_ms=window_ms, grace_ms=grace_ms)
    except ValueError as exc:
        raise ConfigError(f"--window-ms/--grace-ms: {exc}") from None
    bootstrap = require_kafka(settings)
    data = asyncio.run(read_span(bootstrap, Topics(settings.topic_prefix), from_ms, to_ms, replay_settings))
    report = run_replay(
        data,
        deployment_id=deployment_id,
        rules_override=rules,
        rules_label=str(rules_file) if rules_file is not None else None,
        settings=replay_settings,
    )
    directory = output if output is not None else settings.project_root / "reports" / "replay"
    write_report(report, directory)  # adds report["report_files"]
    return report


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from_ms = _time_arg(args.from_time, "--from")
    to_ms = _time_arg(args.to_time, "--to")
    report = replay_payload(
        settings,
        from_ms,
        to_ms,
        deployment_id=args.deployment,
        rules_file=Path(args.rules) if args.rules else None,
        output=Path(args.output) if args.output else None,
        window_ms=args.window_ms,
        grace_ms=args.grace_ms,
    )
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        lines = list(report["summary"])
        files = report["report_files"]
        lines.append(f"post-mortem: {files['json']}")
        lines.append(f"overview:    {files['html']}")
        lines += [f"deployment:  {path}" for path in files["deployment_pages"].values()]
        print("\n".join(lines))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="recompute windows and SLO decisions for a time span from Kafka (post-mortem, rule backtest)",
        description=(
            "Reads search_results (all partitions) for the span and the control topic up to its end, recomputes "
            "every 5 s window, verdict and rollback decision with the live worker's code, compares them with the "
            "live windows and rollbacks, and writes a post-mortem (JSON + HTML). With --rules, also replays with "
            "those rules instead of each deployment's own and shows which decisions would change. Exit 0 also "
            "when the span has no traffic or replay and live differ (see 'differences')."
        ),
    )
    p.add_argument("--from", dest="from_time", required=True, metavar="T1", help="span start: ISO 8601 or epoch ms")
    p.add_argument(
        "--to", dest="to_time", required=True, metavar="T2", help="span end (exclusive): ISO 8601 or epoch ms"
    )
    p.add_argument("--deployment", metavar="ID", help="only this deployment's windows and decision")
    p.add_argument(
        "--rules",
        metavar="FILE",
        help="backtest: YAML/JSON with an 'slo' section (a preset's format) for every deployment",
    )
    p.add_argument("--output", metavar="DIR", help="post-mortem directory (default reports/replay/)")
    p.add_argument("--window-ms", type=int, default=5000, help="window size the worker ran with (5000)")
    p.add_argument("--grace-ms", type=int, default=1000, help="grace the worker ran with (1000)")
    p.add_argument("--json", action="store_true", help="print the whole result (incl. 'differences') as JSON")
    p.set_defaults(handler=cmd_replay)
