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
    return Settings(
        bootstrap_servers=bootstrap,
        local_port=port,
        home=Path(home_text) if home_text else _default_home(),
        topic_prefix=env.get("CANARY_TOPIC_PREFIX", "").strip(),
        project_root=Path(root_text) if root_text else Path.cwd(),
    )
