"""A replay end to end, without Kafka: recompute, compare with live, backtest, and the post-mortem document.

:func:`run_replay` takes what :func:`canary.replay.reader.read_span` read (a :class:`SpanData`) and
returns the post-mortem as a JSON-ready dict: every window, every verdict, each deployment's decision
and the window that triggered it, the live figures' differences (with explanations) and, with override
rules, which decisions the backtest changes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from canary.core.custom import recorded_external
from canary.core.deployment import Deployment
from canary.core.models import ControlCommand, JSONDict, WindowResult, iso_ms
from canary.core.slo import SLOPolicy, SLORule
from canary.pipeline.loop import PipelineDecision, fold_commands
from canary.pipeline.recompute import Recomputation, in_span, recompute, span_bounds
from canary.pipeline.settings import PipelineSettings
from canary.replay.compare import (
    Difference,
    backtest_changes,
    compare_decisions,
    compare_windows,
    decision_text,
    dedupe_live_windows,
    first_rollbacks,
    issued_text,
    live_agent_commands,
    live_decisions,
)
from canary.replay.span import SpanData

FORMAT_VERSION = 1


def _deployment_info(dep: Deployment) -> JSONDict:
    return {
        "deployment_id": dep.deployment_id,
        "status": dep.status,
        "candidate_config": dep.candidate.name,
        "candidate_version": dep.candidate.version,
        "candidate_hash": dep.candidate.content_hash,
        "last_good_config": dep.last_good.name,
        "weight": dep.weight,
        "started_at": iso_ms(dep.started_at_ms),
        "started_at_ms": dep.started_at_ms,
        "ended_at": iso_ms(dep.ended_at_ms) if dep.ended_at_ms is not None else None,
        "ended_at_ms": dep.ended_at_ms,
        "end_command_id": dep.end_command_id,
        "ended_by": dep.issued_by if dep.ended_at_ms is not None else None,
        "end_reason": dep.reason,
    }


def _times(data: SpanData) -> list[int | None]:
    """Each command's append time (None throughout when the span did not keep them)."""
    return data.command_times if len(data.command_times) == len(data.commands) else [None] * len(data.commands)


def _windows_in(rc: Recomputation, first_ms: int, until_ms: int, deployment_id: str | None) -> list[WindowResult]:
    return sorted(
        (w for w in rc.windows if in_span(w, first_ms, until_ms, deployment_id)),
        key=lambda w: (w.window_start_ms, w.key.as_str()),
    )


def _decisions_in(rc: Recomputation, deployment_id: str | None) -> list[PipelineDecision]:
    return [d for d in rc.decisions if deployment_id is None or d.deployment_id == deployment_id]


def _issued_in(cmd: ControlCommand, appended_ms: int | None, first_ms: int, last_ms: int) -> bool:
    """A recorded command the replayed agent could have issued: it took effect while the span was judged."""
    at = appended_ms if appended_ms is not None else cmd.issued_at_ms
    return first_ms <= at <= last_ms


def run_replay(
    data: SpanData,
    *,
    deployment_id: str | None = None,
    rules_override: SLOPolicy | Sequence[SLORule] | None = None,
    rules_label: str | None = None,
    settings: PipelineSettings | None = None,
    compare_live: bool = True,
    apply_decisions: bool = True,
) -> JSONDict:
    """``apply_decisions``: the SLO agent's loop feeds its own commands back, as live (the default; "what
    would the live agent have done"); False: its decisions against the recorded control topic alone."""
    settings = settings or PipelineSettings()
    override = (
        rules_override
        if rules_override is None or isinstance(rules_override, SLOPolicy)
        else SLOPolicy(tuple(rules_override))
    )
    first_ms, until_ms = span_bounds(data.from_ms, data.to_ms, settings)
    # The external metrics' values the live agent judged (canary_verdicts): judged again, never re-queried.
    external = {w.window_id: v for w in data.live_windows if (v := recorded_external(w.stats))}
    started = time.perf_counter()
    base = recompute(
        data.records,
        data.commands,
        command_times=data.command_times,
        settings=settings,
        horizon_ms=data.horizon_ms,
        judge_from_ms=first_ms,
        judge_until_ms=until_ms,
        apply_decisions=apply_decisions,
        external=external,
    )
    recompute_s = time.perf_counter() - started
    ledger = fold_commands(data.commands, data.command_times)
    windows = _windows_in(base, first_ms, until_ms, deployment_id)
    decisions = _decisions_in(base, deployment_id)
    rollbacks = first_rollbacks(decisions)
    judgements = [
        j
        for j in base.judgements
        if (deployment_id is None or j.deployment_id == deployment_id) and first_ms <= j.window_start_ms < until_ms
    ]
    dep_ids = sorted(
        {w.deployment_id for w in windows if w.deployment_id}
        | {
            d.deployment_id
            for d in ledger.deployments.values()
            if (deployment_id is None or d.deployment_id == deployment_id)
            and d.started_at_ms < until_ms
            and (d.ended_at_ms is None or d.ended_at_ms >= first_ms)
        }
    )
    notes: list[str] = []
    if base.set_aside:
        shown = ", ".join(base.set_aside[:5]) + (f" … ({len(base.set_aside)})" if len(base.set_aside) > 5 else "")
        notes.append(
            f"the SLO agent's own recorded commands from the span on ({shown}) were set aside: the replay issues "
            "its own decisions and feeds them back as the live registry does, and compares them with these"
        )
    outcomes_in_span = sum(w.response_count for w in windows)
    empty = outcomes_in_span == 0
    if base.outcomes == 0:
        notes.append(
            f"no traffic: search_results holds no outcome between {iso_ms(data.read_from_ms)} and "
            f"{iso_ms(data.read_to_ms)} (read range of the span); nothing to replay"
        )
    elif empty:
        notes.append(
            "no traffic in the span"
            + (f" for deployment {deployment_id}" if deployment_id else "")
            + f" ({base.outcomes} outcomes read around it, none in a reported window)"
        )
    if deployment_id is not None and deployment_id not in ledger.deployments:
        notes.append(f"deployment {deployment_id} has no start command in the control topic up to the span's end")
    for dep_id in dep_ids:
        dep = ledger.deployments.get(dep_id)
        if dep is not None and dep.started_at_ms < first_ms:
            notes.append(
                f"deployment {dep_id} started at {iso_ms(dep.started_at_ms)}, before the span: SLO streaks start "
                f"at {iso_ms(first_ms)}, so a decision that needed earlier windows cannot be reproduced"
            )

    # -- live comparison --------------------------------------------------------------------------------------
    differences: list[Difference] = []
    live_section: JSONDict | None = None
    if compare_live:
        live_all, dup_diffs = dedupe_live_windows(
            w for w in data.live_windows if in_span(w, first_ms, until_ms, deployment_id)
        )
        live_late_by_key: dict[str, int] = {}
        for rec in data.live_late:
            if deployment_id is None or str(rec.get("key", "")).startswith(f"{deployment_id}|"):
                k = str(rec.get("key"))
                live_late_by_key[k] = live_late_by_key.get(k, 0) + 1
        differences += dup_diffs
        differences += compare_windows(windows, live_all, live_late_by_key=live_late_by_key)
        live_dec = [d for d in live_decisions(data.commands, deployment_id) if d.deployment_id in set(dep_ids)]
        last_issue = until_ms + settings.window_ms + settings.grace_ms
        live_other = live_agent_commands(
            # Issued on a window of the span: by the end of its last window + the grace (+ a window of slack).
            (c for c, t in zip(data.commands, _times(data), strict=True) if _issued_in(c, t, first_ms, last_issue)),
            deployment_id,
        )
        differences += compare_decisions(decisions, live_dec, dep_ids, live_other)
        identical = len({w.window_id for w in live_all} & {w.window_id for w in windows}) - len(
            {d.subject for d in differences if d.kind == "window_field"}
        )
        live_section = {
            "windows": len(live_all),
            "windows_identical": identical,
            "windows_replayed": len(windows),
            "decisions": [d.to_dict() for d in live_dec],
            "commands": [d.to_dict() for d in live_other],
            "late_dead_letters": sum(live_late_by_key.values()),
        }
        if live_all == [] and windows:
            notes.append(
                "the windows topic holds no live window for this span (the worker was not running, or its "
                "results expired): nothing to compare the replay with"
            )
        if sum(live_late_by_key.values()) or base.late:
            notes.append(
                f"lateness: live dead-lettered {sum(live_late_by_key.values())} outcome(s) of these keys as late; "
                f"replay marked {base.late} late (all partitions). Live judges lateness against its processing "
                "time, replay against the records' Kafka timestamps; they agree unless the worker stalled for "
                "longer than the grace period."
            )

    # -- backtest ----------------------------------------------------------------------------------------------
    backtest: JSONDict | None = None
    if override is not None:
        started = time.perf_counter()
        alt = recompute(
            data.records,
            data.commands,
            command_times=data.command_times,
            settings=settings,
            rules_override=override,
            horizon_ms=data.horizon_ms,
            judge_from_ms=first_ms,
            judge_until_ms=until_ms,
            apply_decisions=apply_decisions,
            external=external,
        )
        recompute_s += time.perf_counter() - started
        alt_windows = _windows_in(alt, first_ms, until_ms, deployment_id)
        alt_decisions = _decisions_in(alt, deployment_id)
        label = rules_label or "override"
        changes = backtest_changes(decisions, alt_decisions, windows, alt_windows, dep_ids, label)
        for dep_id in dep_ids:
            live_roll = rollbacks.get(dep_id)
            if live_roll is not None and live_roll.issued and dep_id not in first_rollbacks(alt_decisions):
                notes.append(
                    f"backtest {dep_id}: after the rollback at {live_roll.window_id} the candidate got no more "
                    "traffic, so the backtest cannot tell whether the looser rules would have failed later"
                )
        backtest = {
            "rules_file": rules_label,
            "rules": [r.to_dict() for r in override.rules],
            "policy": override.to_dict(),  # the whole policy: rules, inconclusive_limit, min_samples, metrics
            "decisions": [d.to_dict() for d in alt_decisions],
            "changes": [c.to_dict() for c in changes],
            "windows": [
                {
                    "window_id": w.window_id,
                    "slo_violations": w.slo_violations,
                    "verdicts": [v.to_dict() for v in w.verdicts],
                }
                for w in alt_windows
                if w.arm == "candidate"
            ],
            "judgements": [
                j.to_dict()
                for j in alt.judgements
                if (deployment_id is None or j.deployment_id == deployment_id)
                and first_ms <= j.window_start_ms < until_ms
            ],
        }

    report: JSONDict = {
        "kind": "canary.replay",
        "format_version": FORMAT_VERSION,
        "generated_at": iso_ms(time.time_ns() // 1_000_000),
        "span": {
            "from": iso_ms(data.from_ms),
            "to": iso_ms(data.to_ms),
            "from_ms": data.from_ms,
            "to_ms": data.to_ms,
            "first_window_start_ms": first_ms,
            "windows_until_ms": until_ms,
        },
        "deployment_filter": deployment_id,
        "rules_file": rules_label,
        "settings": settings.to_dict(),
        "apply_decisions": apply_decisions,
        "empty": empty,
        "input": {
            **data.to_dict(),
            "outcomes": base.outcomes,
            "outcomes_in_span": outcomes_in_span,
            "invalid_outcomes": base.invalid,
            "late_outcomes": base.late,
            "partitions": [p.to_dict() for p in base.partitions.values()],
            "invalid_samples": base.invalid_samples,
            "late_samples": base.late_samples,
            "recompute_seconds": round(recompute_s, 3),
        },
        "deployments": [
            {
                **(_deployment_info(ledger.deployments[d]) if d in ledger.deployments else {"deployment_id": d}),
                "rules": base.rules.get(d, []),
                "policy": base.policies.get(d),
                "commands": [c.to_dict() for c in data.commands if c.deployment_id == d],
                "command_times": [t for c, t in zip(data.commands, _times(data), strict=True) if c.deployment_id == d],
                "decision": rollbacks[d].to_dict() if d in rollbacks else None,
                "decision_text": decision_text(rollbacks.get(d)),
                # Every command the replayed agent issues for it, in order (rollout steps, pauses, …).
                "issued": [x.to_dict() for x in decisions if x.deployment_id == d and x.issued],
                "issued_text": issued_text([x for x in decisions if x.deployment_id == d and x.issued]),
            }
            for d in dep_ids
        ],
        "windows": [w.to_dict() for w in windows],
        "judgements": [j.to_dict() for j in judgements],
        "decisions": [d.to_dict() for d in decisions],
        "live": live_section,
        "differences": [d.to_dict() for d in differences],
        "backtest": backtest,
        "notes": notes,
    }
    report["summary"] = summary_lines(report)
    return report


def summary_lines(report: JSONDict) -> list[str]:
    """The human summary the CLI prints (also stored in the report)."""
    span = report["span"]
    inp = report["input"]
    lines = [
        f"replay {span['from']} → {span['to']}"
        + (f" (deployment {report['deployment_filter']})" if report["deployment_filter"] else "")
        + f": {inp['outcomes']} outcomes read from {len(inp['partitions'])} partition(s), "
        f"{inp['outcomes_in_span']} in {len(report['windows'])} reported window(s); "
        f"{inp['invalid_outcomes']} invalid, {inp['late_outcomes']} late"
    ]
    if report["empty"]:
        lines.append("NO TRAFFIC in this span: empty result")
    live = report["live"]
    live_by_dep = {d["deployment_id"]: d for d in (live or {}).get("decisions", [])}
    for dep in report["deployments"]:
        d = dep["deployment_id"]
        text = f"{d} ({dep.get('candidate_config', '?')}): replay: {dep['decision_text']}"
        decision: dict[str, Any] | None = dep.get("decision")
        if decision is not None and not decision["issued"]:
            text += f" [{decision['note']}]"
        others = [line for line in dep.get("issued_text", []) if not line.startswith("rollback")]
        if others:
            text += f"; also issued: {'; '.join(others)}"
        if live is not None:
            lv = live_by_dep.get(d)
            text += "; live: " + (f"rollback at {lv['triggering_window']} ({lv['rule']})" if lv else "no rollback")
        lines.append(text)
    if live is not None:
        diffs = report["differences"]
        lines.append(
            f"live comparison: {live['windows_identical']}/{live['windows']} live windows identical, "
            + (f"{len(diffs)} difference(s):" if diffs else "no differences")
        )
        for diff in diffs[:20]:
            what = diff["subject"] + (f" {diff['field']}" if diff["field"] else "")
            lines.append(f"  - {diff['kind']}: {what}: live={diff['live']!r} replay={diff['replay']!r}")
            lines.append(f"    {diff['explanation']}")
        if len(diffs) > 20:
            lines.append(f"  … {len(diffs) - 20} more in the report")
    bt = report["backtest"]
    if bt is not None:
        lines.append(f"backtest with rules {bt['rules_file']}:")
        lines += [f"  {'CHANGED' if c['changed'] else 'same   '} {c['summary']}" for c in bt["changes"]] or [
            "  no deployment in the span"
        ]
    lines += [f"note: {n}" for n in report["notes"]]
    return lines
