"""The spec's programmatic SLO API: :class:`SLOMonitor`, a rule set that records every failing (window, rule).

It sits above both the rules (:mod:`canary.core.slo`) and the judge (:mod:`canary.core.judge`) because it
uses both; living in ``slo`` it made the two modules import each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import msgspec

from canary.core.judge import Judge
from canary.core.models import JSONDict, WindowResult, iso_ms
from canary.core.policy import SLORule, default_policy, default_rules, policy_from_slo_section
from canary.core.slo import judge_all
from canary.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SLOViolation:
    rule_name: str
    metric: str
    metric_value: float
    threshold: float
    operator: str
    window_start: str  # ISO 8601, as in WindowResult.to_dict()
    config_name: str
    deployment_id: str | None

    def to_dict(self) -> JSONDict:
        d: JSONDict = msgspec.to_builtins(self)
        return d


class SLOMonitor:
    """The spec's programmatic API: a rule set that records every failing (window, rule).

    Candidate windows of a deployment are judged like the SLO agent judges them (pooled, anytime-valid
    evidence per :mod:`canary.core.judge`); any other window by its point estimate. ``rules`` is either
    rule objects or a preset's ``slo`` section (read by the one grammar, :func:`canary.core.policy.parse_section`,
    keeping its ``inconclusive_limit``, ``min_samples``, custom metrics and ``horizon_s``).
    """

    def __init__(self, rules: Iterable[SLORule] | Mapping[str, Any] | None = None) -> None:
        self._rules: dict[str, SLORule] = {}
        self._violations: list[SLOViolation] = []
        self._judge: Judge | None = None
        self._base = default_policy()
        if isinstance(rules, Mapping):
            self._base = policy_from_slo_section(rules, label="SLOMonitor")
            rules = self._base.rules
        for r in default_rules() if rules is None else rules:
            self.add_slo_rule(r)

    @property
    def rules(self) -> tuple[SLORule, ...]:
        return tuple(self._rules.values())

    def add_slo_rule(self, rule: SLORule) -> None:
        if rule.name in self._rules:
            raise ConfigError(f"slo rule {rule.name!r} already exists")
        self._rules[rule.name] = rule
        self._judge = None  # pooled evidence was gathered for the old rule set

    def remove_slo_rule(self, name: str) -> None:
        if self._rules.pop(name, None) is None:
            raise ConfigError(f"slo rule {name!r} does not exist (have: {', '.join(self._rules) or 'none'})")
        self._judge = None

    def evaluate(self, window: WindowResult) -> list[SLOViolation]:
        if window.arm == "candidate" and window.deployment_id is not None:
            if self._judge is None:
                policy = replace(self._base, rules=self.rules)
                self._judge = Judge(lambda _dep: policy)
            judged = [j.window for j in self._judge.observe(window, window.emitted_at_ms)]
            verdicts = [v for w in judged for v in w.verdicts]
        else:
            verdicts = list(judge_all(self.rules, window))
        found = [
            SLOViolation(
                rule_name=v.rule,
                metric=v.metric,
                metric_value=v.value,
                threshold=v.threshold,
                operator=v.operator,
                window_start=iso_ms(window.window_start_ms),
                config_name=window.config_name,
                deployment_id=window.deployment_id,
            )
            for v in verdicts
            if v.outcome == "fail" and v.value is not None
        ]
        self._violations.extend(found)
        return found

    def get_violations(self, config_name: str | None = None, deployment_id: str | None = None) -> list[SLOViolation]:
        return [
            v
            for v in self._violations
            if (config_name is None or v.config_name == config_name)
            and (deployment_id is None or v.deployment_id == deployment_id)
        ]
