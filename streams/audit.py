"""Audit sink: one JSON line per control or state event, in the spec's audit.log shape.

Honest: a control command is audited with ``success: false`` and an ``error_message`` when it was not
applied — rejected by verification (unsigned, unknown key, bad signature, expired, replayed, hash
mismatch, invalid preset; see ``canary.security.verify``) or refused by the deployment ledger (e.g. a start
while another canary runs). The outcome comes from the worker's registry, which folds the control topic
through :mod:`canary.control` exactly as the routers do; the line itself is :func:`canary.control.audit.outcome_event`.

Lossless: each line is written and fsynced before the agent acknowledges its event. A write that fails
(disk full, read-only file system, I/O error) is undone (the file is truncated back to where the line
started) and retried with backoff, for as long as it takes: :meth:`AuditLog.append_durably` returns only
once the line is on disk, so the agent holds its offset, says loudly why it is stuck, and resumes when the
disk recovers. A torn last line left by a crash (or a truncation that itself failed) is repaired when the
log is opened or before the next write: completed with its newline if it is a whole event, cut off if not
(its event was never acknowledged, so it is redelivered). Duplicates (redelivery after a crash) are dropped
by ``event_id``, rebuilt from the file at start-up, so a crash and restart neither loses nor repeats a line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from canary.backoff import Backoff
from canary.core import wire

log = logging.getLogger("canary.streams.audit")


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    return f"{name} {exc.strerror or exc}".strip()


class AuditLog:
    def __init__(
        self,
        path: Path,
        *,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 5.0,
        report_every_s: float = 30.0,
        on_write_failure: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.report_every_s = report_every_s
        self.invalid_lines = 0  # unparseable complete lines found at start-up (left as they are)
        self.write_failures = 0  # failed attempts (each retried): a metric
        self.on_write_failure = on_write_failure
        self.stuck_since: float | None = None  # monotonic time of the first failure of the pending line
        self.repairs: list[str] = []
        self._seen: set[str] = set()
        self._tail_clean = False
        self._lock = asyncio.Lock()
        self._load_ids()
        try:
            self._repair_tail()
        except OSError as exc:  # e.g. a read-only file system: repaired before the next write instead
            log.error(
                "audit log %s: cannot repair its last line yet (%s); will retry before writing", path, _describe(exc)
            )

    # -- start-up ---------------------------------------------------------------------------------------------
    def _load_ids(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        *complete, _torn = data.split(b"\n")
        for line in complete:
            if not line.strip():
                continue
            try:
                self._seen.add(str(wire.decode_object(line, wire.AUDIT_LINE)["event_id"]))
            except (wire.Rejected, KeyError):
                self.invalid_lines += 1
        if self.invalid_lines:
            log.warning("audit log %s: %d unparseable line(s) kept as they are", self.path, self.invalid_lines)

    def _repair_tail(self, fd: int | None = None) -> None:
        """Make the file end with a newline: complete a whole last event, cut off a partial one."""
        if self._tail_clean:
            return
        own = fd is None
        if fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
            except FileNotFoundError:
                self._tail_clean = True
                return
        try:
            size = os.fstat(fd).st_size
            if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
                self._tail_clean = True
                return
            start = size
            while start > 0:  # find the last newline, reading backwards
                chunk_start = max(0, start - 65536)
                chunk = os.pread(fd, start - chunk_start, chunk_start)
                i = chunk.rfind(b"\n")
                if i >= 0:
                    start = chunk_start + i + 1
                    break
                start = chunk_start
            tail = os.pread(fd, size - start, start)
            try:
                event_id = wire.decode_object(tail, wire.AUDIT_LINE)["event_id"]
            except (wire.Rejected, KeyError):
                event_id = None
            if isinstance(event_id, str):
                os.write(fd, b"\n")
                os.fsync(fd)
                self._seen.add(event_id)
                note = f"completed a last line without its newline ({event_id})"
            else:
                os.ftruncate(fd, start)
                os.fsync(fd)
                note = f"cut off a torn partial last line ({size - start} bytes; its event is redelivered)"
            self.repairs.append(note)
            log.warning("audit log %s: %s", self.path, note)
            self._tail_clean = True
        finally:
            if own:
                os.close(fd)

    # -- writing ------------------------------------------------------------------------------------------------
    def __contains__(self, event_id: str) -> bool:
        return event_id in self._seen

    @staticmethod
    def _line(event: dict[str, Any]) -> bytes:
        return (json.dumps(event, ensure_ascii=False, sort_keys=False) + "\n").encode()

    def _write_line(self, line: bytes) -> None:
        """Append one line and fsync it, or leave the file as it was and raise the OSError."""
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            self._repair_tail(fd)
            start = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            except OSError:
                try:  # undo a partial write so the file never keeps half a line
                    os.ftruncate(fd, start)
                    os.fsync(fd)
                except OSError:
                    self._tail_clean = False  # repaired before the next attempt
                raise
        finally:
            os.close(fd)
        if created:
            with contextlib.suppress(OSError):  # make the new directory entry durable too
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)

    def append(self, event: dict[str, Any]) -> bool:
        """One attempt: durably append ``event`` unless its id was already written (returns whether it was
        written). An OSError leaves the file as it was and propagates."""
        event_id = event["event_id"]
        if event_id in self._seen:
            return False
        self._write_line(self._line(event))
        self._seen.add(event_id)
        return True

    async def append_durably(self, event: dict[str, Any]) -> bool:
        """Like :meth:`append`, but retries a failing write with backoff until it succeeds — never skips.
        The caller (an agent) holds its event meanwhile, so its offset is not committed."""
        async with self._lock:
            event_id = event["event_id"]
            if event_id in self._seen:
                return False
            line = self._line(event)
            pace = Backoff(self.retry_initial_s, self.retry_max_s)
            attempts = 0
            first_failure: float | None = None
            last_report = 0.0
            while True:
                try:
                    await asyncio.to_thread(self._write_line, line)
                except OSError as exc:
                    attempts += 1
                    self.write_failures += 1
                    if self.on_write_failure is not None:
                        self.on_write_failure()
                    now = time.monotonic()
                    if first_failure is None:
                        first_failure = last_report = now
                        self.stuck_since = now
                        log.error(
                            "AUDIT LOG STUCK: cannot write %s (%s). Holding event %s (not acknowledged) and "
                            "retrying until the disk recovers; nothing is skipped",
                            self.path,
                            _describe(exc),
                            event_id,
                        )
                    elif now - last_report >= self.report_every_s:
                        last_report = now
                        log.error(
                            "AUDIT LOG STILL STUCK for %.0f s (%d attempts): %s: %s; holding event %s",
                            now - first_failure,
                            attempts,
                            self.path,
                            _describe(exc),
                            event_id,
                        )
                    await pace.wait()
                    continue
                break
            if first_failure is not None:
                log.warning(
                    "audit log %s writable again after %.1f s (%d failed attempts); wrote %s",
                    self.path,
                    time.monotonic() - first_failure,
                    attempts,
                    event_id,
                )
            self.stuck_since = None
            self._seen.add(event_id)
            return True
