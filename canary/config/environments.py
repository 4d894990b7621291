"""Environments (test / staging / production): one namespace each on the same cluster, with overrides.

``--env NAME`` / ``CANARY_ENV`` selects ``configs/environments/NAME.yaml``; :mod:`canary.settings` turns the
name into the namespace (topic prefix ``NAME.``, keys and pointer caches under ``<home>/envs/NAME``, audit
and reports under ``reports/canary/NAME``), and this module reads the file:

.. code-block:: yaml

    description: "production: what users see"
    weight: 0.05                 # default candidate weight of `canary start` here (a plan's first step wins)
    slo: {p95_ms: 1000}          # merged over every candidate's slo section
    rollout: {...}               # replaces every candidate's plan (null: no plan here)
    requires_passed_in: staging  # a preset may start here only after the same preset hash was promoted there
    alerts: [...]                # webhooks (canary.alerts): public addresses only unless allowed below
    alerts_allow_private: false  # true: webhooks may reach any address (loopback, private …: test set-ups)

:func:`apply_environment` produces the candidate a start command carries: the preset with the overrides
applied, validated again as a whole preset, and stamped with the environment and the preset's own hash
(``environment: {name, preset_hash}``), so every reader — and a later environment's promotion check —
knows which file it came from.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from canary.config.addresses import AddressPolicy, IPNetwork, describe, parse_address, redacted_url
from canary.config.presets import Preset, PresetValidationError
from canary.config.yamlfile import read_yaml
from canary.core.validation import NO_VALUE, Collector, FieldError, Section, kind, show
from canary.errors import ConfigError
from canary.settings import ENV_NAME

ENV_NAME_HINT: Final = "must be lower-case letters, digits, '_' or '-', starting with a letter (at most 32)"


class EnvironmentError_(ConfigError):
    """An environment file that does not load, or a name without a file."""


@dataclass(frozen=True, slots=True)
class AlertTarget:
    """One webhook (see canary.alerts): where, in which format, for which events, signed with which secret."""

    url: str
    format: str  # slack | json
    events: tuple[str, ...]
    secret_env: str | None = None  # environment variable holding the HMAC secret (json format)
    timeout_s: float = 5.0
    # Which non-public addresses it may reach (canary.config.addresses); public ones only by default.
    policy: AddressPolicy = field(default_factory=AddressPolicy)


@dataclass(frozen=True, slots=True)
class Environment:
    name: str
    description: str = ""
    weight: float | None = None
    slo: Mapping[str, Any] | None = None
    rollout: Mapping[str, Any] | None = None
    replaces_rollout: bool = False  # `rollout:` present (a mapping, or null to remove plans here)
    requires_passed_in: str | None = None
    alerts: tuple[AlertTarget, ...] = ()
    source: str | None = None
    alerts_allow_private: bool = False


_ENV_VAR: Final = re.compile(r"CANARY_ALERT_[A-Z0-9_]+")  # read at the settings boundary (Settings.alert_secrets)
ALERT_EVENTS: Final = ("start", "step", "pause", "inconclusive", "rollback", "promote", "resume", "abort")
ALERT_FORMATS: Final = ("slack", "json")


def environment_names(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []


def load_environment(directory: Path, name: str) -> Environment:
    """``directory/NAME.yaml``, validated; raises EnvironmentError_ naming file, field, value and reason."""
    if not ENV_NAME.fullmatch(name):
        raise EnvironmentError_(f"environment {name!r}: {ENV_NAME_HINT}")
    path = directory / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(environment_names(directory)) or "none"
        raise EnvironmentError_(f"unknown environment '{name}': no {path} (known: {known})")
    data, error = read_yaml(path, str(path))
    if error is not None:
        raise EnvironmentError_(str(error))
    out = Collector(str(path))
    if data is NO_VALUE or data is None:
        data = {}
    root = Section(out, "", data)
    env = _parse(root, name, str(path))
    root.close()
    if env.requires_passed_in == name:
        out.add("requires_passed_in", name, "an environment cannot require itself")
    elif env.requires_passed_in is not None and not (directory / f"{env.requires_passed_in}.yaml").is_file():
        out.add("requires_passed_in", env.requires_passed_in, f"no such environment in {directory}")
    if out.errors:
        raise EnvironmentError_("; ".join(str(e) for e in out.errors))
    return env


def _parse(root: Section, name: str, source: str) -> Environment:
    description = root.string("description", required=False)
    weight = None
    if root.take("weight") is not NO_VALUE:
        weight = root.number("weight", low=0, high=1)
        if weight == 0:
            root.out.add("weight", weight, "must be above 0")
    slo = _mapping(root, "slo")
    raw_rollout = root.take("rollout")
    replaces = raw_rollout is not NO_VALUE
    rollout = None
    if replaces and raw_rollout is not None:
        rollout = _mapping(root, "rollout")
    requires = None
    if root.take("requires_passed_in") not in (NO_VALUE, None):
        requires = root.string("requires_passed_in", pattern=ENV_NAME, hint=ENV_NAME_HINT) or None
    allow_private = _boolean(root, "alerts_allow_private")
    alerts = tuple(_alert(s, allow_private) for s in root.sections("alerts"))
    return Environment(
        name,
        description,
        weight,
        slo,
        rollout,
        replaces,
        requires,
        tuple(a for a in alerts if a),
        source,
        allow_private,
    )


def _mapping(s: Section, key: str) -> Mapping[str, Any] | None:
    value = s.take(key)
    if value is NO_VALUE or value is None:
        return None
    if not isinstance(value, Mapping):
        s.out.add(s.field(key), value, "must be a mapping")
        return None
    return dict(value)


def _boolean(s: Section, key: str) -> bool:
    value = s.take(key)
    if value is NO_VALUE or value is None:
        return False
    if not isinstance(value, bool):
        s.out.add(s.field(key), value, f"expected true or false, got {kind(value)}")
        return False
    return value


def _networks(s: Section, key: str) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for i, text in enumerate(s.strings(key)):
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=True))
        except ValueError as exc:
            hint = ""
            if "host bits set" in str(exc):
                hint = f" (did you mean {ipaddress.ip_network(text.strip(), strict=False)}?)"
            s.out.add(f"{s.field(key)}[{i}]", text, f"expected a network like 10.0.3.0/24 or fd00::/64: {exc}{hint}")
    return tuple(out)


def _alert(s: Section, allow_private: bool) -> AlertTarget | None:
    errors = len(s.out.errors)
    url = s.string("url", pattern=re.compile(r"https?://[^\s]+"), hint="must be an http:// or https:// URL")
    policy = AddressPolicy(allow_private, _networks(s, "allow_networks"))
    if url:
        _check_url(s, url, policy)
    fmt = s.string("format", choices=ALERT_FORMATS, required=False) or "json"
    events = s.strings("events") or ALERT_EVENTS
    for i, event in enumerate(events):
        if event not in ALERT_EVENTS:
            s.out.add(f"{s.field('events')}[{i}]", event, f"must be one of {', '.join(ALERT_EVENTS)}")
    secret_env = None
    if s.take("secret_env") not in (NO_VALUE, None):
        secret_env = s.string(
            "secret_env", pattern=re.compile(r"[A-Z_][A-Z0-9_]*"), hint="an environment variable name"
        )
    timeout = 5.0
    if s.take("timeout_s") is not NO_VALUE:
        timeout = s.number("timeout_s", low=0.1, high=60)
    s.close()
    if len(s.out.errors) > errors:
        return None
    return AlertTarget(url, fmt, tuple(events), secret_env, timeout, policy)


def _check_url(s: Section, url: str, policy: AddressPolicy) -> None:
    """A literal address is refused here, at load; a hostname is resolved and checked at `canary start` and
    at every delivery (canary.alerts.targets) — never here: loading a file does no network I/O."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        s.out.add(s.field("url"), redacted_url(url), f"invalid port: {exc}")
        return
    host = parts.hostname
    if not host:
        s.out.add(s.field("url"), redacted_url(url), "names no host")
        return
    address = parse_address(host)
    if address is None:
        return
    why = policy.refusal(address)
    if why is not None:
        s.out.add(
            s.field("url"),
            redacted_url(url),
            f"{host} is {describe(why)}, not allowed as a webhook target unless allowed explicitly "
            f"(alerts_allow_private: true, or {s.field('allow_networks')}: [{address}/{address.max_prefixlen}])",
        )


def apply_environment(preset: Preset, env: Environment) -> Preset:
    """The candidate as it starts in ``env``: overrides applied, validated again, stamped."""
    snapshot = preset.to_dict()
    base_hash = preset.content_hash
    if isinstance(snapshot.get("environment"), Mapping):  # already stamped (e.g. a snapshot re-applied)
        base_hash = str(snapshot["environment"].get("preset_hash", base_hash))
    if env.slo:
        snapshot["slo"] = {**snapshot["slo"], **env.slo}
    if env.replaces_rollout:
        if env.rollout is None:
            snapshot.pop("rollout", None)
        else:
            snapshot["rollout"] = dict(env.rollout)
    snapshot["environment"] = {"name": env.name, "preset_hash": base_hash}
    try:
        return Preset.from_dict(snapshot)
    except PresetValidationError as exc:
        problems = "; ".join(_rebase(e) for e in exc.errors)
        raise EnvironmentError_(
            f"{env.source or env.name}: applying environment '{env.name}' to preset {preset.name}: {problems}"
        ) from None


def _rebase(e: FieldError) -> str:
    value = "" if e.value is NO_VALUE else f" = {show(e.value)}"
    return f"{e.field}{value}: {e.reason}"
