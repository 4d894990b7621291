"""A service without a cluster says how to start one instead of starting a JVM itself (issue #22)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("service", [["router", "--insecure"], ["worker", "--insecure"]])
def test_a_service_without_kafka_exits_3_and_names_the_command(service: list[str], tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CANARY_"))}
    env.update({"CANARY_KAFKA_PORT": str(port), "XDG_CACHE_HOME": str(tmp_path)})
    done = subprocess.run(
        [sys.executable, "-m", "canary.cli", *service], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3, done.stderr
    assert f"no Kafka answers at 127.0.0.1:{port}" in done.stderr
    assert f"canary kafka start --port {port}" in done.stderr
    assert not (tmp_path / "canary" / "kafka").exists()  # nothing was provisioned for a broker
    with socket.socket() as sock:  # and nothing listens there now
        assert sock.connect_ex(("127.0.0.1", port)) != 0
