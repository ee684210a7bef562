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

# Every block of the IANA IPv4 and IPv6 Special-Purpose Address Registries
# (https://www.iana.org/assignments/iana-ipv4-special-registry/,
# https://www.iana.org/assignments/iana-ipv6-special-registry/, as of 2025), carried here so the answer
# does not depend on the Python release (3.11's `is_global` takes 192.0.0.8 and 3fff::/20 for public).
# All are refused, the few IANA marks globally reachable included (anycast relays, AS112 sinks,
# ORCHIDv2, DETs): no team system's webhook endpoint lives there.
SPECIAL_PURPOSE: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private-use"),
    ("100.64.0.0/10", "shared address space"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private-use"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.31.196.0/24", "AS112"),
    ("192.52.193.0/24", "AMT"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private-use"),
    ("192.175.48.0/24", "AS112 direct delegation"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "limited broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("64:ff9b::/96", "IPv4-IPv6 translation"),
    ("64:ff9b:1::/48", "IPv4-IPv6 translation (local use)"),
    ("100::/64", "discard-only"),
    ("100:0:0:1::/64", "dummy IPv6 prefix"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("2620:4f:8000::/48", "AS112 direct delegation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing SIDs"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
)
_SPECIAL = tuple((ipaddress.ip_network(block), name) for block, name in SPECIAL_PURPOSE)


def special_purpose(ip: IPAddress) -> str | None:
    """Return the name of the IANA special-purpose block holding ip, or None."""
    return next((name for net, name in _SPECIAL if ip.version == net.version and ip in net), None)


class OutboundRefused(RuleViolation):
    """A URL planbridge will not send to: not http(s), or its host is not a public address."""

    code = "url-refused"
    title = "URL refused"  # the problem's title (the API's default for a RuleViolation is another type's)


def unreadable(url: str) -> str | None:
    """Return why a URL cannot be read as one (urlsplit cannot tell its parts, or an http(s) URL without a host
    or with a port that is not a number from 0 to 65535), or None. A URL read fine may still be refused."""
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:
        return str(exc)
    if parts.scheme.lower() not in DEFAULT_PORTS:
        return None  # refused for its scheme (`url-refused`), whatever the rest says
    if not (parts.hostname or "").rstrip("."):
        return "it has no host"
    try:
        parts.port  # noqa: B018 - reading it is the check: urlsplit raises for `:99999` or `:abc`
    except ValueError:
        return "its port is not a number from 0 to 65535"
    return None


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
        named = special_purpose(candidate)
        for kind, hit in (*kinds, (f"special-purpose ({named})", named is not None)):
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
        try:
            # urlsplit refuses some hosts itself: `[127.0.0.1]`, `[zz]`, an unclosed `[::1`
            parts = urlsplit(url.strip())
        except ValueError as exc:
            raise OutboundRefused(f"the URL cannot be read: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise OutboundRefused(f"only http and https URLs are allowed, not {scheme or 'a relative URL'!r}")
        if parts.username is not None or parts.password is not None:
            raise OutboundRefused("URLs with credentials are not allowed; the signature authenticates planbridge")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise OutboundRefused("the URL has no host")
        try:
            port = DEFAULT_PORTS[scheme] if parts.port is None else parts.port
        except ValueError:
            raise OutboundRefused("the URL's port is not a number in range") from None
        if port == 0:
            raise OutboundRefused("port 0 is not a port anything listens on")
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
