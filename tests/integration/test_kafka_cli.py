"""`canary kafka …` against a broker it starts itself, checked with a client we did not write (kcat)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from canary.settings import Settings

pytestmark = pytest.mark.kafka


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _canary(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canary.cli", *args], capture_output=True, text=True, env=env, timeout=240
    )


def _our_java_pids(data_dir: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "kafka.Kafka" in cmdline and str(data_dir) in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def cli_env(base_settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env["CANARY_HOME"] = str(base_settings.home)  # share the resolved jar cache
    return env


def test_start_topics_kcat_stop(cli_env: dict[str, str], tmp_path: Path) -> None:
    port = _free_port()
    data_dir = tmp_path / "broker"
    env = {**cli_env, "CANARY_KAFKA_PORT": str(port)}
    started = _canary("kafka", "start", "--data-dir", str(data_dir), "--json", env=env)
    try:
        assert started.returncode == 0, started.stderr
        assert json.loads(started.stdout)["bootstrap"] == f"127.0.0.1:{port}"
        again = _canary("kafka", "start", "--data-dir", str(data_dir), env=env)
        assert again.returncode == 0 and "reusing running broker" in again.stderr

        status = _canary("kafka", "status", "--data-dir", str(data_dir), "--json", env=env)
        assert status.returncode == 0 and json.loads(status.stdout)["running"] is True
        # named by its port alone, the broker is found wherever its --data-dir was at start (the registry)
        by_port = _canary("kafka", "status", "--port", str(port), "--json", env=cli_env)
        assert by_port.returncode == 0 and json.loads(by_port.stdout)["running"] is True

        topics = _canary("kafka", "topics", "--json", env=env)
        assert topics.returncode == 0, topics.stderr
        assert {t["action"] for t in json.loads(topics.stdout)["topics"]} == {"created"}
        topics_again = _canary("kafka", "topics", "--json", env=env)
        assert {t["action"] for t in json.loads(topics_again.stdout)["topics"]} == {"ok"}

        kcat = shutil.which("kcat") or shutil.which("kafkacat")
        assert kcat, "kcat is installed by `make test-deps` (.ci/run); it is the independent client check"
        listing = subprocess.run([kcat, "-b", f"127.0.0.1:{port}", "-L"], capture_output=True, text=True, timeout=30)
        assert listing.returncode == 0, listing.stderr
        assert "1 brokers:" in listing.stdout
        for name in ("search_requests", "search_results", "canary_control", "canary_state", "canary_windows"):
            assert f'topic "{name}"' in listing.stdout
    finally:
        stopped = _canary("kafka", "stop", "--port", str(port), "--json", env=cli_env)
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout) == {"stopped": True}
    assert _our_java_pids(data_dir) == []
    after = _canary("kafka", "status", "--data-dir", str(data_dir), env=env)
    assert after.returncode == 3 and "not running" in after.stdout


def test_port_taken_is_a_clear_error(cli_env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = _canary("kafka", "start", "--port", str(port), "--data-dir", str(tmp_path), env=cli_env)
    assert result.returncode == 3
    assert f"port {port} on 127.0.0.1 is taken" in result.stderr


def test_missing_java_and_missing_maven_are_clear_errors(cli_env: dict[str, str], tmp_path: Path) -> None:
    python_only = tmp_path / "bin"
    python_only.mkdir()
    (python_only / "python").symlink_to(sys.executable)
    env = {**cli_env, "PATH": str(python_only)}
    no_java = _canary("kafka", "start", "--port", str(_free_port()), "--data-dir", str(tmp_path / "d"), env=env)
    assert no_java.returncode == 3
    assert "'java' is not on PATH" in no_java.stderr

    java = shutil.which("java")
    assert java
    (python_only / "java").symlink_to(java)
    env_no_mvn = {**env, "CANARY_HOME": str(tmp_path / "empty-cache")}
    no_mvn = _canary("kafka", "start", "--port", str(_free_port()), "--data-dir", str(tmp_path / "e"), env=env_no_mvn)
    assert no_mvn.returncode == 3
    assert "Maven ('mvn') is not on PATH" in no_mvn.stderr


def test_broker_dying_at_start_shows_its_log(cli_env: dict[str, str], tmp_path: Path) -> None:
    data_dir = tmp_path / "broken"
    logs = data_dir / "kraft-logs"
    logs.mkdir(parents=True)
    # A meta.properties from another node makes the broker refuse to start: a real failure, not a mock.
    (logs / "meta.properties").write_text("version=1\nnode.id=99\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\n")
    result = _canary("kafka", "start", "--port", str(_free_port()), "--data-dir", str(data_dir), env=cli_env)
    assert result.returncode == 3, result.stderr
    assert "exited during start" in result.stderr
    assert "Last lines of" in result.stderr
    assert _our_java_pids(data_dir) == []


def test_unreachable_kafka_names_the_address(cli_env: dict[str, str]) -> None:
    port = _free_port()
    result = _canary("kafka", "topics", env={**cli_env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"})
    assert result.returncode == 3
    assert f"127.0.0.1:{port}" in result.stderr and "KAFKA_BOOTSTRAP_SERVERS" in result.stderr
