"""Run the streams app as a Faust worker process (``canary worker``)."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from faust import Worker

from canary.config.environments import AlertTarget
from canary.errors import CanaryError
from canary.kafka.clients import Cluster
from canary.kafka.topics import Topics
from canary.observability.logs import LogFormat, logging_config
from canary.observability.server import MetricsEndpoint
from canary.pipeline.native import DEADLINE
from canary.pipeline.settings import DEFAULTS
from canary.runtime import StopDeadline, collect_garbage_less
from canary.security import ControlSecurity
from canary.settings import NativeMode
from streams.app import CanaryStreams, StreamsConfig


class WorkerFailed(CanaryError):
    """The worker stopped because an essential part of it crashed; the process exits non-zero."""


class CanaryWorker(Worker):
    """Faust's worker, with a bounded stop: Faust's own stop waits for the broker (commits, leaving the
    group, flushing), which with the broker down took over a minute (canary.runtime)."""

    stop_deadline = StopDeadline("worker", native=DEADLINE)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Faust's terminal spinner writes cursor escapes to stdout and hooks a DEBUG handler on the root
        # logger: neither belongs in a service's logs (and the escapes break one-JSON-object-per-line).
        self.spinner = None

    def install_signal_handlers(self) -> None:
        super().install_signal_handlers()
        # Armed by the signal itself, not when Faust's loop dispatches it (canary.runtime).
        self.stop_deadline.arm_on((signal.SIGINT, signal.SIGTERM))


def run_worker(
    bootstrap: Cluster,
    topics: Topics,
    audit_log: Path,
    data_dir: Path,
    grace_ms: int = DEFAULTS.grace_ms,
    window_ms: int = DEFAULTS.window_ms,
    loglevel: str = "warning",
    instance_id: str | None = None,
    security: ControlSecurity | None = None,
    environment: str | None = None,
    alerts: tuple[AlertTarget, ...] = (),
    alert_secrets: Mapping[str, str] | None = None,
    prometheus_url: str | None = None,
    replication_factor: int = 1,
    metrics: MetricsEndpoint | None = None,
    log_format: LogFormat = "text",
    native: NativeMode = "auto",
) -> None:
    """Blocks until SIGINT/SIGTERM; Faust's Worker then stops agents, commits and closes cleanly. Raises
    :class:`WorkerFailed` if the app crashed (an essential stage died) instead of exiting 0."""
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
        prometheus_url=prometheus_url,
        replication_factor=replication_factor,
        metrics=metrics or MetricsEndpoint(),
        native=native,
    )
    streams = CanaryStreams(config)
    worker = CanaryWorker(
        streams.app,
        loglevel=loglevel,
        quiet=True,
        redirect_stdouts=False,
        # Faust (mode) would install its own colour handler on stdout; this is the router's configuration.
        logging_config=logging_config(log_format, loglevel.upper()),
    )
    collect_garbage_less()  # built: what exists now stays (canary.runtime)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        crashed: Any = streams.app.crash_reason or worker.crash_reason
        if crashed is not None:
            raise WorkerFailed(f"worker crashed: {crashed!r}") from crashed
        raise
