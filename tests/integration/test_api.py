"""The spec's Python API, imported the way the spec shows, against the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from canary import api
from canary.errors import ConfigError, DeploymentError
from canary.kafka.topics import Topics
from canary.settings import Settings
from devtools.harness import ROOT

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


def _raises(exc: type[Exception], call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(exc) as caught:
        call(*args, **kwargs)
    return str(caught.value)


def _one_at_a_time_flow() -> dict[str, Any]:
    """Issue #21 through the API: a second start, a bare stop while two run, a stray collection, an unknown
    config — each refused with the CLI's exception class (its exit code) and the reason."""
    from modules.canary import get_canary_executor, metrics_collector

    executor = get_canary_executor()
    first = executor.start_canary("candidate_slow")
    assert first["ok"] is True, first
    out: dict[str, Any] = {"first": first["deployment_id"]}
    out["again"] = _raises(DeploymentError, executor.start_canary, "candidate_high_recall")
    out["twice"] = _raises(DeploymentError, executor.start_canary, "candidate_slow", parallel=True)
    second = executor.start_canary("candidate_high_recall", parallel=True)  # asked for: runs beside it
    assert second["ok"] is True, second
    out["second"] = second["deployment_id"]
    out["bare_stop"] = _raises(DeploymentError, executor.stop_canary)
    out["positional_promote"] = _raises(ConfigError, executor.stop_canary, True)
    out["stopped_first"] = executor.stop_canary(deployment_id=out["first"])
    out["first_status"] = executor.get_current_status(deployment_id=out["first"])
    out["stopped_rest"] = executor.stop_canary(promote=True)  # one left: the default
    out["nothing"] = _raises(DeploymentError, executor.stop_canary)
    out["collection"] = _raises(ConfigError, executor.execute_search, query="q", collection_name="nope")
    results, used = executor.execute_search(query="machine learning", collection_name="documents")
    out["served"] = (len(results), used["config_name"])
    out["unknown_config"] = _raises(ConfigError, metrics_collector.get_summary_stats, "nope")
    out["bad_window"] = _raises(ConfigError, metrics_collector.get_summary_stats, "last_good", window_minutes=0)
    return out


async def test_api_one_canary_at_a_time_and_stop_takes_the_deployment(api_env: None) -> None:
    out = await asyncio.to_thread(_one_at_a_time_flow)
    first, second = out["first"], out["second"]
    assert out["again"] == (
        f"a canary is already running: {first} (candidate_slow, weight 0.1, running). Starting "
        "candidate_high_recall would run another one beside it. End it first (stop_canary(promote=True | False)), or "
        "ask for several candidates at once with start_canary(..., parallel=True)"
    )
    assert out["twice"].startswith(f"candidate_slow is already running as {first} (weight 0.1, running)")
    assert out["twice"].endswith(f"End it first: stop_canary(deployment_id={first!r}, promote=True | False)")
    assert out["bare_stop"] == (f"2 canaries are running ({first}, {second}); say which to stop with deployment_id=ID")
    assert "deployment_id must be a deployment id string or None, got True" in out["positional_promote"]
    stopped = out["stopped_first"]
    assert stopped["ok"] and stopped["type"] == "rollback" and stopped["deployment_id"] == first
    assert out["first_status"]["deployment_id"] == first and out["first_status"]["status"] == "rolled_back"
    rest = out["stopped_rest"]
    assert rest["ok"] and rest["type"] == "promote" and rest["deployment_id"] == second
    assert out["nothing"].startswith("no canary is running; nothing to stop")
    assert out["collection"] == (
        "collection_name 'nope': not a collection of the search backend serving candidate_high_recall "
        "(HybridBackend serves: documents)"
    )
    assert out["served"][0] > 0 and out["served"][1] == "candidate_high_recall"  # promoted: last_good now
    assert out["unknown_config"] == "no windows for config 'nope'; configs seen: none yet (no windows on the topic)"
    assert out["bad_window"].startswith("window_minutes 0: must be a number > 0")


def _readme_example() -> str:
    """The README's complete Python example (the block after "The spec's examples, complete")."""
    text = (ROOT / "README.md").read_text()
    found = re.search(r"The spec's examples, complete.*?```python\n(.*?)```", text, re.S)
    assert found is not None, "README: the Python example moved"
    return found.group(1)


# The spec's monitoring example (canary-seed.md, "监控和告警"), verbatim; it uses `canary_executor`,
# `metrics_collector` and `slo_monitor` as the README's example defines them.
SPEC_MONITORING = """
# 获取当前状态
status = canary_executor.get_current_status()
print(f"Deployment: {status['deployment_id']}")
print(f"Status: {status['status']}")
print(f"Total requests: {status['total_requests']}")

# 获取指标摘要
metrics = metrics_collector.get_summary_stats("candidate_high_recall", window_minutes=10)
print(f"Avg P95: {metrics['avg_p95_ms']:.2f} ms")
print(f"Avg Recall: {metrics['avg_recall_at_10']:.3f}")
print(f"SLO violations: {metrics['total_slo_violations']}")

# 获取SLO违规历史
violations = slo_monitor.get_violations(config_name="candidate_high_recall")
for violation in violations:
    print(f"SLO violation: {violation.rule_name} - {violation.metric_value} vs {violation.threshold}")
"""


async def test_the_documented_python_example_and_the_spec_monitoring_snippet_run(
    api_env: None, settings: Settings, topics: Topics
) -> None:
    # A judged candidate window of the last minute, as a worker would publish it (no worker runs here).
    now = int(time.time() * 1000)
    window = {
        "deployment_id": "canary_1_0001",
        "config_name": "candidate_high_recall",
        "arm": "candidate",
        "window_start_ms": now - 65_000,
        "window_end_ms": now - 60_000,
        "duration_sec": 5,
        "response_count": 40,
        "error_count": 0,
        "p95_ms": 812.5,
        "recall_at_10": 0.75,
        "recall_samples": 40,
        "slo_violations": 1,
        "verdicts": [],
        "late_count": 0,
        "emitted_at_ms": now - 59_000,
    }
    producer = AIOKafkaProducer(bootstrap_servers=settings.effective_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topics.windows, json.dumps(window).encode(), key=b"w")
    finally:
        await producer.stop()

    def run() -> str:
        printed = io.StringIO()
        namespace: dict[str, Any] = {}
        with contextlib.redirect_stdout(printed):
            exec(compile(_readme_example(), "README.md", "exec"), namespace)
            exec(compile(SPEC_MONITORING, "canary-seed.md", "exec"), namespace)
        return printed.getvalue()

    printed = await asyncio.to_thread(run)
    assert "Avg P95: 812.50 ms  SLO violations: 1" in printed  # the README's lines
    assert "Avg P95: 812.50 ms\nAvg Recall: 0.750\nSLO violations: 1" in printed  # the spec's, as written
    assert "Status: promoted" in printed  # the README's example ends by promoting its canary
