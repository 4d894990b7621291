"""Synchronous "does this cluster answer?" checks, usable from the CLI and fixtures."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from aiokafka.admin import AIOKafkaAdminClient

from canary.kafka.clients import Cluster, as_connection, client_kwargs


async def _metadata(cluster: Cluster, timeout: float) -> str | None:
    admin = AIOKafkaAdminClient(**client_kwargs(cluster), request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_topics(), timeout)
        return None
    except TimeoutError:
        return "no answer to a metadata request"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
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


def metadata_problem(cluster: Cluster, timeout: float = 3.0) -> str | None:
    """None when a broker of ``cluster`` answers a metadata request within ``timeout`` seconds, else why not
    (nothing listening, or the client's error, e.g. a failed SASL authentication)."""
    # A plain TCP check first keeps aiokafka from logging a connection error on every poll.
    if not _any_port_open(as_connection(cluster).bootstrap, min(timeout, 1.0)):
        return "nothing listens there"
    return asyncio.run(_metadata(cluster, timeout))


def metadata_answers(cluster: Cluster, timeout: float = 3.0) -> bool:
    """True when a broker of ``cluster`` answers a metadata request within ``timeout`` seconds."""
    return metadata_problem(cluster, timeout) is None
