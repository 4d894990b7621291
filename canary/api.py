"""The spec's Python API: ``get_config_manager()``, ``get_canary_executor()``, ``get_slo_monitor()``,
``get_metrics_collector()`` — and ``metrics_collector``, the name the spec's monitoring example uses.

A synchronous facade over the same machinery as the CLI: commands go through the control topic and wait
for router acknowledgements; ``execute_search`` runs an in-process router (sticky split, real search
backend, one outcome per request on ``search_results``) on a background event loop. Kafka is found by the
one rule: ``KAFKA_BOOTSTRAP_SERVERS``, else the local broker.

It refuses what the CLI refuses, with the same exception classes (:mod:`canary.errors`; the CLI maps
them to its exit codes): a second start while a canary runs unless ``parallel=True``, ``stop_canary()`` while
several run (say which with ``deployment_id=``), an unknown preset, collection or config.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from canary.config import Preset, PresetEntry, PresetStore
from canary.core.deployment import ConfigRef
from canary.core.models import WindowResult
from canary.core.monitor import SLOMonitor, SLOViolation
from canary.core.policy import SLORule, default_rules
from canary.errors import ConfigError
from canary.kafka.clients import KafkaConnection
from canary.kafka.connect import require_kafka
from canary.kafka.topics import Topics
from canary.settings import Settings, load_settings

if TYPE_CHECKING:
    from canary.ops.view import ControlView
    from canary.reports.metrics import MetricsCollector

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
    "metrics_collector",
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
        from canary.ops.status import status_payload

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

    def start_canary(
        self,
        config_name: str,
        weight: float | None = None,
        timeout: float = 10.0,
        *,
        parallel: bool = False,
        mirror: float | None = None,
    ) -> dict[str, Any]:
        """Start a canary of preset ``config_name`` (``weight``: the candidate's share, default 0.10 or the
        environment's; a preset with a rollout plan starts at its first step), as ``canary start`` does.
        ``mirror``: start in shadow instead — no user served by the candidate, this share of last_good's
        requests mirrored to it (``canary start --shadow --mirror``).

        Raises DeploymentError while another canary runs, unless ``parallel=True`` asks for several at once
        (never the same preset twice); ConfigError for an unknown or invalid preset or weight. Returns the
        acknowledgement with ``ok``: False when a router did not acknowledge in time (the start was then
        withdrawn with an abort) or the routers rejected it (``rejected`` says why)."""
        from canary.ops.commands import prepare_start, start_prepared

        request = asyncio.run(prepare_start(self.settings, config_name, weight, via="api", mirror=mirror))
        self._ensure_router()
        ack = asyncio.run(
            start_prepared(
                self.settings,
                self._bootstrap(),
                request,
                timeout,
                security=self.security,
                parallel=parallel,
                via="api",
            )
        )
        ok = not ack.compensated and not ack.rejected and set(ack.waited_for) <= set(ack.acked_by)
        return {**ack.to_dict(), "ok": ok}

    def stop_canary(
        self, deployment_id: str | None = None, *, promote: bool = False, timeout: float = 10.0
    ) -> dict[str, Any]:
        """End canary ``deployment_id`` — default: the one running — promoting it (``promote=True``: the
        candidate becomes last_good) or rolling it back. Raises DeploymentError when none runs, when several
        run and ``deployment_id`` does not say which, or when ``deployment_id`` is not running."""
        from canary.ops.commands import stop_canary

        if deployment_id is not None and not isinstance(deployment_id, str):
            raise ConfigError(
                f"stop_canary: deployment_id must be a deployment id string or None, got {deployment_id!r} "
                "(promote is a keyword argument: stop_canary(promote=True))"
            )
        ack = asyncio.run(
            stop_canary(
                self._bootstrap(),
                self.topics,
                promote,
                timeout,
                security=self.security,
                deployment_id=deployment_id,
                via="api",
            )
        )
        return {**ack.to_dict(), "ok": not ack.rejected and set(ack.waited_for) <= set(ack.acked_by)}

    def get_current_status(self, deployment_id: str | None = None) -> dict[str, Any]:
        """What ``canary status --json`` shows: deployment ``deployment_id`` (default: the most recently
        started running one, else the latest), the pointers, the split and every running candidate under
        ``deployments``. DeploymentError for an id that never started."""
        from canary.ops.status import status_payload

        return status_payload(self.settings, deployment_id=deployment_id)

    def execute_search(
        self,
        query: str,
        collection_name: str,
        user_id: str | None = None,
        relevant_ids: list[str] | None = None,
        attributes: dict[str, str] | None = None,
    ) -> tuple[list[str], dict[str, Any]]:
        """Route (sticky split, or a ring of the candidate's: ``attributes`` such as ``{"tenant": "acme"}``),
        search, publish the outcome; returns (ranked ids, config used).

        ConfigError, before anything is searched or published, when ``collection_name`` is not a collection
        of the backend serving the request's config (a backend that cannot list its collections, e.g. an
        HTTP service, answers for its own)."""
        router = self._ensure_router()
        assert self._loop is not None
        results: tuple[list[str], dict[str, Any]] = self._loop.run(
            router.execute_search(query, collection_name, user_id, relevant_ids, attributes=attributes)
        )
        return results

    def _ensure_router(self) -> Any:
        with self._lock:
            if self._router is not None:
                return self._router
            from router.backends.hybrid import HybridBackend, bundled_corpus
            from router.service import RouterService

            preset = PresetStore(self.settings.presets_dir).get("last_good")
            last_good = ConfigRef.from_snapshot(preset.to_dict(), preset.content_hash)
            self._loop = _Loop()
            router = RouterService(
                self._bootstrap(),
                self.topics,
                HybridBackend(bundled_corpus(self.settings.corpus), rerank=self.settings.rerank),
                last_good,
                consume_requests=False,
                verifier=self.security.verifier(self.topics.control),
                recall_sample_rate=self.settings.recall_sample_rates,
                diff_sample_rate=self.settings.diff_sample_rate,
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
    """The spec's SLO monitor; ``get_violations`` first evaluates windows published since the last call.
    ``rules``: rule objects or a preset's ``slo`` section (read by the one slo grammar); the defaults if None."""

    def __init__(self, settings: Settings, rules: Iterable[SLORule] | Mapping[str, Any] | None = None) -> None:
        super().__init__(default_rules() if rules is None else rules)
        self.settings = settings
        self._seen: set[str] = set()

    def refresh(self) -> int:
        view = _read_view(self.settings)
        fresh = [w for w in view.windows if w.arm == "candidate" and w.window_id not in self._seen]
        for window in fresh:
            self._seen.add(window.window_id)
            self.evaluate(window)
        return len(fresh)

    def get_violations(self, config_name: str | None = None, deployment_id: str | None = None) -> list[SLOViolation]:
        self.refresh()
        return super().get_violations(config_name=config_name, deployment_id=deployment_id)


def _read_view(settings: Settings) -> ControlView:
    """The control view with its windows, verified with these settings' keys and scope. (``require_kafka``
    runs its own event loop, so it is called before this one starts.)"""
    from canary.ops.view import read_view_async
    from canary.security import ControlSecurity

    topics = Topics(settings.topic_prefix)
    verifier = ControlSecurity.operator(settings).verifier(topics.control)
    bootstrap = require_kafka(settings)
    return asyncio.run(read_view_async(bootstrap, topics, True, verifier))


def _windows(settings: Settings) -> list[WindowResult]:
    return _read_view(settings).windows


_singletons: dict[str, Any] = {}


def _settings() -> Settings:
    return load_settings()


def get_config_manager() -> ConfigManager:
    return _singletons.setdefault("config", ConfigManager(_settings()))  # type: ignore[no-any-return]


def get_canary_executor() -> CanaryExecutor:
    return _singletons.setdefault("executor", CanaryExecutor(_settings()))  # type: ignore[no-any-return]


def get_slo_monitor() -> KafkaSLOMonitor:
    return _singletons.setdefault("slo", KafkaSLOMonitor(_settings()))  # type: ignore[no-any-return]


class LiveMetricsCollector:
    """The spec's metrics collector: ``get_summary_stats(config_name, window_minutes)`` over the windows
    published so far, read again on every call (a collector kept across a deployment never goes stale).

    Settings are those given, or — for the module-level ``metrics_collector`` — the environment's at each
    call. An unknown config raises ConfigError, as ``canary metrics --config`` exits 2, instead of zeros."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings

    def collector(self) -> MetricsCollector:
        """The windows as of now, deduplicated (``canary.reports.metrics.MetricsCollector``)."""
        from canary.reports.metrics import MetricsCollector

        return MetricsCollector(_windows(self._settings or _settings()))

    def config_names(self) -> list[str]:
        return self.collector().config_names()

    def get_summary_stats(
        self, config_name: str, window_minutes: float | None = None, **options: Any
    ) -> dict[str, Any]:
        """Summary statistics of ``config_name``'s windows (``avg_p95_ms``, ``avg_recall_at_10``,
        ``total_slo_violations``, …); ``window_minutes``: only windows ending in the last that many minutes;
        ``options`` (e.g. ``deployment_id``) as ``MetricsCollector.get_summary_stats`` takes them."""
        if window_minutes is not None and (
            isinstance(window_minutes, bool) or not isinstance(window_minutes, int | float) or window_minutes <= 0
        ):
            raise ConfigError(f"window_minutes {window_minutes!r}: must be a number > 0 (minutes), or None for all")
        collector = self.collector()
        known = collector.config_names()
        if config_name not in known:
            seen = ", ".join(known) if known else "none yet (no windows on the topic)"
            raise ConfigError(f"no windows for config {config_name!r}; configs seen: {seen}")
        stats: dict[str, Any] = collector.get_summary_stats(config_name, window_minutes, **options)
        return stats


def get_metrics_collector() -> LiveMetricsCollector:
    """Summary statistics over the published windows (``get_summary_stats(config_name, window_minutes)``)."""
    return _singletons.setdefault("metrics", LiveMetricsCollector(_settings()))  # type: ignore[no-any-return]


metrics_collector = LiveMetricsCollector()
"""The spec's monitoring example calls ``metrics_collector.get_summary_stats(...)`` without creating it:
``from modules.canary import metrics_collector`` is that object (settings read at each call)."""
