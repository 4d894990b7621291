"""Kafka-free: the JSON log format, the deployment id on each line, the rate limit on client loggers, and
the /metrics, /healthz, /readyz server."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from canary.observability import logs
from canary.observability.metrics import RouterMetrics
from canary.observability.server import MetricsEndpoint, MetricsServer


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The service logging configuration, writing JSON into a buffer instead of stderr."""
    stream = io.StringIO()
    config = logs.logging_config("json")
    config["handlers"]["default"]["stream"] = stream
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logging.config.dictConfig(config)
    try:
        yield stream
    finally:
        logs.set_deployment_provider(None)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_line_is_one_json_object_with_the_deployment(captured: io.StringIO) -> None:
    log = logging.getLogger("canary.router")
    log.warning("before any deployment")
    logs.set_deployment_provider(lambda: "canary_42")
    log.warning("multi\nline %s", {"not": "json-able", "set": {1}})
    with logs.deployment_context("canary_7"):
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("judging failed")
    first, second, third = _lines(captured)
    assert first["deployment_id"] is None and first["level"] == "WARNING" and first["logger"] == "canary.router"
    assert first["ts"].endswith("Z")
    assert second["deployment_id"] == "canary_42" and second["message"].startswith("multi\nline")
    assert third["deployment_id"] == "canary_7" and "ValueError: boom" in third["exc"]


def test_client_reconnect_errors_are_rate_limited(captured: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    noisy = logging.getLogger("aiokafka.conn")
    for _ in range(500):  # one burst: a line, then silence
        noisy.error("Unable connect to node with id %s: %s", 1, "refused")
    logging.getLogger("canary.router").error("our own line is never limited")
    clock[0] += 5.0
    noisy.error("Unable connect to node with id %s: %s", 1, "refused")
    lines = _lines(captured)
    assert [line["logger"] for line in lines] == ["aiokafka.conn", "canary.router", "aiokafka.conn"]
    assert lines[2]["suppressed"] == 499 and "499 similar line(s) suppressed" in lines[2]["message"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_metrics_health_and_readiness_endpoints() -> None:
    metrics = RouterMetrics("router-test")
    ready = {"started": (False, "starting")}
    server = MetricsServer(MetricsEndpoint(port=_free_port()), metrics.registry, lambda: ready)
    await server.start()
    base = f"http://127.0.0.1:{server.endpoint.port}"
    try:
        metrics.requests.labels("candidate").inc(3)
        status, body = await asyncio.to_thread(_get, base + "/metrics")
        assert status == 200
        text = body.decode()
        assert 'canary_router_requests_total{arm="candidate"} 3.0' in text
        assert 'canary_router_commands_rejected_total{reason="hash_mismatch"} 0.0' in text
        assert await asyncio.to_thread(_get, base + "/healthz") == (200, b'{"status": "live"}')
        status, body = await asyncio.to_thread(_get, base + "/readyz")
        assert status == 503 and json.loads(body)["checks"]["started"] == {"ok": False, "detail": "starting"}
        ready["started"] = (True, "caught up")
        assert (await asyncio.to_thread(_get, base + "/readyz"))[0] == 200
    finally:
        await server.stop()


def test_an_invalid_endpoint_is_refused() -> None:
    from canary.errors import ConfigError

    with pytest.raises(ConfigError, match="--metrics-port 70000"):
        MetricsEndpoint(port=70000)
    assert not MetricsEndpoint().enabled
