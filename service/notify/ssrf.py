"""The outbound guard: a subscriber's URL may only reach public addresses, unless an allow-list admits it.

A URL is checked when it is registered and again before every delivery (DNS may have changed). The
check resolves the host once and returns the address to connect to, so the request goes to exactly
the address that was checked (no second lookup an attacker could answer differently: DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from service.domain.errors import RuleViolation

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
NAT64 = ipaddress.ip_network("64:ff9b::/96")
DEFAULT_PORTS = {"http": 80, "https": 443}


class OutboundRefused(RuleViolation):
    """A URL planbridge will not send to: not http(s), or its host is not a public address."""

    code = "url-refused"


@dataclass(frozen=True)
class Target:
    """Where one request goes: the URL's parts and the one checked address to connect to."""

    scheme: str
    host: str
    port: int
    path: str
    address: str

    @property
    def host_header(self) -> str:
        """Return the Host header value for the URL's host (bracketed for IPv6, with a non-default port)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"


def system_resolver(host: str, port: int) -> list[str]:
    """Return every address the system resolver gives for host, in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _embedded(ip: IPAddress) -> list[IPAddress]:
    """Return the IPv4 addresses an IPv6 address carries (mapped, NAT64, 6to4, Teredo), then itself."""
    inner: list[IPAddress] = []
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            inner.append(ip.ipv4_mapped)
        if ip in NAT64:
            inner.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour:
            inner.append(ip.sixtofour)
        if ip.teredo:
            inner.append(ip.teredo[1])
    return [*inner, ip]


def blocked_kind(ip: IPAddress) -> str | None:
    """Return why an address is not public (e.g. "loopback"), or None for a public address."""
    for candidate in _embedded(ip):
        kinds = (
            ("unspecified", candidate.is_unspecified),
            ("loopback", candidate.is_loopback),
            ("link-local", candidate.is_link_local),
            ("multicast", candidate.is_multicast),
            ("reserved", candidate.is_reserved),
            ("private", candidate.is_private),
            ("non-global", not candidate.is_global),
        )
        for kind, hit in kinds:
            if hit:
                return kind if candidate == ip else f"{kind} (as {candidate} inside {ip})"
    return None


class OutboundGuard:
    """Checks URLs against the public-address rule and the allow-list (`PLANBRIDGE_OUTBOUND_ALLOW`)."""

    def __init__(self, allow: Iterable[str] = (), resolver: Resolver = system_resolver) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.hosts: set[str] = set()
        for entry in allow:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry.lower().rstrip("."))
        self.resolver = resolver

    def _allowed(self, ip: IPAddress) -> bool:
        # The literal address must sit in an allowed network: 127.0.0.0/8 admits 127.0.0.1, not ::ffff:127.0.0.1.
        return any(ip.version == net.version and ip in net for net in self.networks)

    def _addresses(self, host: str, port: int) -> tuple[bool, list[IPAddress]]:
        """Return whether host is a name, and its addresses (the literal itself, or resolved once)."""
        try:
            return False, [ipaddress.ip_address(host)]
        except ValueError:
            pass
        try:
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in self.resolver(host, port)]
        except (OSError, UnicodeError, ValueError):
            addresses = []
        if not addresses:
            raise OutboundRefused(f"host {host} does not resolve")
        return True, addresses

    def check(self, url: str) -> Target:
        """Return the target to connect to, or raise OutboundRefused naming the reason."""
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise OutboundRefused(f"only http and https URLs are allowed, not {scheme or 'a relative URL'!r}")
        if parts.username is not None or parts.password is not None:
            raise OutboundRefused("URLs with credentials are not allowed; the signature authenticates planbridge")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise OutboundRefused("the URL has no host")
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError:
            raise OutboundRefused("the URL's port is not a number in range") from None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        named, addresses = self._addresses(host, port)
        if not (named and host in self.hosts):
            for ip in addresses:
                kind = blocked_kind(ip)
                if kind and not self._allowed(ip):
                    where = f"host {host} resolves to {ip}, " if named else f"{ip} is "
                    article = "an" if kind[0] in "aeiou" else "a"
                    raise OutboundRefused(f"{where}{article} {kind} address, which is not allowed", address=str(ip))
        return Target(scheme, host, port, path, str(addresses[0]))
