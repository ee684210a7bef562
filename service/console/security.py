"""Console sessions and CSRF: a signed session cookie holding a session id, an expiry, a key fingerprint and
the CSRF token (never the API key), and the synchronizer token check.

The session id is also recorded in the database at sign-in (service.store.security.ConsoleSessions, as
a digest) and deleted at sign-out: a session is live only while its row is, so signing out ends it for
every copy of the cookie and in every gunicorn process.

The cookie is signed with PLANBRIDGE_SESSION_SECRET; without it a random key is made per process, so
sessions end when the process restarts (and differ between gunicorn workers: set the secret there).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Any

from flask import Flask, Request, request
from flask.sessions import SecureCookieSessionInterface, SessionMixin

SESSION_SECONDS = 8 * 3600
COOKIE_NAME = "planbridge_console"
CSRF_FIELD = "csrf_token"


def new_token() -> str:
    """Return a fresh random token (session ids and CSRF tokens)."""
    return secrets.token_urlsafe(32)


def token_matches(expected: str | None, presented: str | None) -> bool:
    """Tell, in constant time, whether the presented CSRF token is the session's (both must be present)."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def key_fingerprint(key: str, secret: bytes) -> str:
    """Return a keyed fingerprint of an API key, so a session ends when its key is removed (the key is never kept)."""
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()[:32]


def session_is_live(data: dict[str, Any], fingerprints: set[str], now: float | None = None) -> bool:
    """Tell whether a session is signed in, unexpired, and opened with a key that is still configured."""
    expires = data.get("exp")
    if not data.get("sid") or not isinstance(expires, int | float):
        return False
    return (now if now is not None else time.time()) < expires and data.get("kfp") in fingerprints


def mask_mrn(mrn: str | None) -> str:
    """Mask an MRN, keeping a letters prefix and the last 3 characters: "MRN-800650" -> "MRN-•••650"."""
    if not mrn:
        return "•••"
    prefix_match = re.match(r"^[A-Za-z]+[-_ :]?", mrn)
    prefix = prefix_match.group(0) if prefix_match else ""
    rest = mrn[len(prefix) :]
    if len(rest) <= 4:
        return f"{prefix}•••"
    return f"{prefix}•••{rest[-3:]}"


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, marked Secure when the request came over HTTPS (or the public URL is)."""

    def __init__(self, https_public_url: bool) -> None:
        self.https_public_url = https_public_url

    def open_session(self, app: Flask, incoming: Request) -> SessionMixin | None:
        """Open the signed session on console pages only; elsewhere (the API, webhooks) there is none.

        The cookie's path is /console, so no other path is ever sent one; skipping the signer there
        saves ~5% of a webhook's CPU. Flask gives a path with no session a null one.
        """
        path = app.config["SESSION_COOKIE_PATH"]
        if incoming.path != path and not incoming.path.startswith(path + "/"):
            return None
        return super().open_session(app, incoming)

    def get_cookie_secure(self, app: Flask) -> bool:
        """Mark the cookie Secure for HTTPS requests."""
        current: Request = request
        return self.https_public_url or current.is_secure


def configure(app: Flask, secret: str | None, public_url: str) -> None:
    """Give the app its session key and cookie settings (HttpOnly, SameSite=Strict, path /console)."""
    app.secret_key = secret or secrets.token_hex(32)
    app.config.update(
        SESSION_COOKIE_NAME=COOKIE_NAME,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PATH="/console",
        PERMANENT_SESSION_LIFETIME=SESSION_SECONDS,
    )
    app.session_interface = ConsoleSessionInterface(public_url.startswith("https://"))
