"""The one place where canary reads its environment.

Every other module receives a :class:`Settings` value, so behaviour never depends on an environment
variable read deep inside a call stack, and tests can build settings explicitly.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from canary.errors import ConfigError

NativeMode = Literal["auto", "on", "off"]
NATIVE_MODES: tuple[NativeMode, ...] = ("auto", "on", "off")
_ARMS = ("last_good", "candidate")  # canary.core.models.ARMS (settings import nothing of the core)

DEFAULT_LOCAL_PORT = 19092
ENV_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_DIR_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def prefix_dir_name(prefix: str) -> str:
    """A topic prefix as one directory name: itself without its trailing dots when that is a plain name,
    else ``prefix-<hash>`` (a prefix is the operator's free text: no '/', '..' or hidden name gets through)."""
    name = prefix.rstrip(".")
    if _DIR_SAFE.fullmatch(name) and name != "demo":  # reports/canary/demo is the demo's own directory
        return name
    return "prefix-" + hashlib.sha256(prefix.encode("utf-8", "surrogatepass")).hexdigest()[:12]


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """How every Kafka client of this process authenticates and encrypts (README, "Kafka security").

    Validated on construction, so a client can never be built from a half-configured security setup; the
    messages name the environment variables, which are the documented names of these settings.
    """

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                f"CANARY_KAFKA_SECURITY_PROTOCOL = {self.protocol!r}: must be one of {', '.join(SECURITY_PROTOCOLS)}"
            )
        sasl_given = [
            name
            for name, value in (
                ("CANARY_KAFKA_SASL_MECHANISM", self.sasl_mechanism),
                ("CANARY_KAFKA_SASL_USERNAME", self.sasl_username),
                ("CANARY_KAFKA_SASL_PASSWORD", self.sasl_password),
            )
            if value is not None
        ]
        ssl_given = [
            name
            for name, value in (
                ("CANARY_KAFKA_SSL_CAFILE", self.ssl_cafile),
                ("CANARY_KAFKA_SSL_CERTFILE", self.ssl_certfile),
                ("CANARY_KAFKA_SSL_KEYFILE", self.ssl_keyfile),
                ("CANARY_KAFKA_SSL_KEY_PASSWORD", self.ssl_key_password),
            )
            if value is not None
        ]
        if sasl_given and not self.uses_sasl:
            raise ConfigError(
                f"{', '.join(sasl_given)} set but CANARY_KAFKA_SECURITY_PROTOCOL = {self.protocol}: SASL settings "
                "would be ignored; set the protocol to SASL_PLAINTEXT or SASL_SSL (or unset them)"
            )
        if ssl_given and not self.uses_ssl:
            raise ConfigError(
                f"{', '.join(ssl_given)} set but CANARY_KAFKA_SECURITY_PROTOCOL = {self.protocol}: SSL settings "
                "would be ignored; set the protocol to SSL or SASL_SSL (or unset them)"
            )
        if self.uses_sasl:
            if self.sasl_mechanism is None:
                raise ConfigError(
                    f"CANARY_KAFKA_SASL_MECHANISM is required with CANARY_KAFKA_SECURITY_PROTOCOL = {self.protocol} "
                    f"(one of {', '.join(SASL_MECHANISMS)})"
                )
            if self.sasl_mechanism not in SASL_MECHANISMS:
                known = ", ".join(SASL_MECHANISMS)
                raise ConfigError(f"CANARY_KAFKA_SASL_MECHANISM = {self.sasl_mechanism!r}: must be one of {known}")
            if not self.sasl_username:
                raise ConfigError(f"CANARY_KAFKA_SASL_USERNAME is required with SASL ({self.sasl_mechanism})")
            if not self.sasl_password:
                raise ConfigError(
                    f"a SASL password is required for user {self.sasl_username!r}: set CANARY_KAFKA_SASL_PASSWORD_FILE "
                    "(a file holding it) or CANARY_KAFKA_SASL_PASSWORD"
                )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ConfigError("CANARY_KAFKA_SSL_KEYFILE set without CANARY_KAFKA_SSL_CERTFILE (the client certificate)")
        for name, path in (
            ("CANARY_KAFKA_SSL_CAFILE", self.ssl_cafile),
            ("CANARY_KAFKA_SSL_CERTFILE", self.ssl_certfile),
            ("CANARY_KAFKA_SSL_KEYFILE", self.ssl_keyfile),
        ):
            if path is not None and not path.is_file():
                raise ConfigError(f"{name} = {str(path)!r}: no such file")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def authenticated(self) -> bool:
        """Anything but PLAINTEXT: the cluster knows who we are, so it may enforce ACLs."""
        return self.protocol != "PLAINTEXT"

    def describe(self) -> str:
        if self.uses_sasl:
            return f"{self.protocol} {self.sasl_mechanism} as {self.sasl_username}"
        return self.protocol


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
    # test / staging / production on one cluster (canary.config.environments): None = no namespace.
    environment: str | None = None
    # Several candidates may run at once (A/B/n) while last_good keeps at least this share of traffic.
    min_last_good_share: float = 0.5
    # The bundled backend's rerank stage (router.backends.hybrid.RERANK_RUNTIMES): the real model by default.
    rerank: str = "model"
    # The bundled backend's data (router.backends.hybrid.CORPORA): the Cranfield collection (real text, human
    # judgments), or the generated pseudo-word corpus (scale tests); the router and `canary load` use the same.
    corpus: str = "cranfield"
    # Share of unlabeled requests per arm the router searches again exactly, for recall@10 without labels
    # (CANARY_RECALL_SAMPLE_RATE; router.service.DEFAULT_RECALL_SAMPLE_RATE; 0 turns it off), and per-arm
    # overrides (CANARY_RECALL_SAMPLE_RATE_CANDIDATE / _LAST_GOOD).
    recall_sample_rate: float = 0.10
    recall_sample_rate_by_arm: Mapping[str, float] = field(default_factory=dict)
    # Share of the candidate's answered requests the router also searches with last_good's config, for the
    # result-diff metrics (CANARY_DIFF_SAMPLE_RATE; router.search.DEFAULT_DIFF_SAMPLE_RATE; 0 turns it off).
    diff_sample_rate: float = 0.10
    # The Prometheus server external metrics are queried on (CANARY_PROMETHEUS_URL, e.g.
    # http://127.0.0.1:9090); None: an external metric is missing ("not_configured") in every window.
    prometheus_url: str | None = None
    # The native batch decoder of the windows stage (CANARY_NATIVE; canary.pipeline.decode): "auto" uses it when
    # the extension is installed, "off" never (the pure-Python reference path), "on" requires it.
    native: NativeMode = "auto"

    @property
    def recall_sample_rates(self) -> dict[str, float]:
        """The exact-search sample rate of each arm."""
        return {arm: self.recall_sample_rate_by_arm.get(arm, self.recall_sample_rate) for arm in _ARMS}

    # HMAC secrets of alert webhooks: every CANARY_ALERT_* variable (an environment file names which).
    alert_secrets: Mapping[str, str] = field(default_factory=dict, repr=False)

    # How every Kafka client authenticates (SASL / SSL); PLAINTEXT by default.
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    # Replication factor of the topics canary creates; None = min(3, brokers in the cluster).
    replication_factor: int | None = None
    # Whether services (router, worker, demo) create missing topics at start; None = only on an
    # unauthenticated (PLAINTEXT) cluster. On a secured cluster `canary kafka topics` is the admin step.
    create_topics: bool | None = None

    @property
    def env_home(self) -> Path:
        """Where this environment's keys and caches live (``home`` itself without an environment)."""
        return self.home / "envs" / self.environment if self.environment else self.home

    @property
    def services_create_topics(self) -> bool:
        if self.create_topics is not None:
            return self.create_topics
        return not self.kafka_security.authenticated

    # Services' log lines: "text" or "json" (one object per line; --log-format overrides it).
    log_format: str = "text"

    @property
    def trusted_keys_dir(self) -> Path:
        """Public keys whose signatures this deployment of canary accepts (one ``<key_id>.json`` each)."""
        return self.trusted_keys or self.env_home / "trusted-keys"

    @property
    def operator_key_path(self) -> Path:
        """The private key the CLI, the API and the demo sign commands with."""
        return self.operator_key or self.env_home / "keys" / "operator.key"

    @property
    def worker_key_path(self) -> Path:
        """The private key the SLO agent signs its rollbacks and pauses with."""
        return self.worker_key or self.env_home / "keys" / "worker.key"

    @property
    def environments_dir(self) -> Path:
        return self.project_root / "configs" / "environments"

    def sibling(self, name: str) -> Settings:
        """The settings of environment ``name`` beside this one (same cluster, same base prefix)."""
        base = self
        if self.environment is not None:
            prefix = self.topic_prefix.removesuffix(f"{self.environment}.")
            base = replace(self, environment=None, topic_prefix=prefix)
        return base.in_environment(name)

    def in_environment(self, name: str | None) -> Settings:
        """These settings inside environment ``name``: its topic namespace (``<prefix><name>.``), keys,
        caches, audit and reports. The name is checked here; its file by canary.config.environments."""
        if name is None or name == self.environment:
            return self
        if self.environment is not None:
            raise ConfigError(f"environment: already in '{self.environment}'; cannot also select '{name}'")
        if not ENV_NAME.fullmatch(name):
            raise ConfigError(
                f"environment: {name!r}: must be lower-case letters, digits, '_' or '-', starting with a letter"
            )
        return replace(self, environment=name, topic_prefix=f"{self.topic_prefix}{name}.")

    @property
    def dashboard_token_path(self) -> Path:
        """The operator token of ``canary dashboard`` (created with mode 0600 on its first start)."""
        return self.env_home / "dashboard.token"

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
        """This topic namespace's reports and the worker's default audit.log: ``reports/canary/`` without a
        prefix, ``reports/canary/<prefix>/`` with one (its trailing '.' dropped), then ``<environment>/``.
        A namespace's readers (``canary audit``, ``export``, the dashboard) and its worker meet here, and
        never read or write another prefix's file (the demo's, a test's)."""
        base = self.project_root / "reports" / "canary"
        prefix = self.base_prefix
        if prefix:
            base = base / prefix_dir_name(prefix)
        return base / self.environment if self.environment else base

    @property
    def base_prefix(self) -> str:
        """The topic prefix without the environment's own part (``<base><environment>.``)."""
        if self.environment is not None:
            return self.topic_prefix.removesuffix(f"{self.environment}.")
        return self.topic_prefix

    @property
    def demo_reports_dir(self) -> Path:
        """Where ``canary demo`` writes by default: its own directory, beside (never over) the live reports."""
        base = self.project_root / "reports" / "canary"
        return (base / self.environment if self.environment else base) / "demo"

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
        alert_secrets={k: v for k, v in env.items() if k.startswith("CANARY_ALERT_") and v},
        min_last_good_share=_share(env, "CANARY_MIN_LAST_GOOD_SHARE", 0.5),
        rerank=_choice(env, "CANARY_RERANK", ("model", "modeled", "off"), "model"),
        corpus=_choice(env, "CANARY_CORPUS", ("cranfield", "generated"), "cranfield"),
        recall_sample_rate=_fraction(env, "CANARY_RECALL_SAMPLE_RATE", 0.10),
        recall_sample_rate_by_arm={
            arm: _fraction(env, f"CANARY_RECALL_SAMPLE_RATE_{arm.upper()}", 0.0)
            for arm in _ARMS
            if env.get(f"CANARY_RECALL_SAMPLE_RATE_{arm.upper()}", "").strip()
        },
        diff_sample_rate=_fraction(env, "CANARY_DIFF_SAMPLE_RATE", 0.10),
        prometheus_url=env.get("CANARY_PROMETHEUS_URL", "").strip() or None,
        native=_native_mode(env),
        kafka_security=_kafka_security(env),
        replication_factor=_replication_factor(env),
        create_topics=_bool(env, "CANARY_KAFKA_CREATE_TOPICS") if _given(env, "CANARY_KAFKA_CREATE_TOPICS") else None,
    ).in_environment(env.get("CANARY_ENV", "").strip() or None)


def _kafka_security(env: Mapping[str, str]) -> KafkaSecurity:
    protocol = env.get("CANARY_KAFKA_SECURITY_PROTOCOL", "").strip().upper() or "PLAINTEXT"
    mechanism = env.get("CANARY_KAFKA_SASL_MECHANISM", "").strip().upper() or None
    try:
        return _security_from(env, protocol, mechanism)
    except ConfigError as exc:
        raise ConfigError(f"environment: {exc}") from None


def _security_from(env: Mapping[str, str], protocol: str, mechanism: str | None) -> KafkaSecurity:
    return KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username=env.get("CANARY_KAFKA_SASL_USERNAME", "").strip() or None,
        sasl_password=_secret(env, "CANARY_KAFKA_SASL_PASSWORD"),
        ssl_cafile=_path(env, "CANARY_KAFKA_SSL_CAFILE"),
        ssl_certfile=_path(env, "CANARY_KAFKA_SSL_CERTFILE"),
        ssl_keyfile=_path(env, "CANARY_KAFKA_SSL_KEYFILE"),
        ssl_key_password=_secret(env, "CANARY_KAFKA_SSL_KEY_PASSWORD"),
    )


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """A secret from ``NAME`` or from the file ``NAME_FILE`` names (not both: which one would win?)."""
    direct = env.get(name, "")
    file_name = f"{name}_FILE"
    path = _path(env, file_name)
    if direct and path is not None:
        raise ConfigError(f"environment: both {name} and {file_name} are set; set only one")
    if path is None:
        return direct or None
    try:
        text = path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"environment: {file_name} = {str(path)!r}: cannot read it ({exc.strerror or exc})") from None
    if not text:
        raise ConfigError(f"environment: {file_name} = {str(path)!r}: the file is empty")
    return text


def _replication_factor(env: Mapping[str, str]) -> int | None:
    text = env.get("CANARY_KAFKA_REPLICATION_FACTOR", "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"environment: CANARY_KAFKA_REPLICATION_FACTOR = {text!r}: must be an integer") from None
    if not 1 <= value <= 32:
        raise ConfigError(f"environment: CANARY_KAFKA_REPLICATION_FACTOR = {value}: must be between 1 and 32")
    return value


def _given(env: Mapping[str, str], name: str) -> bool:
    return bool(env.get(name, "").strip())


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    text = env.get(name, "").strip().lower()
    if not text:
        return default
    if text not in allowed:
        raise ConfigError(f"environment: {name} = {text!r}: must be one of {', '.join(allowed)}")
    return text


def _share(env: Mapping[str, str], name: str, default: float) -> float:
    """A number in [0, 1)."""
    return _unit_interval(env, name, default, include_one=False)


def _fraction(env: Mapping[str, str], name: str, default: float) -> float:
    """A number in [0, 1]."""
    return _unit_interval(env, name, default, include_one=True)


def _unit_interval(env: Mapping[str, str], name: str, default: float, *, include_one: bool) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    interval = "[0, 1]" if include_one else "[0, 1)"
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"environment: {name} = {text!r}: must be a number in {interval}") from None
    if not (0 <= value <= 1 if include_one else 0 <= value < 1):
        raise ConfigError(f"environment: {name} = {text}: must be in {interval}")
    return value


def _path(env: Mapping[str, str], name: str) -> Path | None:
    text = env.get(name, "").strip()
    return Path(text).expanduser() if text else None


def _native_mode(env: Mapping[str, str]) -> NativeMode:
    text = env.get("CANARY_NATIVE", "").strip().lower() or "auto"
    for mode in NATIVE_MODES:
        if text == mode:
            return mode
    raise ConfigError(f"environment: CANARY_NATIVE = {text!r}: must be one of {', '.join(NATIVE_MODES)}")


def _bool(env: Mapping[str, str], name: str) -> bool:
    text = env.get(name, "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"environment: {name} = {text!r}: must be 1/true/yes or 0/false/no")
