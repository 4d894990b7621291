"""``--rules FILE`` for backtests: a preset's ``slo`` section in YAML or JSON — the whole policy.

Accepted shapes: a mapping with a top-level ``slo:`` key (a whole preset file works too; other keys are
ignored), or the bare section. The section is read by the very parser the SLO agent applies to a
deployment's snapshot (:func:`canary.core.slo.policy_from_slo_section`), so every key a preset's ``slo``
may hold means the same here — the rules (``p95_ms``, ``recall_at_10``, ``error_rate``, ``rules``), their
defaults (``consecutive_buckets``, ``min_samples``, ``confidence``, ``method``), the low-traffic limit
(``inconclusive_limit``, with the section's ``min_samples``) and the declared custom metrics
(``metrics``) — and a backtest judges with all of it. Every problem is a :class:`ConfigError` naming the
file, the field and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from canary.config.yamlfile import read_yaml
from canary.core import wire
from canary.core.slo import SECTION_KEYS, SLOPolicy, policy_from_slo_section
from canary.errors import ConfigError


def parse_policy(data: object, label: str) -> SLOPolicy:
    """The policy of already-parsed file content; ``label`` names the source in errors."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label}: (top level): expected a mapping with an 'slo' section, got {type(data).__name__}")
    if "slo" in data:
        section = data["slo"]
        if not isinstance(section, Mapping):
            raise ConfigError(f"{label}: slo: expected a mapping, got {section!r:.100}")
    elif data and set(data) <= SECTION_KEYS:
        section = data
    else:
        keys = ", ".join(sorted(map(str, data))) or "nothing"
        raise ConfigError(
            f"{label}: (top level): no 'slo' section (found {keys}); expected e.g. "
            "'slo: {p95_ms: 5000, recall_at_10: 0.3, consecutive_buckets: 2}'"
        )
    try:
        return policy_from_slo_section(section)
    except ConfigError as exc:
        text = str(exc)
        if not text.startswith("slo"):
            text = f"slo: {text}"
        raise ConfigError(f"{label}: {text}") from None


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
