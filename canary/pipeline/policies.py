"""Which policy judges which deployment: resolved from the control topic in this one place.

The live worker (``streams/registry.py``), replay, reports and the benchmarks all ask a :class:`PolicyBook`;
it reads a deployment's candidate snapshot through :func:`canary.core.slo.deployment_policy`, or applies a
backtest's override, and derives the windows stage's aggregator from the same policy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from canary.core.aggregations import WindowAggregator
from canary.core.custom import RESULT_DIFF_METRICS, CustomAggregation
from canary.core.deployment import ControlLedger
from canary.core.models import WindowKey
from canary.core.slo import SLOPolicy, SLORule, aggregator_settings, default_policy, deployment_policy

log = logging.getLogger("canary.pipeline.policies")


def aggregator_for_policy(policy: SLOPolicy) -> WindowAggregator:
    latency, recall, thresholds = aggregator_settings(policy)
    quantile_thresholds: dict[str, set[float]] = {}
    for rule in policy.rules:
        if rule.custom is not None and rule.custom.quantile is not None:
            quantile_thresholds.setdefault(rule.metric, set()).add(float(rule.threshold))
    # The result-diff metrics the routers measure are aggregated whether or not a rule names them, so watch,
    # the reports and the dashboard show them (docs/contracts.md, "Result-diff metrics"); a window whose
    # outcomes carry none has no custom stats, so older windows keep their exact JSON.
    declared = {m.name for m in policy.custom_metrics}
    # An external metric's one value per window is written by the SLO agent (canary.core.custom.with_external),
    # never folded from outcomes: an outcome carrying a number of that name cannot touch it.
    own = tuple(m for m in policy.custom_metrics if not m.external)
    metrics = (*own, *(m for name, m in RESULT_DIFF_METRICS.items() if name not in declared))
    custom = CustomAggregation(metrics, {name: tuple(sorted(ts)) for name, ts in quantile_thresholds.items()})
    return WindowAggregator(
        latency_threshold_ms=latency, recall_threshold=recall, exceed_thresholds_ms=thresholds, custom=custom
    )


class PolicyBook:
    """Policies per deployment from a (live, growing) ledger, optionally overridden for a backtest.

    A policy is fixed for a deployment once resolved: a deployment's preset cannot change after its start.
    """

    def __init__(
        self,
        ledger: Callable[[], ControlLedger] | ControlLedger,
        override: Sequence[SLORule] | SLOPolicy | None = None,
    ) -> None:
        self._ledger = ledger if callable(ledger) else (lambda: ledger)
        if override is None or isinstance(override, SLOPolicy):
            self.override = override
        else:
            # Bare rules: the metrics their custom rules declare are part of the policy (the windows stage
            # aggregates only declared metrics); the low-traffic settings are the defaults.
            declared = {r.custom.name: r.custom for r in override if r.custom is not None}
            self.override = SLOPolicy(tuple(override), custom_metrics=tuple(declared.values()))
        self._cache: dict[str, SLOPolicy] = {}
        self._aggregators: dict[str, WindowAggregator] = {}

    def policy(self, deployment_id: str | None) -> SLOPolicy:
        if deployment_id is None:
            return default_policy()
        cached = self._cache.get(deployment_id)
        if cached is not None:
            return cached
        if self.override is not None:
            policy = self.override
        else:
            dep = self._ledger().deployments.get(deployment_id)
            if dep is None:
                return default_policy()  # not cached: the start command may not be folded yet
            policy = deployment_policy(
                dep.candidate.snapshot,
                on_error=lambda why: log.error(
                    "deployment %s: invalid slo section (%s); default rules", deployment_id, why
                ),
            )
        self._cache[deployment_id] = policy
        return policy

    def rules(self, deployment_id: str | None) -> tuple[SLORule, ...]:
        return self.policy(deployment_id).rules

    def aggregator_for(self, key: WindowKey) -> WindowAggregator:
        dep = key.deployment_id or "-"
        agg = self._aggregators.get(dep)
        if agg is None:
            agg = aggregator_for_policy(self.policy(key.deployment_id))
            if key.deployment_id is None or key.deployment_id in self._cache:
                self._aggregators[dep] = agg
        return agg
