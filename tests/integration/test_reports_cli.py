"""Reporting CLI (metrics, export, audit) against the real broker, and report.html in headless Chromium.

A deployment is written straight onto the test's topics — start, weight change and the SLO agent's
rollback on the control topic, router states on the state topic, window results on the windows topic —
then the commands run as subprocesses, exactly as an operator would run them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from canary.core.models import RouterState
from canary.kafka.topics import Topics
from canary.settings import Settings
from devtools.harness import ROOT, signed
from tests.reports.dom import parse, path_vertices, select
from tests.reports.sample import CANDIDATE_COUNTS, CANDIDATE_P95, LAST_GOOD_COUNTS, Scenario, build

pytestmark = pytest.mark.kafka


# -- running the CLI ----------------------------------------------------------------------------------------
def _argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "canary.cli", *args]


def _env(settings: Settings, project: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "CANARY_TOPIC_PREFIX": settings.topic_prefix, "CANARY_HOME": str(settings.home)}
    env["KAFKA_BOOTSTRAP_SERVERS"] = settings.effective_bootstrap
    env["CANARY_PROJECT_ROOT"] = str(project)  # reports/canary/audit.log of this test only
    env.update(extra)
    return env


async def _canary(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, _argv(*args), capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


# -- writing a deployment onto the topics -------------------------------------------------------------------
def _router_state(sc: Scenario, seq: int, at_ms: int, heartbeat: bool = False) -> RouterState:
    return RouterState(
        router_id="router-a",
        deployment_id=sc.deployment_id,
        status="running",
        active_config="last_good",
        last_good="last_good",
        candidate_config=sc.candidate,
        weight=0.1,
        answers_command_id=sc.commands[0].command_id,
        applied_at_ms=at_ms,
        seq=seq,
        heartbeat=heartbeat,
    )


async def _publish(bootstrap: str, topics: Topics, sc: Scenario) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        key = sc.deployment_id.encode()
        for cmd in sc.commands:
            await producer.send_and_wait(topics.control, json.dumps(signed(cmd, topics)).encode(), key=key)
        # the SLO agent's rollback redelivered: same command id, must count once everywhere
        await producer.send_and_wait(topics.control, json.dumps(signed(sc.rollback, topics)).encode(), key=key)
        for state in (_router_state(sc, 1, sc.t0 + 40), _router_state(sc, 2, sc.t0 + 5040, heartbeat=True)):
            await producer.send_and_wait(topics.state, json.dumps(state.to_dict()).encode(), key=b"router-a")
        for w in sc.windows:
            await producer.send_and_wait(topics.windows, json.dumps(w.to_dict()).encode(), key=key)
        await producer.send_and_wait(topics.windows, b'{"poison": true}', key=key)
    finally:
        await producer.stop()


@pytest.fixture
async def deployment(settings: Settings, topics: Topics) -> Scenario:
    sc = build(t0=int(time.time() * 1000) - 120_000)
    await _publish(settings.effective_bootstrap, topics, sc)
    return sc


# -- the commands -------------------------------------------------------------------------------------------
async def test_export_writes_the_spec_files(settings: Settings, deployment: Scenario, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = await _canary("export", "--output", str(out), "--json", env=_env(settings, tmp_path / "project"))
    assert result.returncode == 0, result.stderr
    payload = _json(result)
    assert payload["deployment_id"] == deployment.deployment_id and payload["status"] == "rolled_back"
    assert payload["audit_source"] == "topics" and payload["invalid_windows"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["audit.log", "canary_result.json", "metrics.json", "report.html"]

    res = json.loads((out / "canary_result.json").read_text())
    assert res == payload["result"]
    assert res["status"] == "rolled_back" and res["candidate_config"] == "candidate_slow"
    assert res["rollback_reason"] == "SLO violation: p95_ms failed for 2 consecutive buckets"
    assert res["total_requests"] == sum(CANDIDATE_COUNTS) + sum(LAST_GOOD_COUNTS)
    assert res["metrics_summary"]["candidate_config"]["buckets"] == len(CANDIDATE_P95)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["total_buckets"] == len(CANDIDATE_COUNTS) + len(LAST_GOOD_COUNTS) == len(metrics["buckets"])
    assert {b["config_name"] for b in metrics["buckets"]} == {"candidate_slow", "last_good"}

    audit = [json.loads(line) for line in (out / "audit.log").read_text().splitlines()]
    # The redelivered rollback copy is audited as the worker's audit agent audits it — not applied, success:
    # false (replayed): the rebuilt audit.log is line for line the live one (issue #22).
    types = ["canary_start", "router_state", "canary_set_weight", "canary_rollback", "canary_rollback"]
    assert [e["event_type"] for e in audit] == types
    assert audit[-2]["event_id"] == f"control:rollback-{deployment.deployment_id}" and audit[-2]["success"] is True
    assert audit[-1]["success"] is False and audit[-1]["details"]["verification"]["reason"] == "replayed"

    dom = parse((out / "report.html").read_text())
    (path,) = select(dom, "svg.chart-p95 path.series-candidate")
    assert len(path_vertices(path.attrs["d"])) == len(CANDIDATE_P95)
    assert select(dom, "svg.chart-p95 g.rollback-marker")

    human = await _canary("export", "--output", str(out), env=_env(settings, tmp_path / "project"))
    assert human.returncode == 0 and f"exported {deployment.deployment_id} (rolled_back)" in human.stdout


async def test_export_copies_the_workers_audit_log(settings: Settings, deployment: Scenario, tmp_path: Path) -> None:
    project = tmp_path / "project"
    # The worker of this prefix writes reports/canary/<prefix>/audit.log by default; the file of the default
    # prefix beside it is another namespace's and must not be read.
    live = Settings(project_root=project, topic_prefix=settings.topic_prefix).reports_dir / "audit.log"
    assert live.parent == project / "reports" / "canary" / settings.topic_prefix.rstrip(".")
    live.parent.mkdir(parents=True)
    other = project / "reports" / "canary" / "audit.log"
    other.write_text(json.dumps({"event_id": "control:other", "event_type": "canary_start"}) + "\n")
    line = {"event_id": "control:x", "event_type": "canary_start", "timestamp": "2024-01-01T00:00:00.000Z"}
    live.write_text(json.dumps(line) + "\n" + '{"event_id": "torn')
    out = tmp_path / "out"
    result = await _canary("export", "--output", str(out), "--json", env=_env(settings, project))
    assert result.returncode == 0, result.stderr
    assert _json(result)["audit_source"] == f"file:{live}"
    assert [json.loads(x) for x in (out / "audit.log").read_text().splitlines()] == [line]
    # Exporting into the worker's own directory leaves its live log untouched.
    before = live.read_bytes()
    in_place = await _canary("export", "--json", env=_env(settings, project))
    assert in_place.returncode == 0, in_place.stderr
    assert live.read_bytes() == before and (live.parent / "report.html").exists()


async def test_metrics_summary_of_a_config(settings: Settings, deployment: Scenario, tmp_path: Path) -> None:
    env = _env(settings, tmp_path)
    # Per deployment and arm by default: the failed buckets counted until the rollback; last_good not judged.
    per = _json(await _canary("metrics", "--config", "candidate_slow", "--json", env=env))
    assert per["scope"] == "deployment" and len(per["deployments"]) == 1
    (row,) = per["deployments"]
    assert (row["deployment_id"], row["arm"]) == (deployment.deployment_id, "candidate")
    assert row["buckets"] == row["judged_buckets"] == len(CANDIDATE_P95)
    assert row["failed_buckets"] == sum(1 for v in CANDIDATE_P95 if v > 1200) and row["buckets_after_end"] == 0
    lg = _json(await _canary("metrics", "--config", "last_good", "--json", env=env))["deployments"]
    assert [(r["arm"], r["failed_buckets"], r["judged_buckets"]) for r in lg] == [("last_good", None, 0)]
    assert lg[0]["buckets"] == len(LAST_GOOD_COUNTS) and lg[0]["buckets_after_end"] == 1  # open at the rollback
    table = await _canary("metrics", "--config", "candidate_slow", env=env)
    assert table.returncode == 0, table.stderr
    assert re.search(
        rf"{deployment.deployment_id} +candidate +{len(CANDIDATE_P95)} +3/{len(CANDIDATE_P95)} ", table.stdout
    )
    assert "--pooled" in table.stdout

    result = await _canary("metrics", "--config", "candidate_slow", "--pooled", "--json", env=env)
    assert result.returncode == 0, result.stderr
    stats = _json(result)
    assert stats["scope"] == "pooled" and stats["buckets"] == len(CANDIDATE_P95)
    assert stats["total_requests"] == sum(CANDIDATE_COUNTS)
    assert stats["avg_p95_ms"] == pytest.approx(sum(CANDIDATE_P95) / len(CANDIDATE_P95), abs=0.01)
    assert stats["total_slo_violations"] > 0 and 0.4 < stats["avg_recall_at_10"] < 0.47
    assert stats["deployments"] == [deployment.deployment_id]

    recent = _json(await _canary("metrics", "--config", "candidate_slow", "--window", "0.5", "--json", env=env))
    assert recent["deployments"] == []  # the sample's windows ended more than 30 s ago
    pooled = ("metrics", "--config", "candidate_slow", "--pooled", "--window", "0.5", "--json")
    assert _json(await _canary(*pooled, env=env))["buckets"] == 0
    assert (await _canary("metrics", "--pooled", env=env)).returncode == 2  # --pooled needs --config

    every = await _canary("metrics", env=env)
    assert every.returncode == 0 and "candidate_slow" in every.stdout and "last_good" in every.stdout

    unknown = await _canary("metrics", "--config", "no_such_config", env=env)
    assert unknown.returncode == 2
    assert "no_such_config" in unknown.stderr and "candidate_slow, last_good" in unknown.stderr


async def test_audit_of_the_last_hours(settings: Settings, deployment: Scenario, tmp_path: Path) -> None:
    env = _env(settings, tmp_path)
    # Another prefix's audit log (the default prefix's, as a worker without CANARY_TOPIC_PREFIX writes it, or
    # an older demo's): this prefix's reader must not mix it in.
    other = tmp_path / "reports" / "canary" / "audit.log"
    other.parent.mkdir(parents=True)
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    other.write_text(json.dumps({"event_id": "control:x", "event_type": "canary_start", "timestamp": now}) + "\n")
    result = await _canary("audit", "--hours", "1", "--json", env=env)
    assert result.returncode == 0, result.stderr
    payload = _json(result)
    assert payload["source"] == "topics" and payload["count"] == 5  # the redelivered rollback: success false
    assert [e["event_type"] for e in payload["events"]] == [
        "canary_start",
        "router_state",
        "canary_set_weight",
        "canary_rollback",
        "canary_rollback",
    ]
    table = await _canary("audit", "--hours", "1", env=env)
    assert table.returncode == 0
    assert "canary_rollback" in table.stdout and "SLO violation: p95_ms failed" in table.stdout
    assert "5 event(s) in the last 1 h" in table.stdout
    bad = await _canary("audit", "--hours", "0", env=env)
    assert bad.returncode == 2


async def test_export_without_any_deployment_is_exit_4(settings: Settings, topics: Topics, tmp_path: Path) -> None:
    result = await _canary("export", "--output", str(tmp_path / "out"), "--json", env=_env(settings, tmp_path))
    assert result.returncode == 4, result.stderr
    assert "no canary deployment has ever been started" in result.stderr
    assert _json(result)["error"] == "DeploymentError"
    assert not (tmp_path / "out").exists()


async def test_export_of_an_unknown_deployment_is_exit_4(
    settings: Settings, deployment: Scenario, tmp_path: Path
) -> None:
    result = await _canary("export", "--deployment", "nope", "--output", str(tmp_path), env=_env(settings, tmp_path))
    assert result.returncode == 4 and deployment.deployment_id in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_kafka_unreachable_is_exit_3(settings: Settings, tmp_path: Path) -> None:
    env = _env(settings, tmp_path, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{_free_port()}")
    results = await asyncio.gather(
        _canary("export", "--output", str(tmp_path / "out"), env=env),
        _canary("metrics", "--config", "candidate_slow", env=env),
        _canary("audit", "--hours", "1", env=env),
    )
    for r in results:
        assert r.returncode == 3, r.stderr
        assert "does not answer" in r.stderr


async def test_help_texts() -> None:
    for command in ("metrics", "export", "audit"):
        result = await _canary(command, "--help", env={**os.environ})
        assert result.returncode == 0 and "--json" in result.stdout


# -- the page in a real browser -----------------------------------------------------------------------------
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]

# Injected into a copy of the page only: measures what the browser actually laid out.
MEASURE = """<script>
const out = {};
for (const svg of document.querySelectorAll('svg.chart')) {
  const r = svg.getBoundingClientRect();
  const series = {};
  for (const p of svg.querySelectorAll('path.series')) {
    const b = p.getBBox();
    series[p.getAttribute('data-arm') || 'weight'] = {length: p.getTotalLength(), width: b.width, height: b.height};
  }
  let hits = 0;
  const dots = svg.querySelectorAll('circle.point');
  for (const c of dots) {
    const cr = c.getBoundingClientRect();
    const hit = document.elementFromPoint(cr.x + cr.width / 2, cr.y + cr.height / 2);
    if (hit === c || c.contains(hit)) hits++;
  }
  out[svg.id] = {rect: [r.x, r.y, r.width, r.height], series, dots: dots.length, hits};
}
document.body.setAttribute('data-measure', JSON.stringify(out));
</script></body>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium is not installed: run 'bash scripts/install_test_deps.sh' (CI does this first)")


def _run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def read_png(data: bytes) -> tuple[int, int, int, bytes]:
    """A minimal PNG decoder (8-bit RGB/RGBA, not interlaced) → width, height, bytes per pixel, pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
    bpp = 4 if color == 6 else 3
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    pixels = bytearray(height * stride)
    prior = bytearray(stride)
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prior, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prior[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prior[i], prior[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        pixels[row * stride : (row + 1) * stride] = line
        prior = line
    return width, height, bpp, bytes(pixels)


def _near(px: tuple[int, int, int], rgb: tuple[int, int, int], tol: int = 40) -> bool:
    return sum(abs(a - b) for a, b in zip(px, rgb, strict=True)) <= tol


def _hex(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


async def test_report_renders_in_headless_chromium(settings: Settings, deployment: Scenario, tmp_path: Path) -> None:
    from canary.reports.html import ARM_COLORS, THRESHOLD_COLOR

    out = tmp_path / "out"
    exported = await _canary("export", "--output", str(out), "--json", env=_env(settings, tmp_path / "project"))
    assert exported.returncode == 0, exported.stderr
    page = out / "report.html"
    width, height = 1200, 1400

    # 1. The DOM as the browser built it, with the geometry it laid out.
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", MEASURE))
    dumped = await asyncio.to_thread(
        _run_chromium, tmp_path, f"--window-size={width},{height}", "--dump-dom", probe.as_uri()
    )
    match = re.search(r'data-measure="([^"]*)"', dumped.stdout)
    assert match, dumped.stdout[:2000]
    measured = json.loads(unescape(match.group(1)))
    assert set(measured) == {"chart-p95", "chart-recall", "chart-errors", "chart-traffic", "verdict-strip"}
    p95 = measured["chart-p95"]
    assert p95["rect"][2] > 0.8 * (width - 100)  # the chart spans the page
    assert p95["series"]["candidate"]["length"] > 400 and p95["series"]["candidate"]["height"] > 50
    assert p95["series"]["last_good"]["length"] > 400
    assert p95["dots"] == len(CANDIDATE_P95) + len(LAST_GOOD_COUNTS)
    assert p95["hits"] == p95["dots"]  # every bucket's dot is on screen and not covered by anything
    assert measured["chart-recall"]["series"]["candidate"]["length"] > 400
    assert measured["chart-traffic"]["series"]["weight"]["length"] > 400
    dom = parse(dumped.stdout)
    (path,) = select(dom, "svg.chart-p95 path.series-candidate")
    assert len(path_vertices(path.attrs["d"])) == len(CANDIDATE_P95)

    # 2. The real page, as pixels: the chart area holds the series colours and the threshold line.
    shot = tmp_path / "report.png"
    await asyncio.to_thread(
        _run_chromium, tmp_path, f"--window-size={width},{height}", f"--screenshot={shot}", page.as_uri()
    )
    w, h, bpp, pixels = read_png(shot.read_bytes())
    assert (w, h) == (width, height)
    x0, y0, cw, ch = (int(v) for v in p95["rect"])
    assert y0 + ch <= h, "the p95 chart should be within the first screen"
    counts = {"candidate": 0, "last_good": 0, "threshold": 0}
    targets = {
        "candidate": _hex(ARM_COLORS["candidate"]),
        "last_good": _hex(ARM_COLORS["last_good"]),
        "threshold": _hex(THRESHOLD_COLOR),
    }
    colours: set[tuple[int, int, int]] = set()
    for y in range(y0, y0 + ch):
        for x in range(x0, x0 + cw):
            i = (y * w + x) * bpp
            px = (pixels[i], pixels[i + 1], pixels[i + 2])
            colours.add(px)
            for name, rgb in targets.items():
                if _near(px, rgb):
                    counts[name] += 1
    assert counts["candidate"] > 600, counts  # a ~800 px long, 2.4 px wide line plus dots
    assert counts["last_good"] > 600, counts
    assert counts["threshold"] > 200, counts  # the dashed SLO line
    assert len(colours) > 30
    (tmp_path / "measured.json").write_text(json.dumps({"measured": measured, "counts": counts}, indent=1))
