"""Repositories of the console's sessions and of failed API keys: state every gunicorn process shares.

Each works on the engine in short transactions of its own (no unit of work: a sign-in, a sign-out or a
failed key is the whole of what the request writes). The one read on the API's hot path, "is this
client or key prefix blocked?", is a single primary-key lookup; on SQLite it runs on a bare connection
in autocommit, a WAL snapshot read that takes no write lock, so it never waits behind (or holds up) the
webhook intake's commits.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service.store.tables import AuthFailureRow, ConsoleSessionRow

_SESSIONS = ConsoleSessionRow.__table__
_FAILURES = AuthFailureRow.__table__


def session_digest(session_id: str) -> str:
    """Return what the database keeps of a session id (the cookie's id is not stored as such)."""
    return hashlib.sha256(session_id.encode()).hexdigest()


class ConsoleSessions:
    """Console sessions: opened at sign-in, live until they expire or are closed at sign-out."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def open(self, session_id: str, now: datetime, expires_at: datetime) -> None:
        """Record a new session, and forget the ones that have expired."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(_SESSIONS).where(_SESSIONS.c.expires_at <= now))
            conn.execute(
                sa.insert(_SESSIONS).values(id_digest=session_digest(session_id), created_at=now, expires_at=expires_at)
            )

    def is_live(self, session_id: str, now: datetime) -> bool:
        """Tell whether the session was opened, is not closed, and has not expired."""
        with self.engine.connect() as conn:
            expires = conn.execute(
                sa.select(_SESSIONS.c.expires_at).where(_SESSIONS.c.id_digest == session_digest(session_id))
            ).scalar_one_or_none()
        return expires is not None and now < expires

    def close(self, session_id: str) -> None:
        """End a session: its cookie opens nothing any more, in any process."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(_SESSIONS).where(_SESSIONS.c.id_digest == session_digest(session_id)))


# One statement, atomic on both databases: count a failure in the scope's window (a new window once the
# old one is over), and block the scope until :until when the count reaches :limit.
_FAILED = """
INSERT INTO auth_failures (scope, window_start, failures, blocked_until)
VALUES (:scope, :now, 1, CASE WHEN 1 >= :limit THEN :until ELSE 0.0 END)
ON CONFLICT (scope) DO UPDATE SET
    window_start = CASE WHEN auth_failures.window_start <= :expired THEN :now ELSE auth_failures.window_start END,
    failures = CASE WHEN auth_failures.window_start <= :expired THEN 1 ELSE auth_failures.failures + 1 END,
    blocked_until = CASE
        WHEN (CASE WHEN auth_failures.window_start <= :expired THEN 1 ELSE auth_failures.failures + 1 END) >= :limit
        THEN :until
        ELSE auth_failures.blocked_until
    END
RETURNING blocked_until
"""


class AuthFailures:
    """Failed API keys and console sign-ins, counted per scope (a client address, a key prefix)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"

    def blocked(self, scopes: Sequence[str], now: float) -> dict[str, float]:
        """Return the scopes blocked now, each with until when (Unix seconds)."""
        marks = ", ".join(f":s{i}" for i in range(len(scopes)))  # placeholders only: the scopes are bound
        sql = f"SELECT scope, blocked_until FROM auth_failures WHERE scope IN ({marks}) AND blocked_until > :now"  # noqa: S608
        params: dict[str, object] = {f"s{i}": scope for i, scope in enumerate(scopes)} | {"now": now}
        if self.sqlite:
            raw = self.engine.raw_connection()  # autocommit: no BEGIN IMMEDIATE, no writer lock
            try:
                cursor = raw.cursor()
                try:
                    rows = cursor.execute(sql, params).fetchall()
                finally:
                    cursor.close()
            finally:
                raw.close()
        else:
            with self.engine.connect() as conn:
                rows = conn.execute(sa.text(sql), params).all()
        return {str(scope): float(until) for scope, until in rows}

    def record(self, scopes: Sequence[str], now: float, limit: int, window: float) -> dict[str, float]:
        """Count one failure in each scope; return the scopes blocked now, each with until when."""
        params = {"now": now, "limit": limit, "until": now + window, "expired": now - window}
        blocked: dict[str, float] = {}
        with self.engine.begin() as conn:
            if not self.sqlite:
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")  # a lost count costs nothing
            for scope in scopes:
                until = float(conn.execute(sa.text(_FAILED), {**params, "scope": scope}).scalar_one())
                if until > now:
                    blocked[scope] = until
        return blocked

    def prune(self, now: float, window: float) -> int:
        """Delete the scopes neither blocked nor counting any more; return how many went."""
        with self.engine.begin() as conn:
            gone = conn.execute(
                sa.delete(_FAILURES).where(_FAILURES.c.blocked_until <= now, _FAILURES.c.window_start <= now - window)
            )
        return gone.rowcount or 0

    def blocked_counts(self, now: float) -> dict[str, int]:
        """Return how many scopes of each kind ("address", "key") are blocked now."""
        with self.engine.connect() as conn:
            scopes = conn.execute(sa.select(_FAILURES.c.scope).where(_FAILURES.c.blocked_until > now)).scalars()
            return dict(Counter(scope.split(":", 1)[0] for scope in scopes))
