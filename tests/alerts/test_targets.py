"""Webhook targets reach public addresses only, unless the environment file allows more (issue #19).

Literal addresses are refused when the environment file loads; hostnames are resolved and every address
checked at `canary start` and at each delivery, inside the resolver the HTTP client connects through.
The receivers are real aiohttp servers on loopback addresses; the one hostile DNS server is simulated by
answering ``getaddrinfo`` for a made-up name (the only stand-in here: there is no DNS server to run)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from canary.alerts import AlertDispatcher, alert_event, check_reachable
from canary.alerts.targets import resolve_checked
from canary.config.addresses import AddressPolicy, TargetRefused, classify
from canary.config.environments import ALERT_EVENTS, AlertTarget, EnvironmentError_, load_environment
from canary.core.models import ControlCommand

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link_local"),
        ("fe80::1", "link_local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("100.64.0.1", "shared"),
        ("100.127.255.254", "shared"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("192.0.2.10", "non_public"),  # documentation
        ("198.18.0.1", "non_public"),  # benchmarking
        ("240.0.0.1", "non_public"),  # reserved
        ("255.255.255.255", "non_public"),
        ("2001:db8::1", "non_public"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "link_local"),
        ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
        ("8.8.8.8", None),
        ("172.32.0.1", None),
        ("100.128.0.1", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_every_non_public_range_is_classified(address: str, expected: str | None) -> None:
    assert classify(ipaddress.ip_address(address)) == expected


def test_a_policy_allows_exactly_its_networks_or_everything() -> None:
    strict = AddressPolicy()
    some = AddressPolicy(allow_networks=(ipaddress.ip_network("10.0.3.0/24"),))
    everything = AddressPolicy(allow_private=True)
    inside, outside = ipaddress.ip_address("10.0.3.7"), ipaddress.ip_address("10.0.4.7")
    assert strict.refusal(inside) == "private" and some.refusal(inside) is None
    assert some.refusal(outside) == "private" and everything.refusal(outside) is None
    assert strict.refusal(ipaddress.ip_address("8.8.8.8")) is None
    with pytest.raises(TargetRefused, match=r"^hooks.test resolves to 10.0.4.7: a private address"):
        some.check("hooks.test", ["8.8.8.8", "10.0.4.7"])  # one address not allowed refuses the name


async def test_names_and_odd_spellings_are_resolved_before_they_are_judged() -> None:
    for host in ("localhost", "2130706433", "0x7f.1", "127.1"):  # all of them reach 127.0.0.1
        with pytest.raises(TargetRefused) as caught:
            await resolve_checked(host, 80, AddressPolicy())
        assert caught.value.refusal == "loopback", host
    found = await resolve_checked("2130706433", 80, AddressPolicy(allow_private=True))
    assert {a for _, _, a, _ in found} == {"127.0.0.1"}
    with pytest.raises(TargetRefused, match="does not resolve") as caught:
        await resolve_checked("no-such-host.invalid", 80, AddressPolicy())
    assert caught.value.refusal == "unresolved"


# -- the environment file ---------------------------------------------------------------------------------


def _env(tmp_path: Path, text: str) -> Any:
    (tmp_path / "qa.yaml").write_text(text)
    return load_environment(tmp_path, "qa")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://169.254.169.254/latest/meta-data", "link-local address"),
        ("http://127.0.0.1:9000/hook", "loopback address"),
        ("https://[::1]/hook", "loopback address"),
        ("http://10.0.0.8/hook", "private address"),
        ("http://100.64.1.1/hook", "carrier-grade NAT"),
        ("http://0.0.0.0:80/hook", "unspecified"),
    ],
)
def test_a_literal_non_public_url_is_refused_when_the_file_loads(tmp_path: Path, url: str, words: str) -> None:
    with pytest.raises(EnvironmentError_) as caught:
        _env(tmp_path, f"alerts:\n  - url: {url}\n")
    message = str(caught.value)
    assert "qa.yaml: alerts[0].url = " in message and words in message
    assert "alerts_allow_private: true" in message and "alerts[0].allow_networks" in message
    assert "meta-data" not in message and "/hook" not in message  # the path may be a secret: host only


def test_private_targets_load_when_allowed_explicitly(tmp_path: Path) -> None:
    env = _env(tmp_path, "alerts_allow_private: true\nalerts:\n  - url: http://127.0.0.1:9000/hook\n")
    assert env.alerts_allow_private and env.alerts[0].policy.allow_private
    env = _env(
        tmp_path,
        "alerts:\n  - url: http://10.0.3.7/hook\n    allow_networks: [10.0.3.0/24, 'fd00::/8']\n"
        "  - url: https://hooks.example.com/x\n",
    )
    assert env.alerts[0].policy.allow_networks == (
        ipaddress.ip_network("10.0.3.0/24"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert env.alerts[1].policy == AddressPolicy()  # allowances are per target
    assert not env.alerts_allow_private


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "alerts:\n  - url: http://10.0.3.7/h\n    allow_networks: [10.0.3.7/24]\n",
            'alerts[0].allow_networks[0] = "10.0.3.7/24": expected a network like 10.0.3.0/24 or fd00::/64: '
            "10.0.3.7/24 has host bits set (did you mean 10.0.3.0/24?)",
        ),
        (
            "alerts:\n  - url: http://10.0.3.7/h\n    allow_networks: [10.0.4.0/24]\n",
            'alerts[0].url = "http://10.0.3.7/…": 10.0.3.7 is a private address',
        ),
        ("alerts_allow_private: 'yes'\n", 'alerts_allow_private = "yes": expected true or false, got string'),
        ("alerts:\n  - url: http://:80/h\n", 'alerts[0].url = "http://?:80/…": names no host'),
        ("alerts:\n  - url: http://example.com:99999/h\n", "invalid port"),
    ],
)
def test_allowances_are_validated_with_file_field_value_and_reason(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(EnvironmentError_) as caught:
        _env(tmp_path, text)
    assert expected in str(caught.value)


# -- delivery ---------------------------------------------------------------------------------------------


def command(command_id: str = "c-1") -> ControlCommand:
    return ControlCommand(
        command_id=command_id,
        type="rollback",
        deployment_id="dep-1",
        candidate_config=None,
        candidate_config_hash="0" * 16,
        last_good_config=None,
        weight=0.0,
        reason="SLO violation",
        evidence=None,
        issued_by="slo-agent",
        issued_at_ms=1_000,
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Receiver:
    def __init__(self) -> None:
        self.requests: list[bytes] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(await request.read())
        return web.Response(text="ok")


async def _serve(host: str, port: int) -> tuple[Receiver, web.AppRunner]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return rec, runner


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    port = free_port()
    rec, runner = await _serve("127.0.0.1", port)
    try:
        yield rec, port
    finally:
        await runner.cleanup()


async def _deliver(targets: list[AlertTarget], until: Any) -> list[dict[str, Any]]:
    audited: list[dict[str, Any]] = []

    async def audit(event: dict[str, Any]) -> bool:
        audited.append(event)
        return True

    dispatcher = AlertDispatcher(targets, {}, audit, backoff_initial_s=0.01, max_attempts=3)
    runner = asyncio.create_task(dispatcher.run())
    try:
        alert = alert_event(command(), "prod", "cand")
        assert alert is not None
        dispatcher.submit(alert)
        deadline = asyncio.get_running_loop().time() + 10
        while not until(dispatcher, audited):
            assert asyncio.get_running_loop().time() < deadline, audited
            await asyncio.sleep(0.02)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    return audited


async def test_a_loopback_target_is_refused_at_delivery_audited_and_not_retried(
    receiver: tuple[Receiver, int],
) -> None:
    rec, port = receiver
    # As a file could never produce them (literal addresses are refused at load), but a name can.
    targets = [
        AlertTarget(f"http://localhost:{port}/hook", "json", ALERT_EVENTS),
        AlertTarget(f"http://127.0.0.1:{port}/hook", "json", ALERT_EVENTS),
    ]
    audited = await _deliver(targets, lambda d, a: d.failed == 2 and len(a) == 2)
    await asyncio.sleep(0.2)  # no retry may follow
    assert rec.requests == [] and len(audited) == 2
    for event in audited:
        details = event["details"]
        assert event["event_type"] == "alert_delivery" and event["success"] is False
        assert details["refused"] == "loopback" and details["final"] is True and details["attempt"] == 1
        assert event["error_message"].startswith("refused: ") and "loopback" in event["error_message"]
        assert "/hook" not in details["url"]


async def test_an_allowed_network_is_delivered_to(receiver: tuple[Receiver, int]) -> None:
    rec, port = receiver
    loopback = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))  # localhost: either
    policy = AddressPolicy(allow_networks=loopback)
    audited = await _deliver(
        [AlertTarget(f"http://localhost:{port}/hook", "json", ALERT_EVENTS, policy=policy)],
        lambda d, a: d.delivered == 1,
    )
    assert len(rec.requests) == 1 and audited[-1]["success"] is True and audited[-1]["details"]["refused"] is None


async def test_a_redirect_is_not_followed(receiver: tuple[Receiver, int]) -> None:
    rec, port = receiver
    redirect_port = free_port()
    app = web.Application()

    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{port}/hook")

    app.router.add_post("/hook", bounce)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", redirect_port).start()
    try:
        policy = AddressPolicy(allow_networks=(ipaddress.ip_network("127.0.0.1/32"),))
        target = AlertTarget(f"http://127.0.0.1:{redirect_port}/hook", "json", ALERT_EVENTS, policy=policy)
        audited = await _deliver([target], lambda d, a: d.failed == 1)
    finally:
        await runner.cleanup()
    assert rec.requests == [] and audited[-1]["details"]["status"] == 307


async def test_dns_rebinding_cannot_redirect_a_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    """The name answers an allowed address, then a refused one (a rebinding DNS server). A client that
    checked and then resolved again to connect would reach the second; ours connects only to what it checked."""
    port = free_port("127.0.0.2")
    rec, runner = await _serve("127.0.0.2", port)  # the address the attacker wants reached
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    answers = iter(["127.0.0.1", "127.0.0.2"] * 10)
    asked: list[str] = []

    async def rebinding(host: Any, port_: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            address = next(answers)
            asked.append(address)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port_)))]
        return await real(host, port_, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", rebinding)
    try:
        policy = AddressPolicy(allow_networks=(ipaddress.ip_network("127.0.0.1/32"),))
        target = AlertTarget(f"http://rebind.test:{port}/hook", "json", ALERT_EVENTS, timeout_s=1, policy=policy)
        audited = await _deliver([target], lambda d, a: d.failed == 1)
        problems = await check_reachable([target], timeout_s=1)  # the start check: resolves once, connects there
    finally:
        await runner.cleanup()
    assert rec.requests == []
    # attempt 1: 127.0.0.1 checked and connected to (nothing listens there); attempt 2: 127.0.0.2 refused.
    assert asked[:2] == ["127.0.0.1", "127.0.0.2"]
    assert [a["details"]["refused"] for a in audited] == [None, "loopback"]
    assert audited[-1]["details"]["final"] is True
    assert len(problems) == 1 and "unreachable" in problems[0], problems


async def test_the_start_check_refuses_a_name_resolving_to_a_private_address(receiver: tuple[Receiver, int]) -> None:
    _, port = receiver
    problems = await check_reachable([AlertTarget(f"http://localhost:{port}/hook", "json", ALERT_EVENTS)])
    assert len(problems) == 1
    assert problems[0].startswith(f"alerts[0].url http://localhost:{port}/…: refused (localhost resolves to ")
    assert "loopback address" in problems[0]
    allowed = AlertTarget(f"http://localhost:{port}/hook", "json", ALERT_EVENTS, policy=AddressPolicy(True))
    assert await check_reachable([allowed]) == []


# -- `canary start` -----------------------------------------------------------------------------------------


def _start_in(tmp_path: Path, env_text: str) -> subprocess.CompletedProcess[str]:
    project = tmp_path / "project"
    shutil.copytree(ROOT / "configs", project / "configs")
    (project / "configs" / "environments" / "qa.yaml").write_text(env_text)
    env = {
        **os.environ,
        "CANARY_PROJECT_ROOT": str(project),
        # Nothing listens there: a start that got past the webhook check would fail on Kafka (exit 3).
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
    }
    return subprocess.run(
        [sys.executable, "-m", "canary.cli", "--env", "qa", "start", "candidate_high_recall"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_canary_start_refuses_a_webhook_on_a_non_public_address(tmp_path: Path) -> None:
    literal = _start_in(tmp_path / "a", "alerts:\n  - url: http://169.254.169.254/latest/meta-data\n")
    assert literal.returncode == 2, literal.stderr
    assert 'alerts[0].url = "http://169.254.169.254/…": 169.254.169.254 is a link-local address' in literal.stderr
    port = free_port()  # nothing listens there
    named = _start_in(tmp_path / "b", f"alerts:\n  - url: http://localhost:{port}/hook/secret\n")
    assert named.returncode == 2, named.stderr
    assert f"alerts[0].url http://localhost:{port}/…: refused (localhost resolves to " in named.stderr
    assert "loopback address" in named.stderr and "secret" not in named.stderr
    allowed = _start_in(tmp_path / "c", f"alerts_allow_private: true\nalerts:\n  - url: http://localhost:{port}/hook\n")
    assert allowed.returncode == 2 and "unreachable" in allowed.stderr  # allowed, checked, nothing listens
