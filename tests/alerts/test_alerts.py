"""Alerts against a real local HTTP receiver (aiohttp): payloads, signatures, retries, audit of attempts."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from canary.alerts import AlertDispatcher, alert_event, check_reachable, verify
from canary.alerts.dispatch import redacted
from canary.alerts.payloads import SIGNATURE_HEADER, TIMESTAMP_HEADER
from canary.config.addresses import AddressPolicy
from canary.config.environments import ALERT_EVENTS, AlertTarget
from canary.core.models import ControlCommand

SECRET = "s3cret"
# The receivers of these tests listen on 127.0.0.1: loopback targets must be allowed explicitly.
LOCAL = AddressPolicy(allow_private=True)


def command(
    type_: str, command_id: str = "c-1", weight: float | None = None, reason: str | None = None
) -> ControlCommand:
    return ControlCommand(
        command_id=command_id,
        type=type_,  # type: ignore[arg-type]
        deployment_id="dep-1",
        candidate_config={"big": "snapshot"},
        candidate_config_hash="0" * 16,
        last_good_config=None,
        weight=weight,
        reason=reason,
        evidence=None,
        issued_by="slo-agent",
        issued_at_ms=1_000,
    )


@pytest.mark.parametrize(
    ("cmd", "kind", "text"),
    [
        (command("start", weight=0.1), "start", "[prod] canary dep-1 of cand started at 10%"),
        (command("set_weight", "rollout-dep-1-step-1", 0.25), "step", "weight → 25% (the rollout plan)"),
        (command("pause", "pause-insufficient-dep-1-5000"), "inconclusive", "paused: not enough data"),
        (command("pause", "rollout-dep-1-gate-0"), "pause", "paused by the rollout plan"),
        (
            command("rollback", reason="SLO violation: p95_ms"),
            "rollback",
            "ROLLED BACK canary dep-1 of cand (slo-agent): SLO",
        ),
        (command("promote", "rollout-dep-1-promote"), "promote", "PROMOTED cand"),
    ],
)
def test_applied_commands_become_alerts(cmd: ControlCommand, kind: str, text: str) -> None:
    alert = alert_event(cmd, "prod", "cand")
    assert alert is not None and alert.kind == kind and text in alert.text
    assert "candidate_config" not in alert.command  # snapshots stay out of alerts
    assert alert.kind in ALERT_EVENTS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Receiver:
    def __init__(self, fail_first: int = 0, status: int = 503) -> None:
        self.fail_first = fail_first
        self.status = status
        self.requests: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        if len(self.requests) <= self.fail_first:
            return web.Response(status=self.status)
        return web.Response(text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver(fail_first=2)
    app = web.Application()
    app.router.add_post("/hook/{secret}", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield rec, f"http://127.0.0.1:{port}/hook/abc"
    finally:
        await runner.cleanup()


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


async def test_a_json_alert_is_signed_retried_after_5xx_and_every_attempt_audited(
    receiver: tuple[Receiver, str],
) -> None:
    rec, url = receiver
    audited: list[dict[str, Any]] = []

    async def audit(event: dict[str, Any]) -> bool:
        audited.append(event)
        return True

    target = AlertTarget(url, "json", ALERT_EVENTS, "CANARY_ALERT_SECRET", policy=LOCAL)
    dispatcher = AlertDispatcher([target], {"CANARY_ALERT_SECRET": SECRET}, audit, backoff_initial_s=0.01)
    runner = asyncio.create_task(dispatcher.run())
    try:
        alert = alert_event(command("rollback", reason="SLO violation"), "prod", "cand")
        assert alert is not None
        dispatcher.submit(alert)
        await _until(lambda: dispatcher.delivered == 1 and len(audited) == 3)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert len(rec.requests) == 3  # 503, 503, 200
    headers, body = rec.requests[-1]
    assert verify(SECRET, int(headers[TIMESTAMP_HEADER]), body, headers[SIGNATURE_HEADER])
    assert not verify("other", int(headers[TIMESTAMP_HEADER]), body, headers[SIGNATURE_HEADER])
    assert json.loads(body)["kind"] == "rollback" and json.loads(body)["event_id"] == alert.event_id
    assert [(a["success"], a["details"]["attempt"], a["details"]["status"]) for a in audited] == [
        (False, 1, 503),
        (False, 2, 503),
        (True, 3, 200),
    ]
    assert all(a["details"]["url"] == redacted(url) and "abc" not in a["details"]["url"] for a in audited)
    assert all(a["details"]["action"] == "deliver_alert" for a in audited)  # the spec's details.action


async def test_a_slack_alert_is_plain_text_json_and_a_4xx_is_not_retried(receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    rec.fail_first, rec.status = 1, 400
    dispatcher = AlertDispatcher([AlertTarget(url, "slack", ("promote",), policy=LOCAL)], {}, backoff_initial_s=0.01)
    runner = asyncio.create_task(dispatcher.run())
    try:
        dispatcher.submit(alert_event(command("start", weight=0.1), None, "cand"))  # type: ignore[arg-type]  # not subscribed
        dispatcher.submit(alert_event(command("promote"), None, "cand"))  # type: ignore[arg-type]
        await _until(lambda: dispatcher.failed == 1)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    assert len(rec.requests) == 1
    assert json.loads(rec.requests[0][1])["text"].startswith(":white_check_mark: PROMOTED cand")


async def test_a_dead_receiver_never_blocks_submit_and_is_reported_at_start() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    dispatcher = AlertDispatcher(
        [AlertTarget(url, "json", ALERT_EVENTS, timeout_s=0.2, policy=LOCAL)],
        {},
        backoff_initial_s=0.01,
        max_attempts=2,
    )
    runner = asyncio.create_task(dispatcher.run())
    try:
        started = asyncio.get_running_loop().time()
        for i in range(50):
            dispatcher.submit(alert_event(command("rollback", f"c-{i}"), None, "cand"))  # type: ignore[arg-type]
        assert asyncio.get_running_loop().time() - started < 0.05  # submit never waits on the network
        await _until(lambda: dispatcher.failed == 50)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    problems = await check_reachable([AlertTarget(url, "json", ALERT_EVENTS, policy=LOCAL)], timeout_s=1)
    assert (
        len(problems) == 1
        and problems[0].startswith("alerts[0].url http://127.0.0.1:")
        and "unreachable" in problems[0]
    )
