"""The baselines for bench/webhook_load.py, served by gunicorn with the same shape as planbridge.

`signed:app` (the issue's "minimal signed-commit handler"): verify the Standard Webhooks signature with
the `standardwebhooks` package, one INSERT of the event, COMMIT on SQLite with planbridge's settings
(WAL, `synchronous=FULL`, so the row is on disk before the answer), answer 202. Nothing else: no
validation, no idempotency check, no plan, no outbox. Its database is `BARE_DATABASE` (a file path).

`app`: a bare Flask endpoint that parses the body and answers 202 (no signature, no database).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading

from flask import Flask, Response, request
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SQLITE_PAGE_SIZE = 2048  # planbridge's own for a new file (service.store.db.SQLITE_PAGE_SIZE)

app = Flask("bare")


@app.post("/webhooks/team")
def accept() -> tuple[dict, int]:
    """Parse and answer, nothing else."""
    return {"status": "accepted", "type": json.loads(request.get_data())["type"]}, 202


@app.get("/healthz")
def healthz() -> dict:
    """Up."""
    return {"status": "ok"}


signed = Flask("signed")
_local = threading.local()
# One writer at a time, woken as soon as the last one commits: a thread lock within the process and an
# flock across processes (as planbridge does). Left to SQLite's busy handler, a waiting writer sleeps
# in steps of up to 100 ms, and this baseline would read a p99 of hundreds of ms and a lower rate.
_writer = threading.Lock()
_writer_fd: int | None = None


def _lock_fd() -> int:
    global _writer_fd
    if _writer_fd is None:  # opened in the worker (after the fork), so each process has its own flock
        _writer_fd = os.open(os.environ["BARE_DATABASE"] + ".writer-lock", os.O_RDWR | os.O_CREAT, 0o600)
    return _writer_fd


def _connection() -> sqlite3.Connection:
    """This thread's connection, set up as planbridge sets up its SQLite connections."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = sqlite3.connect(os.environ["BARE_DATABASE"], timeout=10, isolation_level=None)
        conn.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")  # before WAL: a new file only
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("CREATE TABLE IF NOT EXISTS events (webhook_id TEXT PRIMARY KEY, body TEXT NOT NULL)")
    return conn


@signed.post("/webhooks/team")
def accept_signed() -> Response | tuple[dict, int]:
    """Verify, store, commit, answer 202."""
    body = request.get_data().decode()
    try:
        Webhook(os.environ["PLANBRIDGE_WEBHOOK_SECRET"]).verify(body, request.headers)
    except WebhookVerificationError:
        return {"status": 401}, 401
    conn = _connection()
    with _writer:
        fd = _lock_fd()
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO events (webhook_id, body) VALUES (?, ?)", (request.headers["webhook-id"], body)
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    return {"status": "accepted", "event_id": request.headers["webhook-id"]}, 202


@signed.get("/healthz")
def signed_healthz() -> dict:
    """Up."""
    return {"status": "ok"}
