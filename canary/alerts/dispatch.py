"""Delivering alerts: a bounded queue, off the decision path; retries with backoff; every attempt audited.

The worker's audit agent only *submits* (a non-blocking put); a delivery task posts to each target with
aiohttp, retrying 5xx, 429, timeouts and connection errors with exponential backoff, never a 4xx. A slow
or dead receiver therefore costs the pipeline nothing: rollbacks are issued by the SLO agent, which never
waits on an alert. If the queue is full (a receiver down for very long), the oldest alert is dropped —
audited as such, never silently.

Each target has its own HTTP session whose resolver admits only the addresses its environment allows
(canary.alerts.targets): a refused address is a final failure, audited with the reason, never retried.
Redirects are not followed (a receiver's redirect must not lead the worker to an address nobody checked).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

from canary.alerts.events import AlertEvent
from canary.alerts.payloads import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    json_payload,
    sign,
    slack_payload,
)
from canary.alerts.targets import CheckingResolver, resolve_checked
from canary.backoff import Backoff
from canary.config.addresses import Refusal, TargetRefused, Unresolved, parse_address
from canary.config.addresses import redacted_url as redacted
from canary.core.models import iso_ms

if TYPE_CHECKING:  # at run time too would be a cycle: canary.config.environments reads canary.config.addresses
    from canary.config.environments import AlertTarget

log = logging.getLogger("canary.alerts")

AuditSink = Callable[[dict[str, Any]], Coroutine[Any, Any, bool]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    event: AlertEvent
    target: int  # index in the environment's alerts list
    url: str  # redacted
    attempt: int
    status: int | None
    error: str | None
    success: bool
    final: bool  # no further attempt follows
    at_ms: int
    refused: Refusal | Unresolved | None = None  # why the target's address is not allowed

    def audit_event(self) -> dict[str, Any]:
        return {
            "event_id": f"{self.event.event_id}:{self.target}:{self.attempt}",
            "event_type": "alert_delivery",
            "timestamp": iso_ms(self.at_ms),
            "deployment_id": self.event.deployment_id,
            "user_id": "alerts",
            "config_name": None,
            "details": {
                "action": "deliver_alert",
                "alert": self.event.event_id,
                "kind": self.event.kind,
                "target": self.target,
                "url": self.url,
                "attempt": self.attempt,
                "status": self.status,
                "final": self.final,
                "refused": self.refused,
            },
            "success": self.success,
            "error_message": self.error,
        }


class AlertDispatcher:
    def __init__(
        self,
        targets: Sequence[AlertTarget],
        secrets: Mapping[str, str],
        audit: AuditSink | None = None,
        *,
        max_attempts: int = 5,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 8.0,
        queue_size: int = 1000,
        concurrency: int = 8,
    ) -> None:
        self.targets = tuple(targets)
        self.secrets = dict(secrets)
        self.audit = audit
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._queue: asyncio.Queue[AlertEvent] = asyncio.Queue(maxsize=queue_size)
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.attempts: list[DeliveryAttempt] = []  # the last ones, for status and tests
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def submit(self, event: AlertEvent) -> None:
        """Never blocks, never raises: the caller is on the decision or audit path."""
        if not any(event.kind in t.events for t in self.targets):
            return
        if self._queue.full():
            oldest = self._queue.get_nowait()
            self.dropped += 1
            log.error("alert queue full: dropped %s (receivers down for long?)", oldest.event_id)
            self._record(DeliveryAttempt(oldest, -1, "-", 0, None, "dropped: alert queue full", False, True, now_ms()))
        self._queue.put_nowait(event)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None)
        async with contextlib.AsyncExitStack() as stack:
            sessions = []
            for target in self.targets:
                # No DNS cache: every delivery resolves and checks afresh (a cached answer could outlive a
                # change of what the name points to, in either direction).
                connector = aiohttp.TCPConnector(resolver=CheckingResolver(target.policy), use_dns_cache=False)
                session = aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=False)
                sessions.append(await stack.enter_async_context(session))
            try:
                while True:
                    event = await self._queue.get()
                    for index, target in enumerate(self.targets):
                        if event.kind in target.events:
                            task = asyncio.create_task(self._deliver(sessions[index], event, index, target))
                            self._tasks.add(task)
                            task.add_done_callback(self._tasks.discard)
            finally:
                for task in list(self._tasks):
                    task.cancel()
                with contextlib.suppress(Exception):
                    await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _deliver(
        self, session: aiohttp.ClientSession, event: AlertEvent, index: int, target: AlertTarget
    ) -> None:
        async with self._slots:
            pace = Backoff(self.backoff_initial_s, self.backoff_max_s)
            for attempt in range(1, self.max_attempts + 1):
                refused: Refusal | Unresolved | None = None
                try:
                    status, error = await self._post(session, event, target)
                except TargetRefused as exc:
                    status, error, refused = None, f"refused: {exc}", exc.refusal
                ok = status is not None and 200 <= status < 300
                retryable = not ok and refused is None and (status is None or status >= 500 or status == 429)
                final = ok or not retryable or attempt == self.max_attempts
                self._record(
                    DeliveryAttempt(
                        event, index, redacted(target.url), attempt, status, error, ok, final, now_ms(), refused
                    )
                )
                if final:
                    if ok:
                        self.delivered += 1
                    else:
                        self.failed += 1
                        log.error("alert %s to %s failed for good: %s", event.event_id, redacted(target.url), error)
                    return
                await pace.wait()

    async def _post(
        self, session: aiohttp.ClientSession, event: AlertEvent, target: AlertTarget
    ) -> tuple[int | None, str | None]:
        sent = now_ms()
        headers = {"Content-Type": "application/json", EVENT_ID_HEADER: event.event_id}
        if target.format == "slack":
            body = slack_payload(event)
        else:
            body = json_payload(event, sent)
            secret = self.secrets.get(target.secret_env) if target.secret_env else None
            if secret:
                headers[TIMESTAMP_HEADER] = str(sent)
                headers[SIGNATURE_HEADER] = sign(secret, sent, body)
        parts = urlsplit(target.url)
        host = parts.hostname or ""
        if parse_address(host) is not None:
            # aiohttp connects to a literal address without asking the resolver: check it here.
            await resolve_checked(host, parts.port or 0, target.policy)
        try:
            async with session.post(
                target.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=target.timeout_s),
                allow_redirects=False,
            ) as response:
                await response.read()
                if response.status >= 300:
                    return response.status, f"HTTP {response.status}"
                return response.status, None
        except TimeoutError:
            return None, f"timeout after {target.timeout_s:g} s"
        except aiohttp.ClientError as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def _record(self, attempt: DeliveryAttempt) -> None:
        self.attempts = [*self.attempts[-199:], attempt]
        if self.audit is not None:
            task = asyncio.create_task(self.audit(attempt.audit_event()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def check_reachable(targets: Sequence[AlertTarget], timeout_s: float = 3.0) -> list[str]:
    """Problems with the environment's webhooks, checked before a start: every address the host resolves to
    must be allowed, and a TCP connection to one of those checked addresses must open."""
    problems = []
    for i, target in enumerate(targets):
        parts = urlsplit(target.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            found = await asyncio.wait_for(resolve_checked(host, port, target.policy), timeout_s)
        except TargetRefused as exc:
            problems.append(f"alerts[{i}].url {redacted(target.url)}: refused ({exc})")
            continue
        except TimeoutError:
            problems.append(f"alerts[{i}].url {redacted(target.url)}: {host} did not resolve within {timeout_s:g} s")
            continue
        failure: BaseException | None = None
        for _, _, address, _ in found:  # only addresses that were checked, never the name again
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout_s)
            except (OSError, TimeoutError) as exc:
                failure = exc
                continue
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            break
        else:
            why = (str(failure) or type(failure).__name__) if failure is not None else "no address"
            problems.append(f"alerts[{i}].url {redacted(target.url)}: unreachable ({why})")
    return problems
