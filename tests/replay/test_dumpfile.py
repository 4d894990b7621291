"""Offline replay of a kcat-style topic dump (``canary replay --input``), without Kafka.

The recorded traffic is synthetic: a candidate that turns slow (rolled back by the SLO logic), a
last_good arm, the control topic (signed with the session's keys, as live: replay verifies it as the routers
do); the "live" results are what the Kafka-free pipeline itself derives,
published as the worker does (unjudged windows on canary_windows, judged copies on canary_verdicts,
the rollback on canary_control).
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec.structs
import pytest

from canary.cli import main
from canary.config import Preset, load_preset
from canary.control.records import VerifyControl
from canary.core.deployment import snapshot_hash
from canary.core.judge import Judgement as CoreJudgement
from canary.core.models import ControlCommand
from canary.errors import ConfigError
from canary.kafka.topics import Topics
from canary.pipeline.recompute import read_bounds, span_bounds
from canary.pipeline.run import Record, run_pipeline
from canary.pipeline.settings import PipelineSettings
from canary.replay.dumpfile import envelope, load_span, parse_lines, read_dump, split_topic
from canary.replay.postmortem import run_replay
from canary.replay.span import SpanData
from canary.security import CommandSigner, Scope
from canary.settings import Settings
from tests.replay.helpers import T0, Traffic, start

ROOT = Path(__file__).resolve().parents[2]
W = 5000
SLO = {"p95_ms": 1200, "recall_at_10": 0.30, "consecutive_buckets": 2, "min_samples": 20}
SLOW = [1500.0] * 19 + [100.0]
FAST = [100.0, 150.0, 200.0]
NO_KAFKA = Settings(bootstrap_servers="127.0.0.1:1")  # nothing listens there


# -- synthetic recording (tests/replay/helpers.py builds the records and commands) ---------------------------


def _traffic() -> list[Record]:
    """search_results records: a candidate that turns slow for two windows, and its last_good arm."""
    t = Traffic.new()
    for i, lat in enumerate([FAST, SLOW, SLOW, FAST]):
        t.steady(0, T0 + i * W, T0 + (i + 1) * W, 100, latency=lat, dep="dep-a", config="slow")
    t.steady(1, T0, T0 + 4 * W, 50, latency=FAST, dep="dep-a", config="last_good", arm="last_good")
    return [Record("search_results", p, o, ts, b"dep-a", raw) for p, o, ts, raw in t.records]


def _verifiable(cmd: ControlCommand) -> ControlCommand:
    """A start whose snapshots are real presets (the helpers' are stubs) under the helpers' names, with the
    candidate's content hash: what verification accepts (a replay verifies its control records)."""

    def real(preset: str, name: str, slo: dict[str, Any] | None) -> dict[str, Any]:
        snap = load_preset(ROOT / "configs" / "presets" / f"{preset}.yaml").to_dict()
        snap["metadata"]["name"] = name
        if slo is not None:
            snap["slo"] = Preset.from_snapshot({**snap, "slo": slo}).slo.to_dict()
        return snap

    assert cmd.candidate_config is not None and cmd.last_good_config is not None
    candidate = real("candidate_slow", cmd.candidate_config["metadata"]["name"], cmd.candidate_config["slo"])
    return msgspec.structs.replace(
        cmd,
        candidate_config=candidate,
        candidate_config_hash=snapshot_hash(candidate),
        last_good_config=real("last_good", cmd.last_good_config["metadata"]["name"], None),
    )


def _signed(cmd: ControlCommand, control_topic: str) -> bytes:
    """``cmd`` as the live control topic holds it: signed for that topic by the operator (the start) or the
    SLO agent's worker key (its rollback), the session's trusted keys (tests/conftest.py)."""
    key = os.environ["CANARY_WORKER_KEY" if cmd.issued_by == "slo-agent" else "CANARY_OPERATOR_KEY"]
    return CommandSigner.from_file(Path(key), scope=Scope(None, control_topic)).encode(cmd)


def _live(prefix: str = "") -> tuple[list[Record], list[Record]]:
    """(search_results + canary_control records, the live results the worker would have published)."""
    topics = Topics(prefix)
    outcomes = _traffic()
    begin = _verifiable(start("dep-a", "slow", at=T0 - 100, slo=SLO))  # the default (sequential) judge
    result = run_pipeline(outcomes, commands=[begin], horizon_ms=T0 + 6 * W)
    [decision] = result.decisions
    rollback = ControlCommand(
        command_id=decision.command_id,
        type="rollback",
        deployment_id="dep-a",
        candidate_config=None,
        candidate_config_hash="h-slow",
        last_good_config=None,
        weight=0.0,
        reason=decision.reason,
        evidence=decision.evidence,
        issued_by="slo-agent",
        issued_at_ms=decision.window_end_ms + 1000,
    )
    control = [
        Record(topics.control, 0, i, c.issued_at_ms, b"dep-a", _signed(c, topics.control))
        for i, c in enumerate([begin, rollback])
    ]
    outcomes = [replace(r, topic=topics.search_results) for r in outcomes]
    live: list[Record] = []
    offsets: dict[tuple[str, int], int] = {}

    def publish(topic: str, partition: int, at: int, value: dict[str, Any]) -> None:
        off = offsets.get((topic, partition), 0)
        offsets[(topic, partition)] = off + 1
        live.append(Record(topic, partition, off, at, b"dep-a", json.dumps(value).encode()))

    judged = {j.window_id: j for j in result.judgements}
    for w in sorted(result.windows, key=lambda w: (w.window_start_ms, w.arm)):
        at = w.window_end_ms + 1000 + 20
        publish(topics.windows, 0, at, msgspec.structs.replace(w, verdicts=()).to_dict())  # canary_windows: unjudged
        if w.window_id in judged:
            j = judged[w.window_id]
            core = CoreJudgement(window=w, streaks=j.streaks, insufficient_windows=j.insufficient_windows)
            publish(topics.verdicts, 0, at + 5, core.to_dict())
    return [*outcomes, *control], live


def _write(path: Path, records: list[Record], extra: list[str] | None = None) -> Path:
    lines = [envelope(r.topic, r.partition, r.offset, r.arrival_ms, r.value, key=r.key) for r in records]
    path.write_text("\n".join([*lines, *(extra or [])]) + "\n", encoding="utf-8")
    return path


def _kafka_span(records: list[Record], from_ms: int, to_ms: int, horizon_ms: int) -> SpanData:
    """What read_span would read from Kafka holding exactly these records (the reference)."""
    from canary.replay.reader import parse_windows

    settings = PipelineSettings()
    read_from, read_to = read_bounds(from_ms, to_ms, settings)
    first, _ = span_bounds(from_ms, to_ms, settings)
    base = {r.topic: split_topic(r.topic)[1] for r in records}  # type: ignore[index]
    outcomes = [
        (r.partition, r.offset, r.arrival_ms, r.value)
        for r in records
        if base[r.topic] == "search_results" and read_from <= (r.arrival_ms or 0) < read_to
    ]
    commands, times, _ = VerifyControl()(r for r in records if base[r.topic] == "canary_control")
    windows = [r.value for r in records if base[r.topic] == "canary_windows" and (r.arrival_ms or 0) >= first]
    verdicts = [r.value for r in records if base[r.topic] == "canary_verdicts" and (r.arrival_ms or 0) >= first]
    live, _ = parse_windows(windows, verdicts)
    return SpanData(from_ms, to_ms, read_from, read_to, horizon_ms, outcomes, commands, live, command_times=times)


COMPARED = ("windows", "judgements", "decisions", "differences", "deployments", "empty", "span")


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in COMPARED:
        assert a[key] == b[key], key
    assert a["live"] == b["live"]


# -- parsing ------------------------------------------------------------------------------------------------


def test_parse_good_and_malformed_lines_with_line_numbers() -> None:
    good = envelope("search_results", 2, 7, T0, b'{"a": 1}', key=b"k", broker=1)
    lines = [
        good,  # 1
        "",  # 2: blank, skipped silently
        "{not json",  # 3
        "[1, 2]",  # 4
        '{"topic": "search_results", "partition": 0, "key": null, "payload": null}',  # 5: no offset
        '{"topic": "search_results", "partition": "0", "offset": 1, "key": null, "payload": null}',  # 6
        '{"topic": "search_results", "partition": 0, "offset": 1, "key": null, "payload": 12}',  # 7
        '{"topic": "canary_control", "partition": 0, "offset": 3, "ts": 1.5, "key": null, "payload": "{}"}',  # 8
        '{"topic": "canary_control", "partition": 0, "offset": -1, "key": null, "payload": "{}"}',  # 9
        '{"topic":"canary_control","partition":0,"offset":4,"key":null,"payload":"{}","headers":["h","v"]}',  # 10
        '{"topic": "", "partition": 0, "offset": 1, "key": null, "payload": null}',  # 11
        '{"topic": "search_results", "partition": true, "offset": 1, "key": null, "payload": null}',  # 12
    ]
    dump = parse_lines([line.encode() + b"\n" for line in lines], "hand.jsonl")
    assert dump.lines == 12 and dump.blank_lines == 1
    assert [(b.line, b.kind) for b in dump.bad] == [
        (3, "not_json"),
        (4, "not_object"),
        (5, "missing_field"),
        (6, "wrong_type"),
        (7, "wrong_type"),
        (8, "wrong_type"),
        (9, "wrong_type"),
        (11, "wrong_type"),
        (12, "wrong_type"),
    ]
    reasons = {b.line: b.reason for b in dump.bad}
    assert reasons[5] == "missing field offset"
    assert reasons[6] == "field 'partition': expected an integer >= 0, got a string"
    assert reasons[7] == "field 'payload': expected a string or null, got an integer"
    assert reasons[8] == "field 'ts': expected an integer or null, got a number"
    assert reasons[12] == "field 'partition': expected an integer >= 0, got a boolean"
    [first, tenth] = dump.records
    assert first.line == 1 and first.broker == 1 and first.tstype == "create"
    assert first.record == Record("search_results", 2, 7, T0, b"k", b'{"a": 1}')
    assert tenth.line == 10 and tenth.record.arrival_ms is None and tenth.tstype is None  # no timestamp: kcat omits it


def test_topics_by_suffix() -> None:
    assert split_topic("search_results") == ("", "search_results")
    assert split_topic("t1.search_results") == ("t1.", "search_results")
    assert split_topic("t1.search_results.dlq") == ("t1.", "search_results.dlq")
    assert split_topic("x_canary_verdicts") == ("x_", "canary_verdicts")
    assert split_topic("p.canary_window_state") == ("p.", "canary_window_state")
    assert split_topic("orders") is None


def test_envelope_round_trips_bytes_that_are_not_utf8() -> None:
    raw = b'{"q": "caf\xc3\xa9"}\xff\xfe'
    line = envelope("search_results", 0, 1, T0, raw, key=None, timestamp_type=1)
    obj = json.loads(line)
    assert obj["tstype"] == "logappend" and obj["ts"] == T0 and obj["key"] is None
    [rec] = parse_lines([line.encode()]).records
    assert rec.record.value == raw
    text = envelope("search_results", 0, 1, None, "café".encode())
    assert "café" in text and "ts" not in json.loads(text)  # UTF-8 as text, like kcat; no timestamp: omitted


# -- replaying a dump ---------------------------------------------------------------------------------------


def test_dump_replay_equals_the_pipeline_and_a_replay_from_kafka(tmp_path: Path) -> None:
    records, live = _live()
    path = _write(tmp_path / "dump.jsonl", [*live, *records])  # any order: kcat dumps topic after topic
    span = load_span(path)
    assert span.section["span_source"] == {"from": "dump", "to": "dump"}
    assert (span.data.from_ms, span.data.to_ms) == (T0, T0 + 4 * W)  # the windows of the outcomes
    assert span.section["malformed_lines"] == 0 and span.section["replayed"]["search_results"] == len(
        [r for r in records if r.topic == "search_results"]
    )
    report = run_replay(span.data)
    assert report["differences"] == [], report["summary"]
    [decision] = report["decisions"]
    assert decision["issued"] and decision["rule"] == "p95_ms"
    assert decision["triggering_window"] == f"dep-a|slow|candidate@{T0 + 2 * W}"

    # The same as the Kafka-free pipeline on the same records ...
    first, until = span_bounds(span.data.from_ms, span.data.to_ms, PipelineSettings())
    pipe = run_pipeline(  # control records in the input, verified as a replay verifies them
        records,
        horizon_ms=span.data.horizon_ms,
        judge_from_ms=first,
        judge_until_ms=until,
        verify_control=VerifyControl(),
    )
    expected = sorted(
        (w.to_dict() for w in pipe.windows if first <= w.window_start_ms < until),
        key=lambda w: (w["window_start_ms"], w["window_id"]),
    )
    got = sorted(report["windows"], key=lambda w: (w["window_start_ms"], w["window_id"]))
    assert [{k: v for k, v in w.items() if k != "emitted_at" and k != "emitted_at_ms"} for w in got] == [
        {k: v for k, v in w.items() if k != "emitted_at" and k != "emitted_at_ms"} for w in expected
    ]
    assert report["decisions"] == [d.to_dict() for d in pipe.decisions]
    assert report["judgements"] == [j.to_dict() for j in pipe.judgements if first <= j.window_start_ms < until]

    # ... and as a replay of a Kafka holding these records.
    reference = run_replay(_kafka_span([*records, *live], span.data.from_ms, span.data.to_ms, span.data.horizon_ms))
    _same(report, reference)


def test_cli_input_json_never_touches_kafka(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import canary.kafka.connect
    import canary.replay.reader

    def no_kafka(*_: Any, **__: Any) -> Any:
        raise AssertionError("Kafka contacted with --input")

    monkeypatch.setattr(canary.kafka.connect, "require_kafka", no_kafka)
    monkeypatch.setattr(canary.replay.reader, "new_consumer", no_kafka)
    monkeypatch.setattr(canary.replay.reader, "read_span", no_kafka)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("CANARY_TOPIC_PREFIX", "")
    records, live = _live(prefix="prod.")
    path = _write(tmp_path / "dump.jsonl", [*records, *live])
    out = tmp_path / "out"
    code = main(["replay", "--input", str(path), "--json", "--output", str(out)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["differences"] == [] and len(report["decisions"]) == 1
    assert report["input"]["dump"]["prefix"] == "prod."  # the dump's one prefix, whatever the settings say
    assert report["input"]["offsets"]["prod.search_results"] == {"0": [0, 200], "1": [0, 400]}
    assert Path(report["report_files"]["json"]).exists() and report["report_files"]["html"].startswith(str(out))
    assert any(line.startswith(f"dump {path}: ") for line in report["summary"])

    # Human output: the summary with the dump line.
    code = main(["replay", "--input", str(path), "--output", str(out), "--deployment", "dep-a"])
    text = capsys.readouterr().out
    assert code == 0 and "live comparison: " in text and "no differences" in text and f"dump {path}" in text


def test_malformed_lines_are_reported_and_the_rest_replayed(tmp_path: Path) -> None:
    records, live = _live()
    clean = load_span(_write(tmp_path / "clean.jsonl", [*records, *live]))
    junk = [
        "this is not json",
        '{"topic": "search_results", "partition": 0, "offset": 9999}',
        '{"topic": "orders", "partition": 0, "offset": 1, "key": null, "payload": "{}"}',
        '{"topic": "canary_control", "partition": 0, "offset": 77, "ts": 1, "key": null, "payload": "{\\"x\\": 1}"}',
        '{"topic": "canary_state", "partition": 0, "offset": 1, "key": "r1", "payload": "{}"}',
    ]
    path = _write(tmp_path / "dirty.jsonl", [*records, *live], junk)
    n = len(records) + len(live)
    report = run_replay(load_span(path).data)
    span = load_span(path)
    section = span.section
    assert section["lines"] == n + len(junk) and section["malformed_lines"] == 3
    assert [(b["line"], b["kind"]) for b in section["malformed"]] == [
        (n + 1, "not_json"),
        (n + 2, "missing_field"),
        (n + 3, "unknown_topic"),
    ]
    assert section["malformed"][1]["reason"] == "missing fields key, payload"
    assert section["ignored_topics"] == {"canary_state": 1}
    # A control record that is not a command is the pipeline's poison, reported with its line.
    [bad_cmd] = section["invalid_control_commands"]
    assert bad_cmd["line"] == n + 4 and bad_cmd["offset"] == 77 and "ControlCommand" in bad_cmd["reason"]
    assert span.data.invalid_commands == 1
    assert any(f"line {n + 1}: not JSON" in note for note in span.notes)
    # The rest is replayed exactly as without the junk.
    _same(report, run_replay(clean.data))


def test_malformed_lines_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records, live = _live()
    path = _write(tmp_path / "d.jsonl", [*records, *live], ["{oops"] * 25)
    code = main(["replay", "--input", str(path), "--json", "--output", str(tmp_path / "out")])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["differences"] == []
    dump = report["input"]["dump"]
    assert dump["malformed_lines"] == 25 and len(dump["malformed"]) == 20  # first N listed, all counted
    assert dump["malformed"][0]["line"] == len(records) + len(live) + 1
    assert any("25 malformed line(s) skipped" in n for n in report["notes"])


def test_invalid_outcomes_carry_their_line(tmp_path: Path) -> None:
    records, live = _live()
    poison = Record("search_results", 0, 10_000, T0 + 3 * W + 7, None, b'{"event_id": "x"}')
    path = _write(tmp_path / "d.jsonl", [*records, poison, *live])
    from canary.cli.replay import replay_payload

    report = replay_payload(NO_KAFKA, None, None, input_file=path, output=tmp_path / "out")
    [sample] = report["input"]["invalid_samples"]
    assert sample["offset"] == 10_000 and sample["line"] == len(records) + 1
    assert report["input"]["invalid_outcomes"] == 1


def test_explicit_span_reads_the_ranges_kafka_would(tmp_path: Path) -> None:
    records, live = _live()
    path = _write(tmp_path / "d.jsonl", [*records, *live])
    from_ms, to_ms = T0 + 2 * W, T0 + 4 * W
    span = load_span(path, from_ms, to_ms)
    assert span.section["span_source"] == {"from": "option", "to": "option"}
    assert span.section["outside_read_range"]["search_results"] > 0
    reference = _kafka_span([*records, *live], from_ms, to_ms, span.data.horizon_ms)
    assert sorted(span.data.records) == sorted(reference.records)
    report = run_replay(span.data)
    _same(report, run_replay(reference))
    assert {w["window_start_ms"] for w in report["windows"]} == {T0 + 2 * W, T0 + 3 * W}
    # Only --to: --from comes from the dump.
    half = load_span(path, None, T0 + 2 * W)
    assert half.data.from_ms == T0 and half.section["span_source"] == {"from": "dump", "to": "option"}


def test_duplicates_and_gzip(tmp_path: Path) -> None:
    records, live = _live()
    plain = _write(tmp_path / "d.jsonl", [*records, *live])
    # Two overlapping dumps concatenated: every repeated record is dropped once.
    doubled = tmp_path / "double.jsonl.gz"
    with gzip.open(doubled, "wb") as fh:
        fh.write(plain.read_bytes() + plain.read_bytes())
    span = load_span(doubled)
    assert span.section["duplicates"] == len(records) + len(live) and span.section["malformed_lines"] == 0
    _same(run_replay(span.data), run_replay(load_span(plain).data))
    # A record at an offset already read, with another payload, is a malformed line (the first is used).
    other = replace(records[0], value=records[1].value)
    span = load_span(_write(tmp_path / "conflict.jsonl", [*records, other, *live]))
    [bad] = span.section["malformed"]
    assert bad["kind"] == "conflict" and bad["line"] == len(records) + 1 and "also on line 1" in bad["reason"]


def test_prefixes(tmp_path: Path) -> None:
    a, live_a = _live(prefix="a.")
    b, live_b = _live(prefix="b.")
    path = _write(tmp_path / "mixed.jsonl", [*a, *live_a, *b, *live_b])
    with pytest.raises(ConfigError, match=r"several prefixes \('a\.', 'b\.'\); set CANARY_TOPIC_PREFIX"):
        load_span(path)
    span = load_span(path, topic_prefix="b.")
    assert span.section["prefix"] == "b." and span.section["prefixes_found"] == ["a.", "b."]
    assert span.section["malformed_by_kind"] == {"other_prefix": len(a) + len(live_a)}
    assert run_replay(span.data)["differences"] == []
    # One prefix in the dump: used, whatever the settings say.
    assert load_span(_write(tmp_path / "a.jsonl", [*a, *live_a]), topic_prefix="b.").section["prefix"] == "a."


def test_dump_without_live_results_and_without_control(tmp_path: Path) -> None:
    records, _ = _live()
    outcomes = [r for r in records if r.topic == "search_results"]
    report = run_replay(load_span(_write(tmp_path / "o.jsonl", outcomes)).data)
    assert report["windows"] and report["deployments"][0]["commands"] == []
    # No start command: the default rules judge, and no rollback would be issued for an unknown deployment.
    assert [d["issued"] for d in report["decisions"]] == [False]
    assert report["live"]["windows"] == 0
    assert any("holds no live window" in n for n in report["notes"])


@pytest.mark.parametrize(
    ("make", "argv", "fragment"),
    [
        (None, ["--input", "{tmp}/missing.jsonl"], "missing.jsonl: file not found"),
        ("dir", ["--input", "{tmp}/adir"], "adir: is a directory"),
        ("empty", ["--input", "{tmp}/empty.jsonl"], "no search_results or canary_windows record"),
        ("junk", ["--input", "{tmp}/junk.jsonl"], "2 malformed: line 1: not JSON"),
        ("badgz", ["--input", "{tmp}/bad.jsonl.gz"], "bad.jsonl.gz: cannot read"),
        ("empty", ["--input", "{tmp}/empty.jsonl", "--from", "5", "--to", "2"], "--to must be after --from"),
        (None, ["--from", "1"], "--from and --to are required (unless --input FILE)"),
        (None, ["--dump", "{tmp}/d.jsonl", "--from", "1"], "--dump needs --from and --to"),
        (None, ["--dump", "{tmp}/d.jsonl", "--from", "1", "--to", "2", "--rules", "r.yaml"], "--rules not allowed"),
    ],
)
def test_bad_input_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: str | None, argv: list[str], fragment: str
) -> None:
    if make == "dir":
        (tmp_path / "adir").mkdir()
    elif make == "empty":
        (tmp_path / "empty.jsonl").write_text("")
    elif make == "junk":
        (tmp_path / "junk.jsonl").write_text("nope\n[]\n")
    elif make == "badgz":
        (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = main(["replay", *argv, "--output", str(tmp_path / "out")] if "--dump" not in argv else ["replay", *argv])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err, err


def test_empty_dump_with_a_span_is_an_empty_result(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n")
    from canary.cli.replay import replay_payload

    report = replay_payload(NO_KAFKA, T0, T0 + W, input_file=tmp_path / "empty.jsonl", output=tmp_path / "out")
    assert report["empty"] and report["windows"] == [] and report["differences"] == []
    assert report["input"]["dump"]["lines"] == 1 and report["input"]["dump"]["blank_lines"] == 1


def test_read_dump_from_stdin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import io
    import sys

    records, live = _live()
    path = _write(tmp_path / "d.jsonl", [*records, *live])

    class Stdin:
        buffer = io.BytesIO(path.read_bytes())

    monkeypatch.setattr(sys, "stdin", Stdin)
    dump = read_dump("-")
    assert dump.path == "-" and len(dump.records) == len(records) + len(live) and not dump.bad


@pytest.mark.parametrize(
    ("field", "value"),
    [("ts", 2**63), ("ts", -(2**63) - 1), ("ts", 10**30), ("partition", 2**63), ("offset", 10**30)],
)
def test_a_number_beyond_64_bits_is_a_typed_rejection_and_the_replay_goes_on(field: str, value: int) -> None:
    """Kafka's partitions, offsets and timestamps fit 64 bits; a dump saying otherwise is refused line by line
    (before, the recomputation's numpy columns raised OverflowError and ended the replay)."""
    good = {"topic": "search_results", "partition": 0, "offset": 1, "ts": T0, "key": None, "payload": None}
    lines = [json.dumps(good), json.dumps({**good, "offset": 2, field: value})]
    dump = parse_lines([line.encode() + b"\n" for line in lines], "huge.jsonl")
    assert [(b.line, b.kind) for b in dump.bad] == [(2, "wrong_type")]
    assert [r.line for r in dump.records] == [1]
