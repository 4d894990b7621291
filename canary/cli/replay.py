"""``canary replay``: recompute a span's windows and SLO decisions from Kafka or a topic dump, compare, backtest.

Wire-up: ``cli_replay.register(sub)`` with the top-level subparsers (like ``cli_ops.register``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from canary.cli.output import safe_name
from canary.errors import ConfigError, InvalidEvent
from canary.pipeline.settings import DEFAULTS
from canary.settings import Settings

if TYPE_CHECKING:
    from canary.replay.dumpfile import DumpSpan
    from canary.security import CommandVerifier


def _time_arg(value: str | None, option: str) -> int | None:
    from canary.core.models import parse_time

    if value is None:
        return None
    try:
        return parse_time(value)
    except InvalidEvent as exc:
        raise ConfigError(f"{option} {value!r}: expected ISO 8601 time or epoch milliseconds ({exc})") from None


def replay_payload(
    settings: Settings,
    from_ms: int | None,
    to_ms: int | None,
    *,
    deployment_id: str | None = None,
    rules_file: Path | None = None,
    output: Path | None = None,
    window_ms: int = DEFAULTS.window_ms,
    grace_ms: int = DEFAULTS.grace_ms,
    input_file: Path | str | None = None,
    insecure: bool = False,
) -> dict[str, Any]:
    """Read, replay, write the post-mortem; the report dict with ``report_files``. Used by the CLI and tests.

    With ``input_file`` (a kcat-style dump, see :mod:`canary.replay.dumpfile`) the span is read from the
    file and Kafka is not contacted; ``from_ms`` / ``to_ms`` then default to the span the dump covers.
    Control commands are verified with the settings' trusted keys, as the routers verify them; ``insecure``
    (``--insecure``, or ``settings.insecure_control``) reads an unsigned lab topic or dump."""
    from canary.config.rules import load_policy_file
    from canary.control import verifier_for
    from canary.kafka.topics import Topics
    from canary.pipeline.settings import PipelineSettings
    from canary.replay.output import write_report
    from canary.replay.postmortem import run_replay, summary_lines

    if input_file is None and (from_ms is None or to_ms is None):
        raise ConfigError("--from and --to are required (unless --input FILE)")
    if from_ms is not None and to_ms is not None and to_ms <= from_ms:
        raise ConfigError(f"--to must be after --from (got from={from_ms} to={to_ms})")
    rules = load_policy_file(rules_file) if rules_file is not None else None
    try:
        replay_settings = PipelineSettings(window_ms=window_ms, grace_ms=grace_ms, native=settings.native)
    except ValueError as exc:
        raise ConfigError(f"--window-ms/--grace-ms: {exc}") from None

    def verifier(control_topic: str) -> CommandVerifier:
        return verifier_for(control_topic, settings, insecure=insecure)

    dump: DumpSpan | None = None
    if input_file is not None:
        from canary.replay.dumpfile import load_span

        dump = load_span(
            input_file, from_ms, to_ms, replay_settings, topic_prefix=settings.topic_prefix, verifier=verifier
        )  # bound to the dump's control topic, which the dump names
        data = dump.data
    else:
        from canary.kafka.connect import require_kafka
        from canary.replay.reader import read_span

        assert from_ms is not None and to_ms is not None
        bootstrap = require_kafka(settings)
        data = asyncio.run(
            read_span(
                bootstrap,
                Topics(settings.topic_prefix),
                from_ms,
                to_ms,
                replay_settings,
                verifier=verifier(Topics(settings.topic_prefix).control),
            )
        )
    report = run_replay(
        data,
        deployment_id=deployment_id,
        rules_override=rules,
        rules_label=str(rules_file) if rules_file is not None else None,
        settings=replay_settings,
    )
    if dump is not None:
        from canary.replay.dumpfile import summary_line

        report["input"]["dump"] = dump.section
        for sample in report["input"]["invalid_samples"]:
            sample["line"] = dump.lines_by_result.get((sample.get("partition"), sample.get("offset")))
        report["notes"] = dump.notes + report["notes"]
        report["summary"] = summary_lines(report)
        report["summary"].insert(1, summary_line(dump.section))
    directory = output if output is not None else settings.project_root / "reports" / "replay"
    write_report(report, directory)  # adds report["report_files"]
    return report


def dump_payload(
    settings: Settings,
    from_ms: int | None,
    to_ms: int | None,
    path: Path,
    *,
    window_ms: int = DEFAULTS.window_ms,
    grace_ms: int = DEFAULTS.grace_ms,
) -> dict[str, Any]:
    """``--dump``: write what a replay of the span reads from Kafka as a kcat-style JSON-lines file."""
    from canary.kafka.connect import require_kafka
    from canary.kafka.topics import Topics
    from canary.pipeline.settings import PipelineSettings
    from canary.replay.dumpfile import write_dump

    if from_ms is None or to_ms is None:
        raise ConfigError("--dump needs --from and --to (the span to dump)")
    if to_ms <= from_ms:
        raise ConfigError(f"--to must be after --from (got from={from_ms} to={to_ms})")
    try:
        replay_settings = PipelineSettings(window_ms=window_ms, grace_ms=grace_ms, native=settings.native)
    except ValueError as exc:
        raise ConfigError(f"--window-ms/--grace-ms: {exc}") from None
    bootstrap = require_kafka(settings)
    return asyncio.run(write_dump(bootstrap, Topics(settings.topic_prefix), from_ms, to_ms, path, replay_settings))


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from_ms = _time_arg(args.from_time, "--from")
    to_ms = _time_arg(args.to_time, "--to")
    if args.dump:
        extra = [
            opt
            for opt, val in (("--deployment", args.deployment), ("--rules", args.rules), ("--output", args.output))
            if val
        ]
        if extra:
            raise ConfigError(f"--dump writes the span's records and replays nothing: {', '.join(extra)} not allowed")
        result = dump_payload(
            settings, from_ms, to_ms, Path(args.dump), window_ms=args.window_ms, grace_ms=args.grace_ms
        )
        if args.json:
            print(json.dumps(result, indent=2, sort_keys=True))
        else:
            counts = ", ".join(f"{t} {n}" for t, n in result["records"].items())
            print(
                f"dumped {result['lines']} record(s) of {result['span']['from']} → {result['span']['to']} "
                f"to {result['file']} ({counts})\n"
                f"replay it without Kafka: canary replay --input {result['file']}"
            )
        return 0
    report = replay_payload(
        settings,
        from_ms,
        to_ms,
        deployment_id=args.deployment,
        rules_file=Path(args.rules) if args.rules else None,
        output=Path(args.output) if args.output else None,
        window_ms=args.window_ms,
        grace_ms=args.grace_ms,
        input_file=args.input,
        insecure=args.insecure,
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
    from canary.cli.reports import INSECURE_HELP

    p = sub.add_parser(
        "replay",
        help="recompute windows and SLO decisions for a time span from Kafka or a topic dump (post-mortem, backtest)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Reads search_results (all partitions) for the span and the control topic up to its end, recomputes\n"
            "every 5 s window, verdict and decision with the live worker's code — the SLO agent's whole loop:\n"
            "rollbacks, low-traffic pauses, rollout steps, gates, promotion, each command fed back into the\n"
            "control topic's ledger as live (the live agent's own recorded commands are set aside and compared),\n"
            "compares them with the live windows (canary_windows, judged copies from canary_verdicts) and the\n"
            "live agent's commands, and writes a post-mortem (JSON + HTML). With --rules, also replays with that\n"
            "policy instead of each deployment's own and shows which decisions would change. Exit 0 also when\n"
            "the span has no traffic or replay and live differ (see 'differences').\n"
            "\n"
            "Offline, without a broker:\n"
            "  --input FILE  replays a topic dump in the JSON-lines envelope 'kcat -C -J' writes (one object per\n"
            "                line: topic, partition, offset, tstype, ts, broker, key, payload; key/payload a\n"
            "                string or null; '-' reads stdin, *.gz is decompressed). Kafka is not contacted.\n"
            "                Topics are recognized by their name's suffix (search_results, canary_control,\n"
            "                canary_windows, canary_verdicts, search_results.dlq); the rest of the name is the\n"
            "                prefix. A dump with one prefix is read whatever CANARY_TOPIC_PREFIX says; if it mixes\n"
            "                several, CANARY_TOPIC_PREFIX picks one. Records of canary's other topics are skipped.\n"
            "                'ts' (the Kafka record time) is the arrival time, as in a replay from Kafka, and the\n"
            "                same offset ranges are replayed. --from/--to are optional: by default the span is\n"
            "                the windows of the dump's outcomes, narrowed to the windows its canary_windows /\n"
            "                canary_verdicts records cover (so a --dump file replays exactly its span). Malformed\n"
            "                lines (not JSON, missing or mistyped field, unknown topic) are counted and listed\n"
            "                with line number and reason (input.dump in the JSON); the rest is replayed.\n"
            "  --dump FILE   writes what a replay of --from/--to reads, in that envelope: search_results over\n"
            "                the read range (a window + grace of warm-up on each side), canary_control up to its\n"
            "                end, the span's canary_windows and canary_verdicts (the live results to compare\n"
            "                with) and the outcome dead letters. Replays nothing.\n"
            "  e.g. for t in search_results canary_control canary_windows canary_verdicts; do\n"
            '         kcat -b HOST:9092 -C -J -e -q -t "$t"; done > dump.jsonl\n'
            "       canary replay --input dump.jsonl --json"
        ),
    )
    p.add_argument(
        "--from", dest="from_time", metavar="T1", help="span start: ISO 8601 or epoch ms (optional with --input)"
    )
    p.add_argument(
        "--to",
        dest="to_time",
        metavar="T2",
        help="span end (exclusive): ISO 8601 or epoch ms (optional with --input)",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--input", metavar="FILE", help="replay a kcat -C -J style JSON-lines dump instead of Kafka (no broker)"
    )
    source.add_argument("--dump", metavar="FILE", help="write the span's records from Kafka as such a dump, then exit")
    p.add_argument(
        "--deployment",
        metavar="ID",
        type=safe_name("deployment id"),
        help="only this deployment's windows and decision",
    )
    p.add_argument(
        "--rules",
        metavar="FILE",
        help="backtest: YAML/JSON with an 'slo' section, exactly a preset's (rules, consecutive_buckets, "
        "min_samples, confidence, method, inconclusive_limit, metrics), for every deployment",
    )
    p.add_argument("--output", metavar="DIR", help="post-mortem directory (default reports/replay/)")
    p.add_argument(
        "--window-ms",
        type=int,
        default=DEFAULTS.window_ms,
        help=f"window size the worker ran with ({DEFAULTS.window_ms})",
    )
    p.add_argument(
        "--grace-ms", type=int, default=DEFAULTS.grace_ms, help=f"grace the worker ran with ({DEFAULTS.grace_ms})"
    )
    p.add_argument("--insecure", action="store_true", help=INSECURE_HELP)
    p.add_argument("--json", action="store_true", help="print the whole result (incl. 'differences') as JSON")
    p.set_defaults(handler=cmd_replay)
