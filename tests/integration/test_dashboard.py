"""``canary dashboard`` end to end: the real CLI process, the real broker and worker, headless Chromium.

A failing canary (1.5 s added latency) runs while a page loaded once watches it: the failing windows and the
rollback banner must appear without a reload, the banner within 2 s of the rollback command's append time on
the control topic. Operator actions: refused without the token (nothing reaches the control topic), a
signed command with it. The screenshot is kept under reports/test-artifacts/ (gitignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer

from canary.control import read_records
from canary.core.wire import as_json
from canary.kafka.topics import Topics, ensure_topics
from canary.security import ControlSecurity
from canary.settings import Settings, load_settings
from devtools.harness import (
    ROOT,
    LoadGenerator,
    WorkerProcess,
    make_backend,
    preset_ref,
    read_all,
    send_command,
    start_command,
)
from router.backends.fault import Fault
from router.service import RouterService

pytestmark = pytest.mark.kafka


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: run 'bash scripts/install_test_deps.sh' (CI does this first)")
    return path


ARTIFACTS = ROOT / "reports" / "test-artifacts"
BANNER_BUDGET_MS = 2000  # the bound: banner within 2 s of the rollback reaching the control topic


@dataclass
class DashboardProcess:
    proc: subprocess.Popen[bytes]
    url: str
    token: str
    log_path: Path

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class DashEnv:
    bootstrap: str
    topics: Topics
    dashboard: DashboardProcess
    audit_log: Path
    tmp: Path


def _start_dashboard(bootstrap: str, topics: Topics, tmp: Path, audit_log: Path) -> DashboardProcess:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CANARY_TOPIC_PREFIX": topics.prefix,
        "PYTHONUNBUFFERED": "1",
    }
    token_file = tmp / "dashboard.token"
    log_path = tmp / "dashboard.log"
    cmd = [sys.executable, "-m", "canary.cli", "dashboard", "--port", "0", "--json"]
    cmd += ["--token-file", str(token_file), "--audit-log", str(audit_log)]
    with log_path.open("ab") as log_fh:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log_fh, cwd=ROOT)
    assert proc.stdout is not None
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            if not line:
                break
            lines.append(line)
            if line.rstrip() == "}":
                break
        try:
            payload = json.loads("".join(lines))
        except ValueError:
            raise AssertionError(f"dashboard did not start: {''.join(lines)}\n{log_path.read_text()}") from None
        assert payload["host"] == "127.0.0.1" and payload["token_created"] is True
        assert (token_file.stat().st_mode & 0o777) == 0o600
        token = token_file.read_text().strip()
        # Printed once, to the terminal (stderr) only: never in the --json document scripts may log.
        assert token not in "".join(lines) and token in log_path.read_text()
    except BaseException:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise
    return DashboardProcess(proc, payload["url"], token, log_path)


def _stop_dashboard(dash: DashboardProcess) -> int:
    dash.proc.terminate()
    try:
        return dash.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        dash.proc.kill()
        return dash.proc.wait()
    finally:
        if dash.proc.stdout is not None:
            dash.proc.stdout.close()


@pytest.fixture(scope="module")
def dash_env(
    base_settings: Settings, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DashEnv]:
    topics = Topics(f"dash{uuid.uuid4().hex[:6]}.")
    ensure_topics(kafka_bootstrap, topics)
    tmp = tmp_path_factory.mktemp("dashboard")
    audit_log = tmp / "audit.log"
    dash = _start_dashboard(kafka_bootstrap, topics, tmp, audit_log)
    try:
        yield DashEnv(kafka_bootstrap, topics, dash, audit_log, tmp)
    finally:
        code = _stop_dashboard(dash)
        print(dash.log_tail())
        assert code == 0, dash.log_tail()


async def _state(session: aiohttp.ClientSession, env: DashEnv) -> dict[str, Any]:
    async with session.get(env.dashboard.url + "api/state") as resp:
        assert resp.status == 200
        result: dict[str, Any] = await resp.json()
        return result


async def _wait_shown(session: aiohttp.ClientSession, env: DashEnv, deployment_id: str, status: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        meta = (await _state(session, env))["meta"]
        if meta["deployment_id"] == deployment_id and meta["status"] == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the dashboard never showed {deployment_id} {status}: {meta}")


async def test_actions_need_the_operator_token_and_are_signed(dash_env: DashEnv) -> None:
    env = dash_env
    cmd = start_command("candidate_high_recall", weight=0.1)
    dep = cmd.deployment_id
    await send_command(env.bootstrap, env.topics, cmd)
    action = env.dashboard.url + "api/actions/rollback"
    async with aiohttp.ClientSession() as session:
        await _wait_shown(session, env, dep, "running")
        before = await read_all(env.bootstrap, env.topics.control)

        async with session.post(action, json={"deployment_id": dep}) as resp:
            assert resp.status == 401, await resp.text()
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        async with session.post(action, json={"deployment_id": dep}, headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 403
        # A page on another origin holding the token still may not act (and cannot read it: no cookie).
        evil = {"Authorization": f"Bearer {env.dashboard.token}", "Origin": "http://evil.example"}
        async with session.post(action, json={"deployment_id": dep}, headers=evil) as resp:
            assert resp.status == 403
        # What a cross-site HTML form can send: no header, a simple content type.
        async with session.post(action, data="deployment_id=" + dep) as resp:
            assert resp.status == 401
        await asyncio.sleep(0.5)
        assert await read_all(env.bootstrap, env.topics.control) == before, "a refused action reached the topic"

        auth = {"Authorization": f"Bearer {env.dashboard.token}"}
        async with session.post(action, json={"deployment_id": "someone_else"}, headers=auth) as resp:
            assert resp.status == 409  # only the deployment the page shows
        async with session.post(action, json={"deployment_id": dep, "reason": "dashboard test"}, headers=auth) as resp:
            assert resp.status == 200, await resp.text()
            ack = await resp.json()
        control = await read_all(env.bootstrap, env.topics.control)
        assert len(control) == len(before) + 1
        sent = control[-1]
        assert sent["command_id"] == ack["command_id"] and sent["type"] == "rollback"
        assert sent["deployment_id"] == dep and sent["reason"] == "dashboard test"
        assert sent["issued_by"].startswith("dashboard:")
        assert {"key_id", "signature", "expires_at_ms"} <= set(sent)
        verifier = ControlSecurity.operator(load_settings()).verifier(env.topics.control)
        verdicts = [verifier.check(c) for c in control]
        assert verdicts[-1].accepted and verdicts[-1].signer == "operator:tests", verdicts[-1].message
        await _wait_shown(session, env, dep, "rolled_back")
        async with session.get(env.dashboard.url + f"deployments/{dep}/report") as resp:
            assert resp.status == 200 and 'g class="end-marker rollback-marker' in await resp.text()


@contextlib.asynccontextmanager
async def _browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium refuses to sandbox as root
        browser = await pw.chromium.launch(executable_path=_chromium(), headless=True, args=args)
        try:
            yield browser
        finally:
            await browser.close()


async def _until(page: Any, expression: str, timeout_s: float = 30.0) -> None:
    """Poll ``expression`` from here. Playwright's ``wait_for_function`` evaluates a string with ``eval`` in the page
    each time it polls, which the dashboard's CSP (``script-src 'self'``) refuses — only its first check, inside the
    DevTools call, is allowed — so it failed whenever the page was not ready at once (CI, loaded)."""
    deadline = time.monotonic() + timeout_s
    while not await page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true within {timeout_s} s: {expression}"
        await asyncio.sleep(0.1)


async def _control_record(bootstrap: str, topics: Topics, command_id: str) -> tuple[dict[str, Any], int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        for raw, ts in await read_records(consumer, topics.control):
            value = as_json(raw)
            if isinstance(value, dict) and value.get("command_id") == command_id and ts is not None:
                return value, ts
    finally:
        await consumer.stop()
    raise AssertionError(f"{command_id} is not on the control topic")


def _latency_lines(windows: list[dict[str, Any]]) -> list[str]:
    """Median and max per stage, per arm: the window's emission (merge step) → judged (SLO agent, candidate
    only) → read by the dashboard → in the browser. All clocks are this machine's."""

    def stage(name: str, values: list[int]) -> str:
        if not values:
            return f"{name}: -"
        return f"{name}: median {statistics.median(values):.0f} ms, max {max(values)} ms"

    out = []
    for arm in ("last_good", "candidate"):
        ws = [w for w in windows if w["arm"] == arm]
        parts = [stage("emitted→browser", [w["browser_at_ms"] - w["emitted_at_ms"] for w in ws])]
        judged = [w for w in ws if w["judged_at_ms"]]
        if judged:
            parts.append(stage("emitted→judged", [w["judged_at_ms"] - w["emitted_at_ms"] for w in judged]))
            parts.append(stage("judged→dashboard", [w["received_at_ms"] - w["judged_at_ms"] for w in judged]))
        parts.append(stage("dashboard→browser", [w["browser_at_ms"] - w["received_at_ms"] for w in ws]))
        out.append(f"{arm} windows (n={len(ws)}): " + "; ".join(parts))
    return out


async def test_browser_sees_failing_windows_and_rollback_banner_live(dash_env: DashEnv) -> None:
    env = dash_env
    worker = WorkerProcess(
        env.bootstrap, env.topics, env.audit_log, env.tmp / "worker-data", env.tmp / "worker.log", grace_ms=1000
    )
    worker.start()
    router = RouterService(
        env.bootstrap,
        env.topics,
        make_backend({"candidate_slow": Fault(added_latency_ms=1500)}),
        preset_ref("last_good"),
        consume_requests=False,
    )
    await router.start()
    load_task: asyncio.Task[None] | None = None
    try:
        async with _browser() as browser:
            page = await browser.new_page(viewport={"width": 1440, "height": 900})
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            await page.goto(env.dashboard.url, wait_until="load")
            await _until(page, "window.canaryDashboard && window.canaryDashboard.firstEventAtMs !== null")
            timing = await page.evaluate(
                "(() => { const n = performance.getEntriesByType('navigation')[0];"
                " return {load: n.loadEventEnd, dom: n.domContentLoadedEventEnd, response: n.responseEnd,"
                " first_event: window.canaryDashboard.firstEventAtMs - window.canaryDashboard.pageStartMs}; })()"
            )
            load_id = await page.evaluate("window.canaryDashboard.loadId")
            # Read-only until the operator enters the token: no action button is usable.
            assert await page.locator("#action-buttons button:enabled").count() == 0

            cmd = start_command("candidate_slow", weight=0.2)
            dep = cmd.deployment_id
            await send_command(env.bootstrap, env.topics, cmd)
            while router.ledger.current is None or router.ledger.current.deployment_id != dep:
                await asyncio.sleep(0.05)
            load = LoadGenerator(router, qps=50)
            load_task = asyncio.create_task(load.run(50))
            banner = f'#moment .moment-rollback[data-deployment-id="{dep}"]'
            await page.wait_for_selector(banner, timeout=50_000)
            load_task.cancel()
            await asyncio.gather(load_task, return_exceptions=True)
            await load.drain()
            await page.wait_for_timeout(300)  # the frame after the banner, for the screenshot

            moments = [m for m in await page.evaluate("window.canaryDashboard.moments") if m["deployment_id"] == dep]
            assert len(moments) == 1 and moments[0]["type"] == "rollback", moments
            record, appended_ms = await _control_record(env.bootstrap, env.topics, moments[0]["command_id"])
            assert record["issued_by"] == "slo-agent"
            banner_ms = moments[0]["shown_at_ms"] - appended_ms
            painted_ms = (moments[0]["painted_at_ms"] or moments[0]["shown_at_ms"]) - appended_ms

            text = await page.inner_text(banner)
            assert "ROLLED BACK" in text and "SLO violation: p95_ms failed for 2 consecutive buckets" in text
            # The failing windows, drawn by the report's renderer: red verdict cells and ringed p95 points.
            fails = await page.locator("#charts svg.verdict-strip rect.verdict-fail").count()
            ringed = await page.locator("#charts svg.chart-p95 circle.point-fail").count()
            assert fails >= 2 and ringed >= 2, (fails, ringed)
            assert await page.locator("#charts svg.chart-p95 g.rollback-marker").count() == 1
            assert await page.locator("#charts svg.chart-errors line.threshold").count() == 1
            assert "rolled back" in (await page.inner_text("#deployment")).lower()
            # Without a reload: the same document, one navigation.
            assert await page.evaluate("window.canaryDashboard.loadId") == load_id
            assert await page.evaluate("performance.getEntriesByType('navigation').length") == 1
            assert not [c for c in console if c.startswith(("error", "pageerror"))], console

            windows = [w for w in await page.evaluate("window.canaryDashboard.windows") if w["deployment_id"] == dep]
            failed = [w for w in windows if w["failed"]]
            assert len(failed) >= 2, windows
            latency = _latency_lines(windows)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "dashboard-rollback.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"\nscreenshot: {shot}")
            print(
                f"page load {timing['load']:.0f} ms (DOMContentLoaded {timing['dom']:.0f} ms, "
                f"first event {timing['first_event']:.0f} ms)"
            )
            print("\n".join(latency))
            print(f"rollback appended → banner in DOM {banner_ms} ms, painted {painted_ms} ms")
            assert banner_ms <= BANNER_BUDGET_MS, (banner_ms, env.dashboard.log_tail())

            # The replay form, driven through the page: a backtest of the same span with a laxer p95 rule.
            await page.click("#replay-fill")
            assert await page.input_value("#replay-form input[name=deployment_id]") == dep
            await page.fill("#replay-form textarea[name=rules]", "slo: {p95_ms: 5000, consecutive_buckets: 2}")
            await page.click("#replay-form button[type=submit]")
            await page.wait_for_selector("#replay-result:not([hidden])", timeout=15_000)
            srcdoc = await page.get_attribute("#replay-result", "srcdoc") or ""
            assert "Replay" in srcdoc and dep in srcdoc, (await page.inner_text("#replay-status"))[:500]
    finally:
        if load_task is not None and not load_task.done():
            load_task.cancel()
        await router.stop()
        code = worker.stop()
        assert code == 0, worker.log_tail()
