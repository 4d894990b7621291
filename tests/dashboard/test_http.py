"""The dashboard's HTTP edge (issue #19): only its own Host is answered (DNS rebinding), and a bad body is
a 4xx naming what is wrong, never a 500.

The real application listens on a free loopback port (``serving``, as ``canary dashboard`` runs it). Its
Kafka is an address where nothing listens: the feed keeps retrying in the background and the page serves
its (empty) stale view, which is all these requests need."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from canary.dashboard.app import MAX_BODY_BYTES, Dashboard, serving
from canary.dashboard.auth import load_or_create_token
from canary.dashboard.hosts import AllowedHosts, split_host
from canary.errors import ConfigError
from canary.kafka.topics import Topics
from canary.security import ControlSecurity
from canary.settings import load_settings


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("LocalHost:8080", ("localhost", 8080)),
        ("localhost.:8080", ("localhost", 8080)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::1]", ("::1", None)),
        ("example.com", ("example.com", None)),
        ("::1", None),  # IPv6 without brackets
        ("[nothost]:80", None),
        ("a:b", None),
        ("host:0", None),
        ("host:70000", None),
        ("host:", None),
        ("evil.example/x", None),
        ("user@127.0.0.1:8080", None),
        ("", None),
        (" ", None),
    ],
)
def test_host_headers_are_parsed_strictly(header: str, expected: tuple[str, int | None] | None) -> None:
    assert split_host(header) == expected


def test_which_hosts_each_bind_answers() -> None:
    loop4 = AllowedHosts.of("127.0.0.1", 8080)
    assert loop4.allows("127.0.0.1:8080") and loop4.allows("localhost:8080")
    assert not loop4.allows("127.0.0.1:8081") and not loop4.allows("127.0.0.1")  # the port counts (80 implied)
    assert not loop4.allows("evil.example:8080") and not loop4.allows("127.0.0.2:8080") and not loop4.allows(None)
    loop6 = AllowedHosts.of("::1", 8080)
    assert loop6.allows("[::1]:8080") and loop6.allows("localhost:8080") and not loop6.allows("127.0.0.1:8080")
    named = AllowedHosts.of("localhost", 80)
    assert named.allows("localhost") and named.allows("127.0.0.1:80") and named.allows("[::1]")
    lan = AllowedHosts.of("10.0.0.5", 8080, ["canary.example.com", "proxy.internal:9443"])
    assert lan.allows("10.0.0.5:8080") and not lan.allows("localhost:8080")
    assert lan.allows("canary.example.com") and lan.allows("canary.example.com:443")  # any port without one
    assert lan.allows("proxy.internal:9443") and not lan.allows("proxy.internal:8080")
    wildcard = AllowedHosts.of("0.0.0.0", 8080)
    assert wildcard.allows("192.168.1.20:8080") and wildcard.allows("[fe80::1]:8080")  # a number cannot be rebound
    assert wildcard.allows(f"{socket.gethostname()}:8080") and not wildcard.allows("evil.example:8080")
    with pytest.raises(ConfigError, match=r"--allowed-host 'http://x': expected a host name"):
        AllowedHosts.of("127.0.0.1", 8080, ["http://x"])


@pytest.fixture
async def dashboard(tmp_path: Path) -> AsyncIterator[str]:
    settings = load_settings()
    token = load_or_create_token(tmp_path / "token")
    dash = Dashboard(
        f"127.0.0.1:{_closed_port()}",
        Topics("httptest."),
        ControlSecurity.operator(settings),
        token,
        None,
        ack_timeout=0.5,
    )
    async with serving(dash, "127.0.0.1", 0):
        assert dash.hosts is not None
        yield f"http://127.0.0.1:{dash.hosts.port}/|{token.value}"


def _split(value: str) -> tuple[str, str]:
    url, token = value.split("|")
    return url, token


async def test_a_foreign_host_gets_421_and_nothing_else(dashboard: str) -> None:
    url, token = _split(dashboard)
    port = url.rsplit(":", 1)[1].strip("/")
    async with aiohttp.ClientSession() as session:
        for path in ("", "api/state", "static/dashboard.js", "deployments/x/report", "events"):
            async with session.get(url + path, headers={"Host": "evil.example"}) as resp:
                assert resp.status == 421, path
                body = await resp.text()
                assert "evil.example" in body and "DNS rebinding" in body and "<html" not in body.lower()
        async with session.get(url + "api/state", headers={"Host": f"rebind.attacker.test:{port}"}) as resp:
            assert resp.status == 421
        auth = {"Authorization": f"Bearer {token}", "Host": "evil.example"}
        async with session.post(url + "api/actions/pause", json={"deployment_id": "d"}, headers=auth) as resp:
            assert resp.status == 421
        async with session.get(url + "api/state") as resp:  # its own address
            assert resp.status == 200 and "meta" in await resp.json()
        async with session.get(url + "api/state", headers={"Host": f"localhost:{port}"}) as resp:
            assert resp.status == 200


BAD_BODIES: list[tuple[str, bytes, int, str]] = [
    ("not JSON", b"{deployment_id: x", 400, "not_json"),
    ("not UTF-8", b'{"deployment_id": "\xff\xfe"}', 400, "not_utf8"),
    ("nested too deep", b"[" * 3000 + b"]" * 3000, 400, "too_deep"),
    ("deep inside an object", b'{"deployment_id": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "too_deep"),
    ("a list", b"[1]", 400, "expected a JSON object, got an array"),
    ("a number", b"1e999", 400, "expected a JSON object, got a number"),
    ("null", b"null", 400, "expected a JSON object, got null"),
    ("too large", b'{"reason": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}', 413, f"larger than {MAX_BODY_BYTES}"),
]


@pytest.mark.parametrize(("what", "body", "status", "words"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_a_bad_body_is_a_4xx_with_the_reason(
    dashboard: str, what: str, body: bytes, status: int, words: str
) -> None:
    url, token = _split(dashboard)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        for path in ("api/actions/pause", "api/replay"):
            async with session.post(url + path, data=body, headers=headers) as resp:
                assert resp.status == status, (path, await resp.text())
                assert words in (await resp.json())["error"], path


@pytest.mark.parametrize(
    ("path", "payload", "words"),
    [
        ("api/actions/weight", {"deployment_id": "d", "weight": "0.5"}, "weight: '0.5' must be a number"),
        ("api/actions/weight", {"deployment_id": "d", "weight": [0.5]}, "must be a number in (0, 1]"),
        ("api/actions/pause", {"deployment_id": {"a": 1}}, "deployment_id: required"),
        ("api/actions/pause", {"deployment_id": "d", "reason": ["x"]}, "reason: expected a string"),
        ("api/replay", {"from": [1], "to": 2}, "from: required"),
        ("api/replay", {"from": 1, "to": 2, "rules": {"a": 1}}, "rules: expected YAML text"),
        ("api/replay", {"from": 1, "to": 2, "rules": "[" * 3000 + "]" * 3000}, "rules: invalid YAML (line 1, column 33): nested deeper than 32 levels"),
        ("api/replay", {"from": 1, "to": 2, "rules": "a: [1"}, "rules: invalid YAML"),
        ("api/replay", {"from": 1, "to": 2, "deployment_id": 7}, "deployment_id: expected a string"),
    ],
)
async def test_wrong_types_are_a_400_naming_the_field(dashboard: str, path: str, payload: Any, words: str) -> None:
    url, token = _split(dashboard)
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {token}"}
        async with session.post(
            url + path, data=json.dumps(payload), headers={**headers, "Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 400, await resp.text()
            assert words in (await resp.json())["error"]
