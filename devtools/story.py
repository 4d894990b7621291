"""The demo's console story of one deployment: every window of both arms, every candidate verdict with the
numbers behind a failure, every decision with its reason, every control command that touched it — in
lines that fit :data:`WIDTH` columns, and in the order a reader needs them.

The SLO agent publishes a judged window (``canary_verdicts``) and the command it decided
(``canary_control``) at the same moment, on two topics: a follower may read the command first. The story
holds an agent's command back until the window that triggered it (``evidence.triggering_window``) has
been told, so "ROLLED BACK … failed for 2 consecutive buckets" never comes before the second failing
bucket. Kafka-free: the demo feeds it what it reads (:mod:`devtools.demo`).
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from canary.core.judge import Judgement
from canary.core.models import ControlCommand, RuleVerdict, WindowResult, iso_ms
from canary.errors import CanaryError

WIDTH: Final = 100  # every console line, its "[HH:MM:SS] " stamp included
STAMP: Final = 11  # len("[HH:MM:SS] ")
INDENT: Final = " " * 13  # verdict and decision lines sit under the window line they belong to
HOLD_S: Final = 5.0  # longest an agent's command waits for its triggering window to be told

ENDINGS: Final = {"rollback": "ROLLED BACK", "promote": "PROMOTED", "abort": "ABORTED"}
# What each outcome means, for the legend the demo prints once.
LEGEND: Final = (
    "verdicts per candidate bucket: pass (evidence that the rule holds), FAIL n/N (broken, with evidence; "
    "N failing buckets in a row roll back), shared (last_good is hit as hard: a platform shock, the "
    "candidate pauses), inconclusive (not enough evidence either way yet)"
)


def wrap(text: str, indent: str = "", width: int = WIDTH - STAMP) -> list[str]:
    """``text`` in lines of at most ``width`` columns (continuations indented two more). A word longer than a
    line (a long absolute path) is folded after a '/' — the only place it is cut."""
    lines = textwrap.wrap(
        text,
        width=width,
        initial_indent=indent,
        subsequent_indent=indent + "  ",
        break_long_words=False,
        break_on_hyphens=False,
    ) or [indent]
    out: list[str] = []
    for line in lines:
        while len(line) > width:
            cut = line.rfind("/", len(indent) + 4, width)  # keep the '/' on this line
            if cut < 0:
                break  # nothing to fold at: the word stays whole
            out.append(line[: cut + 1])
            line = indent + "  " + line[cut + 1 :]
        out.append(line)
    return out


def _pct(x: Any) -> str:
    return f"{float(x):.1%}" if isinstance(x, int | float) and not isinstance(x, bool) else "?"


def _num(x: Any, spec: str) -> str:
    return format(float(x), spec) if isinstance(x, int | float) and not isinstance(x, bool) else "?"


def verdict_why(v: RuleVerdict) -> str:
    """Why a bucket failed (or was set aside as a shared shock), in words and the judge's numbers."""
    e = v.evidence or {}
    if v.outcome == "shared":
        return f"{v.rule} shared: {v.reason}"
    path = e.get("path")
    if path == "detector":
        return f"{v.rule} FAIL, change detector: {v.reason}"
    where = "pooled since the start" if path == "pooled" else str(e.get("method", "point"))
    conf = e.get("confidence")
    at = f", {float(conf):.0%} bound" if isinstance(conf, int | float) else ""
    n = e.get("n")
    if "exceedances" in e:
        return (
            f"{v.rule} FAIL ({where}): {e['exceedances']}/{n} requests over {v.threshold:g} ms, "
            f"so at least {_pct(e.get('rate_lower_bound'))} are{at}; the rule allows {_pct(e.get('rate_threshold'))}"
        )
    if "errors" in e:
        return (
            f"{v.rule} FAIL ({where}): {e['errors']}/{n} requests errored, "
            f"so at least {_pct(e.get('rate_lower_bound'))}{at}; the rule allows {_pct(e.get('rate_threshold'))}"
        )
    if e.get("mean") is not None:
        lower = v.operator in ("ge", "gt")
        bound = e.get("mean_upper_bound") if lower else e.get("mean_lower_bound")
        side = "at most" if lower else "at least"
        return (
            f"{v.rule} FAIL ({where}): mean {_num(e['mean'], '.3f')} over {n} requests, {side} "
            f"{_num(bound, '.3f')}{at}; the rule needs {'≥' if lower else '≤'} {v.threshold:g}"
        )
    return f"{v.rule} FAIL: {v.reason}"


def _value(window: WindowResult) -> str:
    p95 = f"{window.p95_ms:5.0f} ms" if window.p95_ms is not None else "    - ms"
    recall = f"{window.recall_at_10:.2f}" if window.recall_at_10 is not None else "  - "
    return f"n={window.response_count:<4} p95 {p95}  recall@10 {recall}  errors {window.error_count}" + (
        f"  late {window.late_count}" if window.late_count else ""
    )


@dataclass
class Story:
    """Lines to print for one deployment, fed windows, judgements and the deployment's applied commands.

    ``consecutive``: each rule's failing buckets in a row that roll back (shown as ``FAIL 1/2``)."""

    deployment_id: str
    consecutive: Mapping[str, int] = field(default_factory=dict)
    told_windows: set[str] = field(default_factory=set)
    told_commands: set[str] = field(default_factory=set)
    held: dict[str, tuple[ControlCommand, float]] = field(default_factory=dict)
    decided: set[str] = field(default_factory=set)  # command ids of decisions told under their window
    ended: ControlCommand | None = None  # the applied rollback / promote / abort, once told

    def window(self, item: WindowResult | Judgement) -> list[str]:
        """The lines of a last_good window or a judged candidate window of this deployment (none for another
        deployment's, or a window already told), then any command that waited for it."""
        judgement = item if isinstance(item, Judgement) else None
        window = item.window if isinstance(item, Judgement) else item
        if self.ended is not None:
            return []  # the story ends with the end: what comes after is in-flight requests finishing late
        if window.deployment_id != self.deployment_id or window.window_id in self.told_windows:
            return []
        if window.arm == "candidate" and judgement is None:
            return []  # the unjudged copy: its judgement follows on the verdicts topic
        self.told_windows.add(window.window_id)
        head = f"  {iso_ms(window.window_start_ms)[11:19]} {window.arm:9}  {_value(window)}"
        lines = wrap(head, "")
        if judgement is not None:
            lines += self._verdicts(judgement)
        lines += self._release(lambda cmd: self._trigger(cmd) == window.window_id)
        return lines

    def _verdicts(self, j: Judgement) -> list[str]:
        w = j.window
        if not w.verdicts:
            return wrap("not judged", INDENT)
        parts = []
        for v in w.verdicts:
            if v.outcome == "fail":
                need = self.consecutive.get(v.rule)
                streak = j.streaks.get(v.rule, 0)
                parts.append(f"{v.rule} FAIL {streak}/{need}" if need else f"{v.rule} FAIL")
            else:
                parts.append(f"{v.rule} {v.outcome}")
        lines = wrap(" · ".join(parts), INDENT)
        for v in w.verdicts:
            if v.outcome in ("fail", "shared"):
                lines += wrap(verdict_why(v), INDENT + "  ")
        if j.insufficient_windows:
            lines += wrap(f"too few requests to judge: {j.insufficient_windows} window(s) in a row", INDENT)
        if j.decision is not None:
            self.decided.add(j.decision.command_id)
            lines += wrap(f"→ the SLO agent decides {j.decision.type.upper()}: {j.decision.reason}", INDENT)
        return lines

    @staticmethod
    def _trigger(cmd: ControlCommand) -> str | None:
        trigger = (cmd.evidence or {}).get("triggering_window")
        return trigger if isinstance(trigger, str) else None

    def commands(self, applied: Iterable[ControlCommand], now: float | None = None) -> list[str]:
        """Lines for the deployment's applied commands not told yet. An agent's command whose triggering
        window was not told yet is held (at most :data:`HOLD_S`), so the story keeps its order."""
        now = time.monotonic() if now is None else now
        for cmd in applied:
            if cmd.deployment_id != self.deployment_id or cmd.command_id in self.told_commands:
                continue
            if cmd.command_id not in self.held:
                self.held[cmd.command_id] = (cmd, now)
        return self._release(lambda cmd: self._ready(cmd, now))

    def _ready(self, cmd: ControlCommand, now: float) -> bool:
        trigger = self._trigger(cmd)
        if trigger is None or trigger in self.told_windows:
            return True
        return now - self.held[cmd.command_id][1] >= HOLD_S

    def _release(self, ready: Any) -> list[str]:
        lines: list[str] = []
        # In topic order: a command held for its window also holds back the ones after it.
        for command_id, (cmd, _) in list(self.held.items()):
            if not ready(cmd):
                break
            del self.held[command_id]
            self.told_commands.add(command_id)
            lines += self.command_lines(cmd)
        return lines

    def command_lines(self, cmd: ControlCommand) -> list[str]:
        who = cmd.issued_by
        if cmd.type in ENDINGS:
            self.ended = cmd
            how = "automatically by the SLO agent" if who == "slo-agent" else f"by {who}"
            return wrap(f"{ENDINGS[cmd.type]} {how}: {cmd.reason or '(no reason given)'}")
        if cmd.type == "start":
            return []  # the demo says what it starts
        what = {"set_weight": "WEIGHT", "pause": "PAUSED", "resume": "RESUMED"}.get(cmd.type, cmd.type.upper())
        if cmd.type == "set_weight" and cmd.weight is not None:
            what += f" → {cmd.weight:.0%}"
        if cmd.command_id in self.decided:  # its reason was told with the window that decided it
            return wrap(f"{what} by {who} (decided above)", "  ")
        return wrap(f"{what} by {who}: {cmd.reason or '(no reason given)'}", "  ")


def applied_commands(commands: Iterable[Mapping[str, Any]], applied_ids: Iterable[str]) -> list[ControlCommand]:
    """The control records that are applied commands (a view's ``commands`` and its ledger's ids), in order."""
    ids = set(applied_ids)
    out: list[ControlCommand] = []
    seen: set[str] = set()
    for raw in commands:
        try:
            cmd = ControlCommand.from_dict(raw)
        except CanaryError:  # a record the ledger did not apply either (it is in no applied id)
            continue
        if cmd.command_id in ids and cmd.command_id not in seen:
            seen.add(cmd.command_id)
            out.append(cmd)
    return out


__all__ = ["LEGEND", "WIDTH", "Story", "applied_commands", "verdict_why", "wrap"]
