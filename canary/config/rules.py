"""Rules files: a preset's ``slo`` section in its own YAML or JSON file — the whole policy.

``canary replay --rules FILE``, the dashboard's replay form and ``run_pipeline(rules_override=)`` judge a
backtest with one. Accepted shapes: a mapping with a top-level ``slo:`` key (a whole preset file works too;
its other keys are ignored), or the bare section. The section is read by the one grammar every ``slo``
section goes through (:func:`canary.core.policy.parse_section`), so every key means what it means in a
preset — the rules, their defaults, ``inconclusive_limit`` with the section's ``min_samples``, the custom
``metrics`` and ``horizon_s`` — and a backtest judges with all of it. Every problem is a
:class:`ConfigError` naming the file, the field, the value and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from canary.config.yamlfile import read_yaml
from canary.core import wire
from canary.core.policy import SECTION_KEYS, SLOPolicy, parse_section
from canary.errors import ConfigError


def parse_policy(data: object, label: str) -> SLOPolicy:
    """The policy of already-parsed file content; ``label`` names the source in errors."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label}: (top level): expected a mapping with an 'slo' section, got {type(data).__name__}")
    if "slo" in data:
        section = data["slo"]
    elif data and set(data) <= SECTION_KEYS:
        section = data
    else:
        keys = ", ".join(sorted(map(str, data))) or "nothing"
        raise ConfigError(
            f"{label}: (top level): no 'slo' section (found {keys}); expected e.g. "
            "'slo: {p95_ms: 5000, recall_at_10: 0.3, consecutive_buckets: 2}'"
        )
    return parse_section(section, label).policy()


def load_policy_file(path: Path) -> SLOPolicy:
    """Read and validate a rules file (``.json`` as JSON, anything else as YAML, a superset of JSON)."""
    label = str(path)
    if not path.is_file():
        raise ConfigError(f"{label}: rules file not found" if not path.exists() else f"{label}: not a regular file")
    if path.suffix.lower() == ".json":
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{label}: cannot read rules file: {exc}") from None
        try:
            data: object = wire.decode(text, wire.FILE)
        except wire.Rejected as exc:
            raise ConfigError(f"{label}: invalid JSON rules file ({exc.code}): {exc.detail}") from None
    else:
        data, error = read_yaml(path, label)
        if error is not None:
            raise ConfigError(str(error))
    return parse_policy(data, label)
