"""Replay on the real broker: a recorded live canary (worker subprocess, router, slow candidate) replayed.

One canary is recorded per module (≈ 30 s): the live worker rolls it back. The tests then replay its
span — with the live rules (identical windows and decision) and with a looser rule (no rollback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from canary.cli.replay import register, replay_payload
from canary.core.models import WindowResult, iso_ms
from canary.kafka.topics import Topics, ensure_topics
from canary.settings import Settings
from devtools.harness import (
    LoadGenerator,
    WorkerProcess,
    make_backend,
    preset_ref,
    read_all,
    read_judged,
    send_command,
    start_command,
)
from router.backends.fault import Fault
from router.service import RouterService

pytestmark = pytest.mark.kafka
GRACE_MS = 1000
WINDOW_MS = 5000
FIGURES = ("response_count", "error_count", "p95_ms", "recall_at_10", "recall_samples", "slo_violations", "late_count")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Recorded:
    settings: Settings
    deployment_id: str
    from_ms: int
    to_ms: int
    worker_log: str


async def _record_rollback(worker: WorkerProcess) -> tuple[str, int, int]:
    """A slow candidate (+1500 ms) at 20 % of 50 qps until the live SLO agent rolls it back."""
    backend = make_backend({"candidate_slow": Fault(added_latency_ms=1500)})
    router = RouterService(worker.bootstrap, worker.topics, backend, preset_ref("last_good"), consume_requests=False)
    await router.start()
    try:
        t1 = now_ms()
        cmd = start_command("candidate_slow", weight=0.2)
        dep = cmd.deployment_id
        await send_command(worker.bootstrap, worker.topics, cmd)
        while router.ledger.current is None or router.ledger.current.deployment_id != dep:
            await asyncio.sleep(0.05)
        load = LoadGenerator(router, qps=50)
        load_task = asyncio.create_task(load.run(40))
        deadline = time.monotonic() + 40
        while router.ledger.deployments[dep].status != "rolled_back" and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # some traffic after the rollback (all of it on last_good)
        load_task.cancel()
        await asyncio.gather(load_task, return_exceptions=True)
        await load.drain()
        # Windows starting before T2 end by T2 + 5 s; give the live worker until then + grace + slack
        # to close them (its tick), so the windows topic holds every window of the span.
        t_end = now_ms()
        t2 = (t_end // WINDOW_MS + 1) * WINDOW_MS
        await asyncio.sleep((t2 + WINDOW_MS + GRACE_MS + 700 - now_ms()) / 1000)
        return dep, t1, t2
    finally:
        await router.stop()


@pytest.fixture(scope="module")
def recorded(
    base_settings: Settings, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Recorded]:
    topics = Topics(f"rp{uuid.uuid4().hex[:6]}.")
    ensure_topics(kafka_bootstrap, topics)
    tmp = tmp_path_factory.mktemp("replay")
    worker = WorkerProcess(
        kafka_bootstrap, topics, tmp / "audit.log", tmp / "worker-data", tmp / "worker.log", grace_ms=GRACE_MS
    )
    worker.start()
    try:
        dep, t1, t2 = asyncio.run(_record_rollback(worker))
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()
    settings = base_settings.with_overrides(bootstrap_servers=kafka_bootstrap, topic_prefix=topics.prefix)
    yield Recorded(settings, dep, t1, t2, worker.log_tail())


def _live_windows(rec: Recorded) -> list[WindowResult]:
    topics = Topics(rec.settings.topic_prefix)
    raw = asyncio.run(read_all(rec.settings.effective_bootstrap, topics.windows))
    judged = {w["window_id"]: w for w in asyncio.run(read_judged(rec.settings.effective_bootstrap, topics))}
    raw = [judged.get(w.get("window_id"), w) for w in raw]
    first = rec.from_ms - rec.from_ms % WINDOW_MS
    out = {
        w.window_id: w
        for w in map(WindowResult.from_dict, raw)
        if w.deployment_id == rec.deployment_id and first <= w.window_start_ms < rec.to_ms
    }
    return sorted(out.values(), key=lambda w: (w.window_start_ms, w.arm))


def _live_rollbacks(rec: Recorded) -> list[dict[str, Any]]:
    control = asyncio.run(read_all(rec.settings.effective_bootstrap, Topics(rec.settings.topic_prefix).control))
    return [c for c in control if c["deployment_id"] == rec.deployment_id and c["type"] == "rollback"]


def _run_cli(argv: list[str], settings: Settings, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="canary")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.handler(args, settings)
    return code, json.loads(capsys.readouterr().out)


def test_replay_reproduces_live_windows_and_rollback(
    recorded: Recorded, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = recorded
    started = time.perf_counter()
    code, report = _run_cli(
        [
            "replay",
            "--from",
            iso_ms(rec.from_ms),
            "--to",
            str(rec.to_ms),
            "--deployment",
            rec.deployment_id,
            "--output",
            str(tmp_path),
            "--json",
        ],
        rec.settings,
        capsys,
    )
    elapsed = time.perf_counter() - started
    assert code == 0
    print("\n".join(report["summary"]), f"\n(replay took {elapsed:.1f}s)")
    assert report["differences"] == [], "\n".join(report["summary"]) + "\n" + rec.worker_log

    live = _live_windows(rec)
    replayed = {w["window_id"]: w for w in report["windows"]}
    assert len(live) >= 4 and {w.arm for w in live} == {"candidate", "last_good"}
    assert set(replayed) == {w.window_id for w in live}
    for lw in live:
        rw = replayed[lw.window_id]
        assert {f: rw[f] for f in FIGURES} == {f: getattr(lw, f) for f in FIGURES}, lw.window_id
        assert rw["verdicts"] == [v.to_dict() for v in lw.verdicts], lw.window_id

    [rollback] = _live_rollbacks(rec)
    assert rollback["issued_by"] == "slo-agent"
    [decision] = report["decisions"]
    assert decision["issued"] and decision["rule"] == rollback["evidence"]["rule"] == "p95_ms"
    assert decision["triggering_window"] == rollback["evidence"]["triggering_window"]
    assert [w["window_id"] for w in decision["evidence"]["windows"]] == [
        w["window_id"] for w in rollback["evidence"]["windows"]
    ]
    assert decision["reason"] == rollback["reason"]

    files = report["report_files"]
    stored = json.loads(Path(files["json"]).read_text())
    assert stored["windows"] == report["windows"] and stored["decisions"] == report["decisions"]
    page = Path(files["html"]).read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and decision["triggering_window"] in page
    dep_page = Path(files["deployment_pages"][rec.deployment_id]).read_text()
    assert "chart-p95" in dep_page and "Replay decision: rollback at window" in dep_page


def test_backtest_with_a_looser_rule_removes_the_rollback(recorded: Recorded, tmp_path: Path) -> None:
    rec = recorded
    rules = tmp_path / "loose.yaml"
    rules.write_text("slo:\n  p95_ms: 5000\n  recall_at_10: 0.30\n  consecutive_buckets: 2\n")
    report = replay_payload(
        rec.settings, rec.from_ms, rec.to_ms, deployment_id=rec.deployment_id, rules_file=rules, output=tmp_path
    )
    print("\n".join(report["summary"]))
    assert report["differences"] == []  # the comparison with live uses the live rules
    [live_rule_decision] = report["decisions"]
    backtest = report["backtest"]
    assert backtest["decisions"] == []
    [change] = backtest["changes"]
    assert change["changed"] and change["deployment_id"] == rec.deployment_id
    assert change["backtest"] == "no rollback"
    assert live_rule_decision["triggering_window"] in change["baseline"]
    assert change["windows_with_changed_verdicts"] >= 2
    assert any("CHANGED" in line and "no rollback" in line for line in report["summary"])
    failing = [w for w in backtest["windows"] if any(v["outcome"] == "fail" for v in w["verdicts"])]
    assert failing == []


def test_span_without_traffic_is_an_empty_result(
    settings: Settings, topics: Topics, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t2 = now_ms()
    code, report = _run_cli(
        ["replay", "--from", str(t2 - 60_000), "--to", iso_ms(t2), "--output", str(tmp_path), "--json"],
        settings,
        capsys,
    )
    assert code == 0
    assert report["empty"] is True
    assert report["windows"] == [] and report["decisions"] == [] and report["differences"] == []
    assert any("no traffic" in n for n in report["notes"])
    assert Path(report["report_files"]["html"]).exists()
