"""Which IP addresses an outbound request canary makes (a webhook delivery) may reach.

A webhook URL comes from an environment file, and its delivery is a request the worker makes from inside
the deployment's network, so a URL naming ``169.254.169.254`` (cloud metadata), ``127.0.0.1`` (the worker's
own ports) or a private range would let whoever edits that file, or controls the DNS of a hostname in it,
reach services nobody meant to expose (SSRF). :func:`classify` says why an address is not public;
:class:`AddressPolicy` is what an environment file allows beyond public addresses
(``alerts_allow_private: true``, or a target's ``allow_networks``). Resolving and connecting are
``canary.alerts.targets``' job; this module does no I/O, so configuration loading can use it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from canary.errors import CanaryError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Refusal = Literal["unspecified", "loopback", "link_local", "private", "shared", "multicast", "non_public"]
REFUSALS: Final[tuple[Refusal, ...]] = (
    "unspecified",
    "loopback",
    "link_local",
    "private",
    "shared",
    "multicast",
    "non_public",
)
_WHAT: Final[dict[Refusal, str]] = {
    "unspecified": "an unspecified address",
    "loopback": "a loopback address (this machine)",
    "link_local": "a link-local address (cloud metadata services live there)",
    "private": "a private address (RFC 1918 / IPv6 ULA)",
    "shared": "a carrier-grade NAT address (100.64.0.0/10)",
    "multicast": "a multicast address",
    "non_public": "a reserved, documentation or otherwise non-public address",
}
_PRIVATE: Final = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_SHARED: Final = ipaddress.ip_network("100.64.0.0/10")


Unresolved = Literal["unresolved"]


def redacted_url(url: str) -> str:
    """Webhook URLs carry secrets in their path (Slack) or query: logs, audit and errors show the host only."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ":?"
    return f"{parts.scheme}://{host}{port}" + ("/…" if parts.path not in ("", "/") or parts.query else "")


def describe(refusal: Refusal) -> str:
    return _WHAT[refusal]


class TargetRefused(CanaryError):
    """A webhook target whose address the environment does not allow (or that does not resolve)."""

    def __init__(self, host: str, address: str | None, refusal: Refusal | Unresolved, message: str) -> None:
        super().__init__(message)
        self.host = host
        self.address = address
        self.refusal = refusal


def classify(address: IPAddress) -> Refusal | None:
    """Why ``address`` is not a public unicast address, or None if it is one."""
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address dressed as IPv6 (::ffff:127.0.0.1, 6to4, Teredo) reaches the IPv4 host it embeds.
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None:
            return classify(embedded)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link_local"
    if address.is_multicast:
        return "multicast"
    if any(address in net for net in _PRIVATE if net.version == address.version):
        return "private"
    if address.version == 4 and address in _SHARED:
        return "shared"
    if not address.is_global:
        return "non_public"
    return None


def parse_address(text: str) -> IPAddress | None:
    """The IP address ``text`` spells (a zone id like ``%eth0`` ignored), or None for a hostname."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """What one target may reach beyond public addresses."""

    allow_private: bool = False
    allow_networks: tuple[IPNetwork, ...] = ()

    def refusal(self, address: IPAddress) -> Refusal | None:
        """None when ``address`` may be reached, else why not."""
        why = classify(address)
        if why is None or self.allow_private:
            return None
        if any(address.version == net.version and address in net for net in self.allow_networks):
            return None
        return why

    def check(self, host: str, addresses: Sequence[str]) -> None:
        """Raises TargetRefused unless every one of ``addresses`` (what ``host`` resolved to) may be reached."""
        if not addresses:
            raise TargetRefused(host, None, "unresolved", f"{host} resolves to no address")
        for text in addresses:
            address = parse_address(text)
            if address is None:  # getaddrinfo returns numeric hosts only; anything else is not checkable
                raise TargetRefused(host, text, "non_public", f"{host} resolves to {text!r}, not an IP address")
            why = self.refusal(address)
            if why is not None:
                shown = host if host == text else f"{host} resolves to {text}:"
                raise TargetRefused(
                    host,
                    text,
                    why,
                    f"{shown} {_WHAT[why]} is not allowed as a webhook target "
                    "(allow it with alerts_allow_private: true or the target's allow_networks)",
                )
