"""Offline replay on the real broker: a live rolled-back canary dumped (``canary replay --dump`` and kcat),
then replayed from the files with ``canary replay --input`` — no broker — with the live result.

The recorded scenario is the one of ``test_replay.py`` (worker subprocess, in-process router, a candidate
slowed by 1500 ms at 20 % of 50 qps until the live SLO agent rolls it back; ≈ 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from canary.cli.replay import register, replay_payload
from canary.kafka.topics import Topics
from canary.settings import Settings
from devtools.harness import WorkerProcess, read_all
from tests.integration.test_replay import GRACE_MS, _record_rollback

pytestmark = pytest.mark.kafka


def _cli(argv: list[str], settings: Settings, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    parser = argparse.ArgumentParser(prog="canary")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.handler(args, settings)
    return code, json.loads(capsys.readouterr().out)


def _kcat_dump(bootstrap: str, topics: Topics, path: Path) -> None:
    kcat = shutil.which("kcat")
    assert kcat is not None
    with path.open("wb") as out:
        for topic in (topics.search_results, topics.control, topics.windows, topics.verdicts):
            proc = subprocess.run(
                [kcat, "-b", bootstrap, "-C", "-J", "-e", "-q", "-t", topic],
                stdout=out,
                stderr=subprocess.PIPE,
                timeout=120,
                check=False,
            )
            assert proc.returncode == 0, proc.stderr.decode(errors="replace")


def _offline(settings: Settings) -> Settings:
    # --input must not contact Kafka: nothing listens on this address.
    return settings.with_overrides(bootstrap_servers="127.0.0.1:1")


def _assert_same_decision(report: dict[str, Any], rollback: dict[str, Any], dep: str, label: str) -> None:
    summary = "\n".join(report["summary"])
    assert report["differences"] == [], f"{label}:\n{summary}"
    assert report["input"]["dump"]["malformed_lines"] == 0, f"{label}:\n{summary}"
    [decision] = [d for d in report["decisions"] if d["deployment_id"] == dep]
    assert decision["issued"], label
    assert decision["rule"] == rollback["evidence"]["rule"] == "p95_ms", label
    assert decision["triggering_window"] == rollback["evidence"]["triggering_window"], label
    assert decision["reason"] == rollback["reason"], label
    assert [w["window_id"] for w in decision["evidence"]["windows"]] == [
        w["window_id"] for w in rollback["evidence"]["windows"]
    ], label
    [live] = report["live"]["decisions"]
    assert live["triggering_window"] == decision["triggering_window"], label


FIGURES = ("window_id", "response_count", "error_count", "p95_ms", "recall_at_10", "slo_violations", "late_count")


def _figures(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    return sorted((*(w[f] for f in FIGURES), json.dumps(w["verdicts"], sort_keys=True)) for w in report["windows"])


def test_dumped_live_rollback_replays_offline_like_live(
    settings: Settings, topics: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bootstrap = settings.effective_bootstrap
    worker = WorkerProcess(
        bootstrap, topics, tmp_path / "audit.log", tmp_path / "worker-data", tmp_path / "worker.log", grace_ms=GRACE_MS
    )
    worker.start()
    try:
        dep, t1, t2 = asyncio.run(_record_rollback(worker))
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()
    [rollback] = [
        c
        for c in asyncio.run(read_all(bootstrap, topics.control))
        if c["deployment_id"] == dep and c["type"] == "rollback"
    ]
    assert rollback["issued_by"] == "slo-agent"

    # The reference: a replay of the span from Kafka.
    from_kafka = replay_payload(settings, t1, t2, output=tmp_path / "kafka")
    assert from_kafka["differences"] == [], "\n".join(from_kafka["summary"]) + "\n" + worker.log_tail()

    # 1. canary replay --dump, then --input (span from the dump, and the same span given explicitly).
    dump = tmp_path / "canary-dump.jsonl"
    code, written = _cli(
        ["replay", "--dump", str(dump), "--from", str(t1), "--to", str(t2), "--json"], settings, capsys
    )
    assert code == 0 and Path(written["file"]) == dump and dump.exists()
    assert written["records"][topics.search_results] > 0 and written["records"][topics.verdicts] > 0
    assert all(
        set(json.loads(line)) >= {"topic", "partition", "offset", "ts", "key", "payload"}
        for line in dump.read_text().splitlines()
    )
    offline = _offline(settings)
    for argv, label in (([], "--dump file, span from the dump"), (["--from", str(t1), "--to", str(t2)], "--dump file")):
        code, report = _cli(
            ["replay", "--input", str(dump), *argv, "--output", str(tmp_path / "from-dump"), "--json"], offline, capsys
        )
        assert code == 0
        _assert_same_decision(report, rollback, dep, label)
        if argv:
            assert report["span"] == from_kafka["span"], label
        else:  # the span's windows (its first slot may have had no traffic yet, then it starts one later)
            assert report["span"]["first_window_start_ms"] >= from_kafka["span"]["first_window_start_ms"], label
            assert report["span"]["to_ms"] == from_kafka["span"]["to_ms"], label
        assert _figures(report) == _figures(from_kafka), label
        assert report["judgements"] == from_kafka["judgements"], label
        assert report["decisions"] == from_kafka["decisions"], label

    # 2. The same topics dumped with kcat (whole topics, concatenated), replayed as they are.
    if shutil.which("kcat") is None:
        pytest.skip("kcat is not installed (scripts/install_test_deps.sh installs it); the --dump part passed")
    kdump = tmp_path / "kcat-dump.jsonl"
    _kcat_dump(bootstrap, topics, kdump)
    code, report = _cli(
        ["replay", "--input", str(kdump), "--output", str(tmp_path / "from-kcat"), "--json"], offline, capsys
    )
    assert code == 0
    _assert_same_decision(report, rollback, dep, "kcat dump")
    assert report["input"]["dump"]["prefix"] == topics.prefix
    live_windows = {w["window_id"] for w in from_kafka["windows"]}
    assert live_windows <= {w["window_id"] for w in report["windows"]}  # the whole canary is in the dump
    code, report = _cli(
        [
            "replay",
            "--input",
            str(kdump),
            "--from",
            str(t1),
            "--to",
            str(t2),
            "--output",
            str(tmp_path / "k2"),
            "--json",
        ],
        offline,
        capsys,
    )
    assert code == 0
    _assert_same_decision(report, rollback, dep, "kcat dump, span given")
    assert _figures(report) == _figures(from_kafka)
    assert report["decisions"] == from_kafka["decisions"]


def test_dump_of_a_quiet_span(
    settings: Settings, topics: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dump = tmp_path / "quiet.jsonl"
    code, written = _cli(["replay", "--dump", str(dump), "--from", "0", "--to", "60000", "--json"], settings, capsys)
    assert code == 0 and written["lines"] == 0 and dump.read_text() == ""
    offline = _offline(settings)
    code, report = _cli(
        ["replay", "--input", str(dump), "--from", "0", "--to", "60000", "--output", str(tmp_path), "--json"],
        offline,
        capsys,
    )
    assert code == 0 and report["empty"] and report["windows"] == [] and report["differences"] == []
