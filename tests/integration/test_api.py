"""The spec's Python API, imported the way the spec shows, against the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from canary import api
from canary.kafka.topics import Topics
from canary.settings import Settings

pytestmark = pytest.mark.kafka


@pytest.fixture
def api_env(settings: Settings, topics: Topics, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", settings.effective_bootstrap)
    monkeypatch.setenv("CANARY_TOPIC_PREFIX", settings.topic_prefix)
    monkeypatch.setenv("CANARY_PROJECT_ROOT", str(settings.project_root))
    api._singletons.clear()
    yield
    executor = api._singletons.get("executor")
    if executor is not None:
        executor.close()
    api._singletons.clear()


def _spec_flow() -> dict[str, object]:
    from modules.canary import get_canary_executor, get_config_manager

    config_manager = get_config_manager()
    canary_executor = get_canary_executor()
    names = [p.name for p in config_manager.list_presets()]
    started = canary_executor.start_canary("candidate_high_recall")
    configs = set()
    for i in range(200):
        results, config_used = canary_executor.execute_search(
            query="machine learning", collection_name="documents", user_id=f"user-{i}"
        )
        configs.add((config_used["arm"], config_used["config_name"]))
        assert isinstance(results, list)
    status = canary_executor.get_current_status()
    stopped = canary_executor.stop_canary(promote=True)
    after = canary_executor.get_current_status()
    return {
        "names": names,
        "started": started,
        "configs": configs,
        "status": status,
        "stopped": stopped,
        "after": after,
        "pointers": config_manager.pointers(),
    }


async def test_spec_python_api_round_trip(api_env: None) -> None:
    out = await asyncio.to_thread(_spec_flow)
    assert "candidate_high_recall" in out["names"]  # type: ignore[operator]
    assert out["started"]["ok"] is True  # type: ignore[index]
    assert out["configs"] == {("last_good", "last_good"), ("candidate", "candidate_high_recall")}
    status = out["status"]
    assert status["status"] == "running" and status["deployment_id"] == out["started"]["deployment_id"]  # type: ignore[index]
    assert out["stopped"]["ok"] is True  # type: ignore[index]
    assert out["after"]["status"] == "promoted"  # type: ignore[index]
    assert out["pointers"] == {
        "active": "candidate_high_recall",
        "last_good": "candidate_high_recall",
        "source": "kafka",
    }


def test_slo_monitor_spec_api() -> None:
    from modules.canary import SLORule, get_slo_monitor

    monitor = get_slo_monitor()
    custom = SLORule(name="custom_latency", metric="p95_ms", operator="le", threshold=800.0, consecutive_buckets=3)
    monitor.add_slo_rule(custom)
    assert "custom_latency" in [r.name for r in monitor.rules]
    monitor.remove_slo_rule("custom_latency")
    api._singletons.clear()
