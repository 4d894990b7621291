"""Synchronous "does this cluster answer?" checks, usable from the CLI and fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from aiokafka.admin import AIOKafkaAdminClient


async def _metadata(bootstrap: str, timeout: float) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_topics(), timeout)
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.close(), timeout)


def _any_port_open(bootstrap: str, timeout: float) -> bool:
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
                return True
        except (OSError, ValueError):
            continue
    return False


def metadata_answers(bootstrap: str, timeout: float = 3.0) -> bool:
    """True when a broker at ``bootstrap`` answers a metadata request within ``timeout`` seconds."""
    # A plain TCP check first keeps aiokafka from logging a connection error on every poll.
    if not _any_port_open(bootstrap, min(timeout, 1.0)):
        return False
    return asyncio.run(_metadata(bootstrap, timeout))
