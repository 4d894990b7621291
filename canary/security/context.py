"""What one process needs to sign and verify control commands, built once from its settings.

The CLI, the API and the demo sign with the operator key; the worker's SLO agent with the worker key.
Everything that folds the control topic verifies against the same trusted keys directory. Insecure mode
(``CANARY_INSECURE_CONTROL=1`` or ``--insecure`` on worker/router) accepts unsigned commands — local
experiments only — and every process running that way says so loudly.

Signers and verifiers are bound to the control topic they write or read and to the process's environment
(:class:`~canary.security.scope.Scope`): a command signed for one environment is refused in every other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from canary.errors import ConfigError
from canary.security.keys import KeyRing, Role
from canary.security.scope import Scope
from canary.security.signing import CommandSigner
from canary.security.verify import CommandVerifier
from canary.settings import Settings, load_settings

log = logging.getLogger("canary.security")

INSECURE_WARNING = (
    "INSECURE CONTROL MODE: control commands are applied WITHOUT signature verification "
    "(CANARY_INSECURE_CONTROL / --insecure). Anyone who can write the control topic controls the traffic. "
    "Local experiments only."
)


@dataclass(frozen=True, slots=True)
class ControlSecurity:
    trusted_dir: Path
    key_path: Path
    role: Role
    insecure: bool = False
    ttl_ms: int = 300_000
    environment: str | None = None  # the process's environment (CANARY_ENV / --env), signed into every command

    @classmethod
    def for_role(cls, settings: Settings, role: Role) -> ControlSecurity:
        key = settings.operator_key_path if role == "operator" else settings.worker_key_path
        ttl_ms = int(settings.command_ttl_s * 1000)
        return cls(settings.trusted_keys_dir, key, role, settings.insecure_control, ttl_ms, settings.environment)

    @classmethod
    def operator(cls, settings: Settings) -> ControlSecurity:
        return cls.for_role(settings, "operator")

    @classmethod
    def worker(cls, settings: Settings) -> ControlSecurity:
        return cls.for_role(settings, "worker")

    def scope(self, control_topic: str) -> Scope:
        return Scope(self.environment, control_topic)

    def verifier(self, control_topic: str) -> CommandVerifier:
        """A fresh verifier for the records of ``control_topic`` (each reader of the control topic needs its
        own: it remembers accepted ids)."""
        return CommandVerifier(KeyRing(self.trusted_dir), insecure=self.insecure, scope=self.scope(control_topic))

    def signer(self, control_topic: str) -> CommandSigner | None:
        """The signer of this process's key, for commands produced to ``control_topic``. Without the key file:
        ConfigError saying how to create it — or, in insecure mode only, None (commands go out unsigned)."""
        if self.insecure and not self.key_path.exists():
            log.warning("insecure mode: no %s key at %s, commands are sent unsigned", self.role, self.key_path)
            return None
        try:
            return CommandSigner.from_file(self.key_path, self.ttl_ms, self.scope(control_topic))
        except ConfigError as exc:
            flag = " --role worker" if self.role == "worker" else ""
            raise ConfigError(
                f"{exc}. Control commands must be signed: create the {self.role} key with "
                f"'canary keys init{flag}' (or set CANARY_INSECURE_CONTROL=1 for a local experiment)"
            ) from None

    def warn_if_insecure(self, who: str) -> None:
        if self.insecure:
            for _ in range(3):  # three lines: it must not scroll by unnoticed
                log.warning("%s: %s", who, INSECURE_WARNING)


def default_verifier(control_topic: str) -> CommandVerifier:
    """The verifier the process's settings describe (``canary.settings.load_settings``) for ``control_topic``,
    for components constructed without an explicit one (routers, the worker's registry, the CLI's view)."""
    return ControlSecurity.operator(load_settings()).verifier(control_topic)
