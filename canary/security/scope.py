"""Where a control command is meant to act: the environment and the control topic it was signed for.

The signer adds the scope to every command (``scope``, covered by the signature like ``key_id``), and every
reader's verifier is bound to its own: a command signed for another environment, another cluster's
prefix or another topic — or signed without a scope — is refused (``wrong_scope``), even when its key is
trusted here. The control topic's name already holds the prefix and the environment's namespace
(``canary.settings.Settings.in_environment``); the environment's name is added so the refusal says which
environment the command was for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

SCOPE = "scope"


@dataclass(frozen=True, slots=True)
class Scope:
    environment: str | None  # None: no environment namespace (CANARY_ENV unset)
    control_topic: str

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = msgspec.to_builtins(self)
        return d

    def describe(self) -> str:
        env = f"environment '{self.environment}'" if self.environment else "no environment"
        return f"{env}, topic {self.control_topic}"


def describe_claimed(value: object) -> str:
    """The scope a (hostile) command claims, for a refusal's detail: bounded, whatever it holds."""
    if isinstance(value, dict):
        env, topic = value.get("environment"), value.get("control_topic")
        if (env is None or isinstance(env, str)) and isinstance(topic, str):
            return Scope(env[:100] if env else env, topic[:300]).describe()
    return f"{value!r:.120}"
