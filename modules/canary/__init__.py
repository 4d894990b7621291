"""The spec's import path, kept as an alias of :mod:`canary.api` (the primary, non-generic name)."""

from canary.api import (
    CanaryExecutor,
    ConfigManager,
    SLOMonitor,
    SLORule,
    SLOViolation,
    get_canary_executor,
    get_config_manager,
    get_metrics_collector,
    get_slo_monitor,
)

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
