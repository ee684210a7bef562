"""Throttling of failed API keys and console sign-ins, per client address and per key prefix.

PLANBRIDGE_AUTH_MAX_FAILURES wrong keys within PLANBRIDGE_AUTH_LOCKOUT_SECONDS from one client address
(an IPv6 client's /64), or starting with the same 8 characters, lock that address or prefix out for
PLANBRIDGE_AUTH_LOCKOUT_SECONDS: every key it presents is answered `429` with `Retry-After`, the right
one included (otherwise a guess could still be told right from wrong). The counts live in the
database (service.store.security), so every gunicorn process sees the same ones.

A request with a key pays one primary-key read (no write lock on SQLite); only a wrong key writes.
A process that has seen a lockout remembers it until it ends and answers without reading. Requests
with no key at all are answered 401 and not counted; the signed-webhook intake uses no key and never
comes here.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import threading
import time
from collections import Counter
from collections.abc import Callable

from sqlalchemy.engine import Engine

from service.domain.errors import PlanbridgeError
from service.settings import Settings
from service.store.security import AuthFailures

PREFIX_CHARS = 8  # a key prefix is its first 8 characters (keys have 16 or more)
PRUNE_EVERY = 60.0  # seconds between deletions of finished counts, per process
REMEMBERED = 10_000  # lockouts a process remembers at most


class Throttled(PlanbridgeError):
    """Too many failed keys from this client address or with this key prefix: wait `retry_after` seconds."""

    code = "too-many-requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.retry_after = retry_after


def address_scope(address: str | None) -> str:
    """Return the scope of a client address: the address itself, or an IPv6 client's /64."""
    try:
        ip = ipaddress.ip_address((address or "").split("%")[0])
    except ValueError:
        return f"address:{(address or 'unknown')[:64]}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"address:{ip.ipv4_mapped}"
        return f"address:{ipaddress.IPv6Network((ip, 64), strict=False)}"
    return f"address:{ip}"


class AuthThrottle:
    """Checks and counts failed keys for one app; counters of what it refused, for /metrics."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.failures = AuthFailures(engine)
        self.limit = settings.auth_max_failures
        self.window = settings.auth_lockout_seconds
        # Prefixes are kept as digests keyed by the configured keys, so the table holds no key material.
        self._prefix_key = hashlib.sha256("\n".join(sorted(settings.api_keys)).encode()).digest()
        self.clock = clock
        self._lock = threading.Lock()
        self._blocked: dict[str, float] = {}  # scope -> until when, as this process last learnt it
        self._pruned = 0.0
        self.refused: Counter[tuple[str, str]] = Counter()  # (via, "invalid-key" | "throttled") -> count

    @property
    def enabled(self) -> bool:
        """Tell whether failures are throttled (PLANBRIDGE_AUTH_MAX_FAILURES > 0)."""
        return self.limit > 0

    def scopes(self, address: str | None, key: str) -> list[str]:
        """Return the scopes a presented key counts against: the client's address and the key's prefix."""
        digest = hmac.new(self._prefix_key, key[:PREFIX_CHARS].encode(), hashlib.sha256).hexdigest()[:32]
        return [address_scope(address), f"key:{digest}"]

    def _count(self, via: str, reason: str) -> None:
        with self._lock:
            self.refused[(via, reason)] += 1

    def _refuse(self, via: str, until: float, now: float) -> Throttled:
        self._count(via, "throttled")
        wait = max(1, math.ceil(until - now))
        return Throttled(f"too many failed keys from this client or with this key prefix; retry in {wait} s", wait)

    def check(self, scopes: list[str], via: str) -> None:
        """Raise Throttled when any of the scopes is locked out (what this process knows first, then the database)."""
        if not self.enabled:
            return
        now = self.clock()
        with self._lock:
            known = {s: u for s in scopes if (u := self._blocked.get(s, 0.0)) > now}
        blocked = known or self.failures.blocked(scopes, now)
        if blocked:
            self._remember(blocked, now)
            raise self._refuse(via, max(blocked.values()), now)

    def failed(self, scopes: list[str], via: str) -> None:
        """Count a wrong key against its scopes (a lockout begins when one reaches the limit)."""
        self._count(via, "invalid-key")
        if not self.enabled:
            return
        now = self.clock()
        self._remember(self.failures.record(scopes, now, self.limit, self.window), now)
        if now - self._pruned >= PRUNE_EVERY:
            self._pruned = now
            self.failures.prune(now, self.window)

    def _remember(self, blocked: dict[str, float], now: float) -> None:
        if not blocked:
            return
        with self._lock:
            if len(self._blocked) >= REMEMBERED:
                self._blocked = {s: u for s, u in self._blocked.items() if u > now}
                if len(self._blocked) >= REMEMBERED:
                    self._blocked.clear()
            for scope, until in blocked.items():
                self._blocked[scope] = max(self._blocked.get(scope, 0.0), until)

    def blocked_counts(self) -> dict[str, int]:
        """Return how many addresses and key prefixes are locked out now (read from the database)."""
        return self.failures.blocked_counts(self.clock()) if self.enabled else {}
