"""The spec's Python API: ``get_config_manager()``, ``get_canary_executor()``, ``get_slo_monitor()``,
``get_metrics_collector()``.

A synchronous facade over the same machinery as the CLI: commands go through the control topic and wait
for router acknowledgements; ``execute_search`` runs an in-process router (sticky split, real search
backend, one outcome per request on ``search_results``) on a background event loop. Kafka is found by the
one rule: ``KAFKA_BOOTSTRAP_SERVERS``, else the local broker.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from canary.config import Preset, PresetEntry, PresetStore
from canary.core.deployment import ConfigRef
from canary.core.models import WindowResult
from canary.core.slo import SLOMonitor, SLORule, SLOViolation, default_rules
from canary.kafka.clients import KafkaConnection
from canary.kafka.connect import require_kafka
from canary.kafka.topics import Topics
from canary.settings import Settings, load_settings

if TYPE_CHECKING:
    from canary.ops.view import ControlView

T = TypeVar("T")

__all__ = [
    "CanaryExecutor",
    "ConfigManager",
    "SLOMonitor",
    "SLORule",
    "SLOViolation",
    "get_canary_executor",
    "get_config_manager",
    "get_metrics_collector",
    "get_slo_monitor",
]


class _Loop:
    """One background event loop per process for the in-process router."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="canary-api-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


class ConfigManager:
    """Versioned presets and the durable ``last_good`` / ``active`` pointers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = PresetStore(settings.presets_dir)

    def list_presets(self) -> list[PresetEntry]:
        return self.store.list()

    def get_preset(self, name: str) -> Preset:
        return self.store.get(name)

    def pointers(self) -> dict[str, Any]:
        """``active`` and ``last_good`` as every router sees them (from the control topic)."""
        from canary.cli.ops import status_payload

        status = status_payload(self.settings)
        return {"active": status["active_config"], "last_good": status["last_good"], "source": status["source"]}


class CanaryExecutor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self._loop: _Loop | None = None
        self._router: Any = None
        self._lock = threading.Lock()
        from canary.security import ControlSecurity

        # Commands are signed with the operator key; the in-process router verifies like any other.
        self.security = ControlSecurity.operator(settings)

    def _bootstrap(self) -> KafkaConnection:
        return require_kafka(self.settings)

    def start_canary(self, config_name: str, weight: float = 0.10, timeout: float = 10.0) -> dict[str, Any]:
        from canary.ops.commands import start_canary

        store = PresetStore(self.settings.presets_dir)
        candidate = store.get(config_name)
        self._ensure_router()
        ack = asyncio.run(
            start_canary(
                self._bootstrap(),
                self.topics,
                candidate,
                store.get("last_good"),
                weight,
                timeout,
                security=self.security,
            )
        )
        ok = not ack.compensated and not ack.rejected and set(ack.waited_for) <= set(ack.acked_by)
        return {**ack.to_dict(), "ok": ok}

    def stop_canary(self, promote: bool = False, timeout: float = 10.0) -> dict[str, Any]:
        from canary.ops.commands import stop_canary

        ack = asyncio.run(stop_canary(self._bootstrap(), self.topics, promote, timeout, security=self.security))
        return {**ack.to_dict(), "ok": not ack.rejected and set(ack.waited_for) <= set(ack.acked_by)}

    def get_current_status(self) -> dict[str, Any]:
        from canary.cli.ops import status_payload

        return status_payload(self.settings)

    def execute_search(
        self,
        query: str,
        collection_name: str,
        user_id: str | None = None,
        relevant_ids: list[str] | None = None,
    ) -> tuple[list[str], dict[str, Any]]:
        """Route (sticky split), search, publish the outcome; returns (ranked ids, config used)."""
        router = self._ensure_router()
        assert self._loop is not None
        results: tuple[list[str], dict[str, Any]] = self._loop.run(
            router.execute_search(query, collection_name, user_id, relevant_ids)
        )
        return results

    def _ensure_router(self) -> Any:
        with self._lock:
            if self._router is not None:
                return self._router
            from canary.cli.commands import default_backend
            from router.service import RouterService

            preset = PresetStore(self.settings.presets_dir).get("last_good")
            last_good = ConfigRef.from_snapshot(preset.to_dict(), preset.content_hash)
            self._loop = _Loop()
            router = RouterService(
                self._bootstrap(),
                self.topics,
                default_backend(),
                last_good,
                consume_requests=False,
                verifier=self.security.verifier(self.topics.control),
                recall_sample_rate=self.settings.recall_sample_rates,
            )
            self._loop.run(router.start())
            self._router = router
            atexit.register(self.close)
            return router

    def close(self) -> None:
        with self._lock:
            if self._router is not None and self._loop is not None:
                self._loop.run(self._router.stop())
                self._loop.close()
            self._router = None
            self._loop = None


class KafkaSLOMonitor(SLOMonitor):
    """The spec's SLO monitor; ``get_violations`` first evaluates windows published since the last call."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(default_rules())
        self.settings = settings
        self._seen: set[str] = set()

    def refresh(self) -> int:

        view = asyncio.run(_read_view(self.settings))
        fresh = [w for w in view.windows if w.arm == "candidate" and w.window_id not in self._seen]
        for window in fresh:
            self._seen.add(window.window_id)
            self.evaluate(window)
        return len(fresh)

    def get_violations(self, config_name: str | None = None, deployment_id: str | None = None) -> list[SLOViolation]:
        self.refresh()
        return super().get_violations(config_name=config_name, deployment_id=deployment_id)


async def _read_view(settings: Settings) -> ControlView:
    """The control view with its windows, verified with these settings' keys and scope."""
    from canary.ops.view import read_view_async
    from canary.security import ControlSecurity

    topics = Topics(settings.topic_prefix)
    verifier = ControlSecurity.operator(settings).verifier(topics.control)
    return await read_view_async(require_kafka(settings), topics, True, verifier)


def _windows(settings: Settings) -> list[WindowResult]:
    view = asyncio.run(_read_view(settings))
    return view.windows


_singletons: dict[str, Any] = {}


def _settings() -> Settings:
    return load_settings()


def get_config_manager() -> ConfigManager:
    return _singletons.setdefault("config", ConfigManager(_settings()))  # type: ignore[no-any-return]


def get_canary_executor() -> CanaryExecutor:
    return _singletons.setdefault("executor", CanaryExecutor(_settings()))  # type: ignore[no-any-return]


def get_slo_monitor() -> KafkaSLOMonitor:
    return _singletons.setdefault("slo", KafkaSLOMonitor(_settings()))  # type: ignore[no-any-return]


def get_metrics_collector() -> Any:
    """Summary statistics over the published windows (``get_summary_stats(config_name, window_minutes)``)."""
    from canary.reports.metrics import MetricsCollector

    return MetricsCollector(_windows(_settings()))
