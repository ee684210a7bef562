"""API keys for the reading and operating endpoints (the webhook endpoint uses its signature instead)."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any, TypeVar

from flask import request

from service.api.container import container
from service.domain.errors import PlanbridgeError

F = TypeVar("F", bound=Callable[..., Any])


class Unauthorized(PlanbridgeError):
    """No valid API key or bearer token came with the request."""

    code = "unauthorized"


def presented_key() -> str | None:
    """Return the key sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("X-API-Key")


def key_is_valid(key: str | None, keys: tuple[str, ...]) -> bool:
    """Compare in constant time against every configured key."""
    if not key:
        return False
    found = False
    for candidate in keys:
        found |= hmac.compare_digest(key.encode(), candidate.encode())
    return found


def require_api_key(view: F) -> F:
    """Refuse the request with 401 unless it carries one of PLANBRIDGE_API_KEYS, and with 429 while its
    client address or key prefix is locked out after too many wrong keys (service.api.throttle)."""

    @functools.wraps(view)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        c = container()
        keys = c.settings.api_keys
        if not keys:
            raise Unauthorized("the operating API is off: PLANBRIDGE_API_KEYS is not set")
        key = presented_key()
        if not key:
            raise Unauthorized("a valid API key is required (Authorization: Bearer <key> or X-API-Key)")
        scopes = c.throttle.scopes(request.remote_addr, key)
        c.throttle.check(scopes, "api")
        if not key_is_valid(key, keys):
            c.throttle.failed(scopes, "api")
            raise Unauthorized("a valid API key is required (Authorization: Bearer <key> or X-API-Key)")
        return view(*args, **kwargs)

    return guarded  # type: ignore[return-value]
