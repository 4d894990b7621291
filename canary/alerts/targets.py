"""Resolving webhook hosts so that only allowed addresses are ever connected to.

Every address a target resolves to is checked (:class:`canary.config.addresses.AddressPolicy`); one
non-public address refuses the whole target (a name resolving to a public and a private address is the
classic rebinding set-up). The check runs at ``canary start`` and again at every delivery, inside the
resolver the HTTP client connects through, so the address checked is the address connected to: a DNS
answer that changes between the check and the connection cannot redirect the request.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult

from canary.config.addresses import AddressPolicy, TargetRefused


async def resolve_checked(
    host: str, port: int, policy: AddressPolicy, family: int = socket.AF_UNSPEC
) -> list[tuple[int, int, str, tuple[Any, ...]]]:
    """Every address ``host`` resolves to — (family, proto, address, sockaddr) — once all are allowed.

    Literal addresses go through ``getaddrinfo`` too: it normalises spellings like ``2130706433`` or
    ``0x7f.1`` into the address a connection would really reach."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetRefused(host, None, "unresolved", f"{host} does not resolve ({exc})") from None
    found: list[tuple[int, int, str, tuple[Any, ...]]] = [
        (fam, proto, str(sockaddr[0]), tuple(sockaddr)) for fam, _, proto, _, sockaddr in infos
    ]
    policy.check(host, [a for _, _, a, _ in found])
    return found


class CheckingResolver(AbstractResolver):
    """aiohttp's resolver for one target's deliveries: resolves, refuses the host unless every address is
    allowed, and hands aiohttp exactly the addresses it checked (so the connection goes to one of them)."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await resolve_checked(host, port, self.policy, family)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=int(sockaddr[1]),
                family=fam,
                proto=proto,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for fam, proto, address, sockaddr in found
        ]

    async def close(self) -> None:
        return None
