"""Local-broker papercuts, Kafka-free: cluster ids, finding the brokers canary started, a closed stdout."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from canary import cli
from devtools import broker as broker_module
from devtools.broker import BrokerInfo, LocalBroker, discover_brokers, new_cluster_id, registry_dir


def test_cluster_ids_are_kafka_style_and_never_look_like_an_option() -> None:
    ids = {new_cluster_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", i) for i in ids)


def test_a_draw_that_would_begin_with_a_dash_or_be_reserved_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    dash = b"\xf8" + bytes(15)
    assert base64.urlsafe_b64encode(dash).decode().startswith("-")
    draws = iter([dash, bytes(16), bytes(15) + b"\x01", b"\x01" * 16])
    monkeypatch.setattr(broker_module.secrets, "token_bytes", lambda n: next(draws))
    assert new_cluster_id() == base64.urlsafe_b64encode(b"\x01" * 16).decode().rstrip("=")


def test_storage_is_formatted_with_the_id_in_one_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(broker_module.subprocess, "run", run)
    draws = iter([b"\xf8" + bytes(15), b"\x07" * 16])
    monkeypatch.setattr(broker_module.secrets, "token_bytes", lambda n: next(draws))
    LocalBroker(tmp_path, 1, data_dir=tmp_path / "d")._format_storage("java", tmp_path / "server.properties")
    (cmd,) = seen
    ids = [a for a in cmd if a.startswith("--cluster-id=")]
    assert ids == ["--cluster-id=" + base64.urlsafe_b64encode(b"\x07" * 16).decode().rstrip("=")]
    assert "-t" not in cmd


# -- finding the brokers canary started ---------------------------------------------------------------------
class FakeBroker:
    """A process whose command line looks like our broker's (kafka.Kafka + its data dir), registered the
    way LocalBroker.start registers one: enough for discovery and stop, without a JVM."""

    def __init__(self, home: Path, port: int, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)", "kafka.Kafka", str(data_dir)],
            stdin=subprocess.DEVNULL,
        )
        self.broker = LocalBroker(home, port, data_dir=data_dir)
        info = BrokerInfo(self.proc.pid, port, port + 1, "4.4.0", str(self.broker.data_dir), "x.log", time.time())
        (self.broker.data_dir / "broker.json").write_text(json.dumps(asdict(info)))
        self.broker._register(info)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[list[FakeBroker]]:
    made: list[FakeBroker] = []
    yield made
    for f in made:
        f.close()


def _cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, home: Path, *args: str
) -> tuple[int, str]:
    monkeypatch.setenv("CANARY_HOME", str(home))
    monkeypatch.delenv("CANARY_KAFKA_PORT", raising=False)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out if "--json" in args else out.out + out.err


def test_stop_without_port_finds_the_one_broker_started_on_another_port(
    tmp_path: Path, fakes: list[FakeBroker], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    fakes.append(FakeBroker(home, 19392, tmp_path / "custom-dir"))  # `canary kafka start --port 19392 --data-dir …`
    assert [b.port for b in discover_brokers(home)] == [19392]

    code, out = _cli(capsys, monkeypatch, home, "kafka", "status", "--json")
    assert code == 3  # the fake does not answer Kafka requests; it is found all the same
    assert json.loads(out)["bootstrap"] == "127.0.0.1:19392" and json.loads(out)["pid"] == fakes[0].proc.pid

    code, out = _cli(capsys, monkeypatch, home, "kafka", "stop", "--json")
    assert code == 0 and json.loads(out) == {"stopped": True}
    assert fakes[0].proc.wait(5) is not None
    assert discover_brokers(home) == [] and not list(registry_dir(home).glob("*.json"))
    code, out = _cli(capsys, monkeypatch, home, "kafka", "stop")
    assert code == 0 and "no local broker was running" in out


def test_with_several_brokers_stop_names_them_instead_of_guessing(
    tmp_path: Path, fakes: list[FakeBroker], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    fakes.append(FakeBroker(home, 19392, home / "broker-19392"))
    fakes.append(FakeBroker(home, 19492, tmp_path / "elsewhere"))
    code, out = _cli(capsys, monkeypatch, home, "kafka", "stop")
    assert code == 2 and "several local brokers" in out and "19392" in out and "19492" in out
    assert all(f.proc.poll() is None for f in fakes)
    code, out = _cli(
        capsys, monkeypatch, home, "kafka", "stop", "--port", "19492", "--data-dir", str(tmp_path / "elsewhere")
    )
    assert code == 0 and fakes[1].proc.wait(5) is not None and fakes[0].proc.poll() is None
    assert [b.port for b in discover_brokers(home)] == [19392]


def test_stale_registrations_are_dropped(tmp_path: Path) -> None:
    home = tmp_path
    registry_dir(home).mkdir(parents=True)
    (registry_dir(home) / "1234.json").write_text(json.dumps({"port": 1234, "pid": 999999, "data_dir": "/nope"}))
    (registry_dir(home) / "bad.json").write_text("{")
    assert discover_brokers(home) == []
    assert not list(registry_dir(home).glob("*.json"))


# -- a closed stdout ------------------------------------------------------------------------------------------
def test_a_closed_pipe_ends_quietly() -> None:
    """`canary … --json | head -1`: the reader is gone before we write; no BrokenPipeError traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "canary.cli", "list", "--json"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parents[1],
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert done.stderr == ""


def test_head_of_a_json_listing_is_quiet() -> None:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        f"'{sys.executable}' -m canary.cli list --json | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert done.returncode == 0 and done.stdout == "{\n" and "Traceback" not in done.stderr


def test_listen_ports_stay_below_the_ephemeral_range() -> None:
    low, _ = broker_module._ephemeral_range()
    ports = {broker_module.listen_port() for _ in range(50)}
    assert all(20000 <= p < low for p in ports) and len(ports) > 1


@pytest.mark.kafka
def test_a_controller_port_taken_while_the_broker_starts_is_replaced(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import socket

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", broker_module.listen_port()))
    squatter.listen()
    taken = int(squatter.getsockname()[1])
    picks = iter([taken])  # the first pick is "free" when checked, taken when the JVM binds it
    real_pick = LocalBroker._pick_controller_port
    monkeypatch.setattr(
        LocalBroker, "_pick_controller_port", lambda self, avoid=None: next(picks, None) or real_pick(self)
    )
    lines: list[str] = []
    broker = LocalBroker(tmp_path / "home", broker_module.listen_port(), data_dir=tmp_path / "kafka")
    try:
        info = broker.start(log=lines.append)
        assert info.controller_port != taken
        assert any(f"controller port {taken} was taken" in line for line in lines), lines
    finally:
        broker.stop()
        squatter.close()
