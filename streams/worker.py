"""Run the streams app as a Faust worker process (``canary worker``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from faust import Worker

from canary.config.environments import AlertTarget
from canary.kafka.clients import Cluster
from canary.kafka.topics import Topics
from canary.security import ControlSecurity
from streams.app import CanaryStreams, StreamsConfig


def run_worker(
    bootstrap: Cluster,
    topics: Topics,
    audit_log: Path,
    data_dir: Path,
    grace_ms: int = 1000,
    window_ms: int = 5000,
    loglevel: str = "warning",
    instance_id: str | None = None,
    security: ControlSecurity | None = None,
    environment: str | None = None,
    alerts: tuple[AlertTarget, ...] = (),
    alert_secrets: Mapping[str, str] | None = None,
    replication_factor: int = 1,
) -> None:
    """Blocks until SIGINT/SIGTERM; Faust's Worker then stops agents, commits and closes cleanly."""
    config = StreamsConfig(
        bootstrap=bootstrap,
        topics=topics,
        audit_log=audit_log,
        data_dir=data_dir,
        grace_ms=grace_ms,
        window_ms=window_ms,
        instance_id=instance_id,
        security=security,
        environment=environment,
        alerts=alerts,
        alert_secrets=dict(alert_secrets or {}),
        replication_factor=replication_factor,
    )
    streams = CanaryStreams(config)
    worker = Worker(streams.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    logging.getLogger("canary").setLevel(logging.INFO)
    worker.execute_from_commandline()
