"""Logging of the services: text or one JSON object per line, the deployment id on every line where one is
known, and Kafka client reconnect noise rate-limited.

The same ``logging.config.dictConfig`` dictionary configures the router (directly) and the worker (through
Faust/mode's ``Worker(logging_config=...)``, which otherwise installs its own colour handler on stdout and
replaces the root handlers), so both processes log the same way.

Deployment id: a context variable (:func:`deployment_context`) wins — the SLO agent sets it while it judges
one deployment's window —, else the process-wide provider (:func:`set_deployment_provider`: the router's
or worker's current deployment), else the line has ``deployment_id: null``.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.config
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(deployment_suffix)s: %(message)s"

# aiokafka logs every failed connection attempt of every client (about 1 MB/s per router with the broker
# down); these loggers' lines are rate-limited per message kind.
RATE_LIMITED_LOGGERS = (
    "aiokafka",
    "kafka",
    "canary.router.delivery",
    # Rejected records: anyone who may write a topic can append thousands (each is counted, audited or
    # dead-lettered; the log only needs to say it is happening).
    "canary.router.control",
    "canary.streams.rejected",
)
RATE_LIMIT_INTERVAL_S = 5.0

_deployment: contextvars.ContextVar[str | None] = contextvars.ContextVar("canary_deployment_id", default=None)
_provider: Callable[[], str | None] | None = None


def set_deployment_provider(provider: Callable[[], str | None] | None) -> None:
    """The deployment a line belongs to when no context says otherwise (the service's current one)."""
    global _provider
    _provider = provider


@contextlib.contextmanager
def deployment_context(deployment_id: str | None) -> Iterator[None]:
    token = _deployment.set(deployment_id)
    try:
        yield
    finally:
        _deployment.reset(token)


def current_deployment() -> str | None:
    dep = _deployment.get()
    if dep is not None:
        return dep
    if _provider is not None:
        try:
            return _provider()
        except Exception:  # a log line must never fail because the provider did
            return None
    return None


class DeploymentFilter(logging.Filter):
    """Stamps ``record.deployment_id`` (kept if the call passed one in ``extra``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        dep = getattr(record, "deployment_id", None) or current_deployment()
        record.deployment_id = dep
        record.deployment_suffix = f" [{dep}]" if dep else ""
        return True


class RateLimitFilter(logging.Filter):
    """At most one line per ``interval_s`` per (logger, message template) of the rate-limited loggers; the
    next line let through says how many were suppressed meanwhile."""

    def __init__(self, interval_s: float = RATE_LIMIT_INTERVAL_S, prefixes: tuple[str, ...] = RATE_LIMITED_LOGGERS):
        super().__init__()
        self.interval_s = interval_s
        self.prefixes = prefixes
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def _limited(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._limited(record.name):
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            record.msg = f"{record.msg} [{suppressed} similar line(s) suppressed in the last {self.interval_s:.0f} s]"
        record.suppressed = suppressed
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ms), level, logger, message, deployment_id; exc when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "deployment_id": getattr(record, "deployment_id", None),
        }
        suppressed = getattr(record, "suppressed", 0)
        if suppressed:
            entry["suppressed"] = suppressed
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a message argument that is not JSON-serializable still yields a parseable line.
        return json.dumps(entry, ensure_ascii=False, default=str)


def logging_config(log_format: LogFormat, level: str = "WARNING", canary_level: str = "INFO") -> dict[str, Any]:
    """The dictConfig of a service process (stderr, one handler, both filters)."""
    formatter: dict[str, Any] = {"()": f"{__name__}.JsonFormatter"} if log_format == "json" else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "deployment": {"()": f"{__name__}.DeploymentFilter"},
            "rate_limit": {"()": f"{__name__}.RateLimitFilter"},
        },
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["rate_limit", "deployment"],
            }
        },
        "loggers": {"canary": {"level": canary_level}, "router": {"level": canary_level}},
        "root": {"level": level, "handlers": ["default"]},
    }


def configure_logging(log_format: LogFormat, level: str = "WARNING") -> None:
    """Configure this process's logging (the router; the worker hands :func:`logging_config` to Faust)."""
    logging.config.dictConfig(logging_config(log_format, level))
    # warnings.warn output and uncaught exceptions (main thread or any other, e.g. a Faust consumer thread
    # dying at shutdown) would otherwise bypass the formatter and break one-JSON-object-per-line.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    logging.getLogger("canary.uncaught").critical("uncaught exception: %r", exc, exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("canary.uncaught").error(
        "uncaught exception in thread %s: %r",
        name,
        args.exc_value,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def parse_log_format(text: str, source: str) -> LogFormat:
    value = text.strip().lower()
    for fmt in LOG_FORMATS:
        if value == fmt:
            return fmt
    from canary.errors import ConfigError

    raise ConfigError(f"{source} = {text!r}: must be one of {', '.join(LOG_FORMATS)}")


def emit_error_line(message: str) -> None:
    """A fatal error as the last log line of a service that logs JSON (instead of plain stderr text)."""
    print(
        JsonFormatter().format(
            logging.makeLogRecord(
                {"name": "canary", "levelname": "CRITICAL", "msg": message, "deployment_id": current_deployment()}
            )
        ),
        file=sys.stderr,
    )
