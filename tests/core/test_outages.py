"""Broker outages the worker lived through (canary.core.outages), the note a judgement carries, and what the
report, canary_result.json and `canary watch` show of them (issue #19: the outage visible in verdicts)."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec.structs
import pytest

from canary.core.judge import Judgement
from canary.core.outages import (
    CONTEXT_KEY,
    BrokerOutage,
    OutageLog,
    OutageNote,
    merge_outages,
)
from canary.ops.watch import WatchState
from canary.reports.files import canary_result
from canary.reports.html import render_report
from canary.reports.model import build_report, outages_of_judgements
from tests.reports.dom import parse, select
from tests.reports.sample import BUCKET_MS, build

T0 = 1_700_000_000_000


def _probes(log: OutageLog, results: list[tuple[bool, int]], rtt: int = 5) -> list[Any]:
    return [log.probe(ok, at, at + rtt) for ok, at in results]


def test_a_run_of_failed_probes_becomes_an_outage_with_its_start_end_and_drain() -> None:
    log = OutageLog(min_outage_ms=3000, min_drain_ms=10_000)
    changes = _probes(log, [(True, 0), (False, 1000), (False, 2000), (False, 3000), (False, 4000), (True, 16_000)])
    assert changes == [None, None, None, None, "began", "ended"]
    (outage,) = log.outages
    assert outage == BrokerOutage(1000, 16_005, 16_005 + 2 * 15_005)  # drain: twice the outage
    assert outage.duration_s == 15.0 and log.current is None and log.last == outage


def test_a_short_gap_is_not_an_outage_and_the_drain_is_at_least_the_minimum() -> None:
    log = OutageLog(min_outage_ms=3000, min_drain_ms=10_000)
    assert _probes(log, [(False, 0), (False, 1000), (True, 2000)]) == [None, None, None]
    assert log.outages == [] and log.last is None
    _probes(log, [(False, 10_000), (False, 13_500), (True, 14_000)])
    assert log.outages == [BrokerOutage(10_000, 14_005, 24_005)]  # 2 × 4 s < 10 s


def test_an_ongoing_outage_is_current_and_meets_every_later_window() -> None:
    log = OutageLog()
    _probes(log, [(False, 1000), (False, 5000)])
    assert log.current == BrokerOutage(1000, None, None) and log.ongoing
    met = log.meeting(60_000, 65_000)
    assert met is not None and met[1] == "outage"
    assert log.meeting(0, 1000) is None  # ended before the outage began


@pytest.mark.parametrize(
    ("start", "phase"),
    [
        (0, None),  # [0, 5000) ends before the outage
        (5000, "outage"),  # [5000, 10000) overlaps its start
        (15_000, "outage"),
        (20_000, "drain"),  # begins at the outage's end
        (30_000, "drain"),
        (35_000, None),  # begins at drain_until
    ],
)
def test_how_a_window_meets_an_outage(start: int, phase: str | None) -> None:
    outage = BrokerOutage(7000, 20_000, 35_000)
    assert outage.phase(start, start + 5000) == phase


def test_the_note_names_the_outage_both_arms_and_reads_back_tolerantly() -> None:
    log = OutageLog()
    _probes(log, [(False, 1000), (False, 5000), (True, 12_000)])
    note = log.note(13_000, 18_000, 1268.0, 642.0)
    assert note is not None and note.phase == "drain"
    context = {CONTEXT_KEY: note.to_dict()}
    assert OutageNote.from_context(context) == note
    assert "backlog drain after a broker outage" in note.text() and "1268 ms" in note.text()
    assert "642 ms" in note.text() and "11 s" in note.text()
    for junk in (
        None,
        [],
        "x",
        {CONTEXT_KEY: []},
        {CONTEXT_KEY: {"start_ms": "1"}},
        {CONTEXT_KEY: {**note.to_dict(), "phase": "later"}},
        {CONTEXT_KEY: {"start_ms": 5, "end_ms": 1}},
    ):
        assert OutageNote.from_context(junk) is None, junk
    odd = OutageNote.from_context({CONTEXT_KEY: {**note.to_dict(), "candidate_p95_ms": float("nan")}})
    assert odd is not None and odd.candidate_p95_ms is None


def test_notes_of_many_windows_and_workers_merge_into_one_outage() -> None:
    merged = merge_outages(
        [
            BrokerOutage(1000, None, None),  # an early note saw it going on
            BrokerOutage(1000, 12_000, 23_000),
            BrokerOutage(1400, 12_300, 23_600),  # a second worker's probe
            BrokerOutage(90_000, 95_000, 105_000),
        ]
    )
    assert merged == (BrokerOutage(1000, 12_300, 23_600), BrokerOutage(90_000, 95_000, 105_000))


def _judged(sc: Any, outage: BrokerOutage) -> list[Judgement]:
    out = []
    lg = {w.window_start_ms: w for w in sc.windows if w.arm == "last_good"}
    for w in sc.windows:
        if w.arm != "candidate":
            continue
        context = None
        phase = outage.phase(w.window_start_ms, w.window_end_ms)
        if phase is not None:
            base = lg.get(w.window_start_ms)
            note = OutageNote(outage, phase, w.p95_ms, base.p95_ms if base else None)
            context = {CONTEXT_KEY: note.to_dict()}
        out.append(Judgement(w, {}, 0, None, w.window_end_ms + 500, context))
    return out


def test_a_judgement_carries_its_context_and_older_records_still_read() -> None:
    sc = build(T0)
    outage = BrokerOutage(T0 + 20_000, T0 + 32_000, T0 + 44_000)
    judged = _judged(sc, outage)
    noted = [j for j in judged if j.context is not None]
    assert len(noted) == 5  # buckets 4-5 (outage: 20-25, 25-30, 30-35), 7-8 (drain: 35-40, 40-45)
    for j in judged:
        assert Judgement.from_dict(j.to_dict()) == j
    older = noted[0].to_dict()
    del older["context"]
    assert Judgement.from_dict(older).context is None
    assert Judgement.from_dict({**noted[0].to_dict(), "context": [1]}).context is None
    assert outages_of_judgements(judged) == (outage,)


def test_the_report_shows_the_outage_with_both_arms_latency() -> None:
    sc = build(T0)
    outage = BrokerOutage(T0 + 20_000, T0 + 32_000, T0 + 44_000)
    far = BrokerOutage(T0 - 3_600_000, T0 - 3_500_000, T0 - 3_400_000)  # touches none of its windows
    report = build_report(commands=sc.command_dicts, windows=sc.windows, now_ms=T0 + 90_000, outages=[outage, far])
    assert report.outages == (outage,)
    slots = report.outage_slots(outage)
    assert [(s.start_ms - T0) // BUCKET_MS for s in slots] == [4, 5, 6, 7, 8]
    assert [s.phase for s in slots] == ["outage", "outage", "outage", "drain", "drain"]
    dom = parse(render_report(report))
    (band,) = select(dom, "svg.chart-p95 rect.outage-band")
    assert band.attrs["data-start-ms"] == str(outage.start_ms) and band.attrs["data-end-ms"] == str(outage.end_ms)
    assert select(dom, "svg.chart-p95 rect.drain-band") and select(dom, "svg.chart-recall rect.outage-band")
    (panel,) = select(dom, "section.panel-outages")
    rows = select(panel, "tr.outage-slot")
    assert [r.attrs["data-phase"] for r in rows] == ["outage", "outage", "outage", "drain", "drain"]
    first = rows[0]
    assert select(first, "td.cand-p95")[0].all_text() == "1,300 ms"  # CANDIDATE_P95[4]
    assert select(first, "td.lg-p95")[0].all_text() == "420 ms"  # LAST_GOOD_P95[4]
    assert "Broker unreachable from" in panel.all_text() and "(12 s)" in panel.all_text()
    result = canary_result(report)
    (entry,) = result["broker_outages"]
    assert entry["start_ms"] == outage.start_ms and entry["duration_s"] == 12.0
    assert [b["phase"] for b in entry["buckets"]] == ["outage", "outage", "outage", "drain", "drain"]
    assert entry["buckets"][0]["candidate_p95_ms"] == 1300.0 and entry["buckets"][0]["last_good_p95_ms"] == 420.0
    quiet = build_report(commands=sc.command_dicts, windows=sc.windows, now_ms=T0 + 90_000)
    assert "broker_outages" not in canary_result(quiet) and not select(parse(render_report(quiet)), "rect.outage-band")


def test_a_rollback_decided_during_an_outage_says_so_in_its_evidence() -> None:
    sc = build(T0)
    outage = BrokerOutage(T0 + 40_000, T0 + 45_000, T0 + 55_000)
    note = OutageNote(outage, "drain", 1650.0, 425.0)
    commands = [
        msgspec.structs.replace(c, evidence={**(c.evidence or {}), "context": {CONTEXT_KEY: note.to_dict()}})
        if c.type == "rollback"
        else c
        for c in sc.commands
    ]
    report = build_report(commands=[c.to_dict() for c in commands], windows=sc.windows, outages=[outage])
    (item,) = select(parse(render_report(report)), "li.outage-note")
    assert "decided on a bucket in the backlog drain after a broker outage" in item.all_text()
    assert "p95 candidate 1650 ms, last_good 425 ms" in item.all_text()


def test_watch_shows_the_outage_and_last_good_latency_next_to_the_candidate_window() -> None:
    sc = build(T0)
    outage = BrokerOutage(T0 + 20_000, T0 + 32_000, T0 + 44_000)
    state = WatchState()
    judged = _judged(sc, outage)
    # The note was written before last_good's window of the slot reached the worker: watch fills it in.
    j = next(j for j in judged if j.context is not None)
    j = dataclasses.replace(
        j,
        context={CONTEXT_KEY: {**j.context[CONTEXT_KEY], "last_good_p95_ms": None}},  # type: ignore[index]
    )
    lg = next(w for w in sc.windows if w.arm == "last_good" and w.window_start_ms == j.window.window_start_ms)
    state.add(lg)
    window = state.add(j)
    text = state.outage_text(window)
    assert text.startswith("  ⚠ during a broker outage (") and "12 s" in text
    assert "p95 candidate 1300 ms, last_good 420 ms" in text
    plain = next(j for j in judged if j.context is None)
    assert state.outage_text(state.add(plain)) == ""
