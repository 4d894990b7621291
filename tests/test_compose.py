"""docker-compose.yml agrees with the code it runs. Kafka-free and Docker-free: the file is only parsed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from canary.cli import build_parser
from canary.settings import load_settings
from devtools.broker import KAFKA_VERSION

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
CANARY_SERVICES = ("topics", "worker", "router")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    result: dict[str, dict[str, Any]] = document["services"]
    return result


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """Compose accepts a mapping or a list of ``KEY=VALUE``; normalise to a mapping of strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _parse(command: list[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(command)
    except SystemExit as exc:  # argparse's way of rejecting argv
        pytest.fail(f"`canary {' '.join(command)}` is not a valid canary command line (exit {exc.code})")


def test_expected_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= {"kafka", *CANARY_SERVICES}


def test_kafka_image_matches_pinned_version(services: dict[str, dict[str, Any]]) -> None:
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"


def test_kafka_host_port_is_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    ports = [str(p) for p in services["kafka"].get("ports", [])]
    assert ports, "kafka should publish its EXTERNAL listener to the host"
    assert all(p.startswith("127.0.0.1:") for p in ports), ports


@pytest.mark.parametrize("name", CANARY_SERVICES)
def test_canary_services_use_the_compose_broker(services: dict[str, dict[str, Any]], name: str) -> None:
    env = _environment(services[name])
    assert "KAFKA_BOOTSTRAP_SERVERS" in env, f"{name} would try to start a local broker instead"
    # The value must be what canary's settings actually pick up, and what kafka advertises in-network.
    assert load_settings(env).bootstrap_servers == env["KAFKA_BOOTSTRAP_SERVERS"]
    advertised = _environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"].split(",")
    in_network = {entry.split("://", 1)[1] for entry in advertised}
    assert set(env["KAFKA_BOOTSTRAP_SERVERS"].split(",")) <= in_network


def test_every_non_kafka_service_sets_bootstrap(services: dict[str, dict[str, Any]]) -> None:
    missing = [
        name for name, svc in services.items() if name != "kafka" and "KAFKA_BOOTSTRAP_SERVERS" not in _environment(svc)
    ]
    assert not missing


def test_topics_service_runs_kafka_topics(services: dict[str, dict[str, Any]]) -> None:
    command = services["topics"]["command"]
    assert command[:2] == ["kafka", "topics"]
    args = _parse(command)
    assert (args.command, args.kafka_command) == ("kafka", "topics")
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["worker", "router"])
def test_service_command_is_a_real_subcommand(services: dict[str, dict[str, Any]], name: str) -> None:
    args = _parse(services[name]["command"])
    assert args.command == name
    assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_worker_audit_log_lands_in_the_mounted_reports(services: dict[str, dict[str, Any]]) -> None:
    args = _parse(services["worker"]["command"])
    targets = [str(v).split(":")[1] for v in services["worker"].get("volumes", [])]
    assert any(Path(args.audit_log).is_relative_to(t) for t in targets), (args.audit_log, targets)


def test_image_finds_the_presets() -> None:
    """Router loads presets from CANARY_PROJECT_ROOT/configs/presets; the image must provide both."""
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "CANARY_PROJECT_ROOT=/app" in dockerfile
    assert "WORKDIR /app" in dockerfile
    assert "COPY configs ./configs" in dockerfile
    assert (ROOT / "configs" / "presets" / "last_good.yaml").is_file()


def test_services_verify_and_the_worker_signs(services: dict[str, dict[str, Any]]) -> None:
    """Signed control commands: one trusted-keys volume for all; the worker key only where it is used."""
    args = _parse(services["keys"]["command"])
    assert (args.command, args.keys_command, args.role) == ("keys", "init", "worker")
    for name in ("keys", "worker", "router"):
        settings = load_settings(_environment(services[name]))
        mounts = {str(v).split(":")[1] for v in services[name].get("volumes", [])}
        assert str(settings.trusted_keys_dir) in mounts, name
        assert (str(settings.worker_key_path.parent) in mounts) == (name != "router"), name
        if name != "keys":
            assert services[name]["depends_on"]["keys"]["condition"] == "service_completed_successfully"
