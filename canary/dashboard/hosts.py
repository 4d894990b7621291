"""Which ``Host`` headers the dashboard answers: its own address, nothing else (DNS rebinding).

A page on ``http://evil.example`` whose name the attacker re-points at 127.0.0.1 is, for the browser, the
same origin as that name: its scripts may read whatever the dashboard at 127.0.0.1 answers. The only
thing that gives such a request away is its ``Host`` header, which names the attacker's domain. So every
request is answered only when its Host is the address the dashboard listens on (with its port):

* the bind address itself (``127.0.0.1:8080``, ``[::1]:8080``, ``10.0.0.5:8080``);
* ``localhost`` when the bind address is a loopback one;
* on a wildcard bind (``0.0.0.0``, ``::``) any IP literal — an address typed as a number cannot be
  re-pointed by DNS — and this machine's host names;
* names allowed explicitly (``canary dashboard --allowed-host NAME[:PORT]``, e.g. the name a TLS proxy in
  front of it is reached by; without a port any port matches).

Anything else gets ``421 Misdirected Request`` and nothing is served.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from canary.errors import ConfigError


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def split_host(header: str) -> tuple[str, int | None] | None:
    """(lower-case name or address without brackets, port or None) of a Host header; None if malformed."""
    text = header.strip().lower()
    if not text or any(c.isspace() or c in "/?#@\\" for c in text):
        return None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return None
        name, rest = text[1:close], text[close + 1 :]
        if _address(name) is None:
            return None
        if not rest:
            return name, None
        if not rest.startswith(":"):
            return None
        port_text = rest[1:]
    else:
        name, sep, port_text = text.rpartition(":")
        if not sep:
            name, port_text = text, ""
        elif ":" in name or not port_text:  # an unbracketed IPv6 address, or "host:"
            return None
    name = name.rstrip(".")  # "localhost." is the same name
    if not name:
        return None
    if not port_text:
        return name, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


def _machine_names() -> set[str]:
    names = set()
    for getter in (socket.gethostname, socket.getfqdn):
        try:
            name = getter().strip().lower().rstrip(".")
        except OSError:
            continue
        if name:
            names.add(name)
    return names


@dataclass
class AllowedHosts:
    bind: str
    port: int  # the listening port (set once known when --port 0 picked one)
    extra: tuple[tuple[str, int | None], ...] = ()
    names: set[str] = field(default_factory=set)  # names allowed on the listening port
    any_address: bool = False  # wildcard bind: every IP literal on the listening port

    @classmethod
    def of(cls, bind: str, port: int, extra: Iterable[str] = ()) -> AllowedHosts:
        """Raises ConfigError for an extra name that is not ``NAME`` or ``NAME:PORT``."""
        parsed = []
        for text in extra:
            item = split_host(text)
            if item is None:
                raise ConfigError(f"--allowed-host {text!r}: expected a host name or address, optionally with :PORT")
            parsed.append(item)
        bind_name = bind.strip().strip("[]").lower()
        address = _address(bind_name)
        names = {bind_name}
        wildcard = address is not None and address.is_unspecified
        if bind_name == "localhost":
            names |= {"127.0.0.1", "::1"}  # it binds whatever localhost resolves to
        elif address is not None and address.is_loopback:
            names.add("localhost")
        if wildcard:
            names |= {"localhost"} | _machine_names()
        return cls(bind_name, port, tuple(parsed), names, wildcard)

    def allows(self, header: str | None) -> bool:
        if header is None:
            return False
        parsed = split_host(header)
        if parsed is None:
            return False
        name, port = parsed
        for extra_name, extra_port in self.extra:
            if name == extra_name and (extra_port is None or port == extra_port):
                return True
        if (port if port is not None else 80) != self.port:
            return False
        if name in self.names:
            return True
        return self.any_address and _address(name) is not None
