"""The one place where canary reads its environment.

Every other module receives a :class:`Settings` value, so behaviour never depends on an environment
variable read deep inside a call stack, and tests can build settings explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from canary.errors import ConfigError

DEFAULT_LOCAL_PORT = 19092


def _default_home() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "canary"


@dataclass(frozen=True, slots=True)
class Settings:
    """Resolved runtime settings.

    ``bootstrap_servers`` set means "use that cluster, start nothing"; ``None`` means the local embedded
    broker on ``local_port``. The same rule holds for the CLI, worker, router and tests.
    """

    bootstrap_servers: str | None = None
    local_port: int = DEFAULT_LOCAL_PORT
    home: Path = field(default_factory=_default_home)
    topic_prefix: str = ""
    project_root: Path = field(default_factory=lambda: Path.cwd())
    # Control-command signing (docs/contracts.md, "Control command"). None = the default under ``home``.
    trusted_keys: Path | None = None
    operator_key: Path | None = None
    worker_key: Path | None = None
    insecure_control: bool = False  # apply unsigned commands: local experiments only, logged loudly
    command_ttl_s: float = 300.0
    # Services' log lines: "text" or "json" (one object per line; --log-format overrides it).
    log_format: str = "text"

    @property
    def trusted_keys_dir(self) -> Path:
        """Public keys whose signatures this deployment of canary accepts (one ``<key_id>.json`` each)."""
        return self.trusted_keys or self.home / "trusted-keys"

    @property
    def operator_key_path(self) -> Path:
        """The private key the CLI, the API and the demo sign commands with."""
        return self.operator_key or self.home / "keys" / "operator.key"

    @property
    def worker_key_path(self) -> Path:
        """The private key the SLO agent signs its rollbacks and pauses with."""
        return self.worker_key or self.home / "keys" / "worker.key"

    @property
    def uses_external_kafka(self) -> bool:
        return self.bootstrap_servers is not None

    @property
    def effective_bootstrap(self) -> str:
        return self.bootstrap_servers or f"127.0.0.1:{self.local_port}"

    @property
    def presets_dir(self) -> Path:
        return self.project_root / "configs" / "presets"

    @property
    def reports_dir(self) -> Path:
        return self.project_root / "reports" / "canary"

    @property
    def local_broker_dir(self) -> Path:
        return self.home / f"broker-{self.local_port}"

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from the environment (``os.environ`` by default)."""
    env = os.environ if environ is None else environ
    bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS", "").strip() or None
    port_text = env.get("CANARY_KAFKA_PORT", "").strip()
    try:
        port = int(port_text) if port_text else DEFAULT_LOCAL_PORT
    except ValueError:
        raise ConfigError(f"environment: CANARY_KAFKA_PORT = {port_text!r}: must be an integer port number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"environment: CANARY_KAFKA_PORT = {port}: must be between 1 and 65535")
    home_text = env.get("CANARY_HOME", "").strip()
    root_text = env.get("CANARY_PROJECT_ROOT", "").strip()
    ttl_text = env.get("CANARY_COMMAND_TTL_S", "").strip()
    try:
        ttl = float(ttl_text) if ttl_text else 300.0
    except ValueError:
        raise ConfigError(f"environment: CANARY_COMMAND_TTL_S = {ttl_text!r}: must be a number of seconds") from None
    if not 0 < ttl <= 86_400:
        raise ConfigError(f"environment: CANARY_COMMAND_TTL_S = {ttl_text}: must be in (0, 86400]")
    log_format = env.get("CANARY_LOG_FORMAT", "").strip().lower() or "text"
    if log_format not in ("text", "json"):
        raise ConfigError(f"environment: CANARY_LOG_FORMAT = {log_format!r}: must be text or json")
    return Settings(
        bootstrap_servers=bootstrap,
        local_port=port,
        home=Path(home_text) if home_text else _default_home(),
        topic_prefix=env.get("CANARY_TOPIC_PREFIX", "").strip(),
        project_root=Path(root_text) if root_text else Path.cwd(),
        trusted_keys=_path(env, "CANARY_TRUSTED_KEYS_DIR"),
        operator_key=_path(env, "CANARY_OPERATOR_KEY"),
        worker_key=_path(env, "CANARY_WORKER_KEY"),
        insecure_control=_bool(env, "CANARY_INSECURE_CONTROL"),
        command_ttl_s=ttl,
        log_format=log_format,
    )


def _path(env: Mapping[str, str], name: str) -> Path | None:
    text = env.get(name, "").strip()
    return Path(text).expanduser() if text else None


def _bool(env: Mapping[str, str], name: str) -> bool:
    text = env.get(name, "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"environment: {name} = {text!r}: must be 1/true/yes or 0/false/no")
