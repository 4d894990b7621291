"""``--rules FILE`` for backtests: an ``slo`` section in YAML or JSON, as in a preset.

Accepted shapes: a mapping with a top-level ``slo:`` key (a whole preset file works too; other keys are
ignored), or the bare section (``p95_ms``, ``recall_at_10``, ``consecutive_buckets``, ``min_samples``,
``rules``). Every problem is a :class:`ConfigError` naming the file, the field and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from canary.config.yamlfile import read_yaml
from canary.core import wire
from canary.core.slo import SLORule, rules_from_slo_section
from canary.errors import ConfigError

SLO_KEYS = frozenset({"p95_ms", "recall_at_10", "consecutive_buckets", "min_samples", "rules"})


def parse_rules(data: object, label: str) -> list[SLORule]:
    """Rules from already-parsed file content; ``label`` names the source in errors."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label}: (top level): expected a mapping with an 'slo' section, got {type(data).__name__}")
    if "slo" in data:
        section = data["slo"]
        if not isinstance(section, Mapping):
            raise ConfigError(f"{label}: slo: expected a mapping, got {section!r:.100}")
    elif data and set(data) <= SLO_KEYS:
        section = data
    else:
        keys = ", ".join(sorted(map(str, data))) or "nothing"
        raise ConfigError(
            f"{label}: (top level): no 'slo' section (found {keys}); expected e.g. "
            "'slo: {p95_ms: 5000, recall_at_10: 0.3, consecutive_buckets: 2}'"
        )
    try:
        return rules_from_slo_section(section)
    except ConfigError as exc:
        text = str(exc)
        if not text.startswith("slo"):
            text = f"slo: {text}"
        raise ConfigError(f"{label}: {text}") from None


def load_rules_file(path: Path) -> list[SLORule]:
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
    return parse_rules(data, label)
