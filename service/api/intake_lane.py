"""The intake's fast lane: a well-formed, signed POST /webhooks/team is answered without Flask's dispatch.

Flask's request machinery (the request context, URL matching, the Request and Response objects, the
hooks) cost ~14% of the CPU a signed event takes (bench/webhook_load.py, 2026-12-05), for a request
whose path, method and media type are known before any of it runs. The lane is WSGI middleware inside
the Flask app (`app.wsgi_app`), so the test client and gunicorn both pass through it. It takes a request
only when it is POST /webhooks/team, `application/json`, with a Content-Length within
MAX_CONTENT_LENGTH, the three webhook-* headers, a signature that verifies and a body the event schemas
accept. It then runs exactly what `service.api.webhooks.team_event` runs: the same three functions
(`read_signed`, `read_event`, `apply_event`), and answers as that view answers, with the same
X-Request-ID and request metrics as the app's hooks.

Anything else, and every refusal before the event is applied (a bad signature, a body refused by the
schemas, a reused webhook-id with a bad body), goes to Flask with the body it read, so every error keeps
one implementation: Flask's view and error handlers. tests/unit/test_intake_lane.py compares the two
paths' answers, header by header, for each kind of request.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from service import logs
from service.api import webhooks
from service.api.container import Container
from service.api.metrics import RequestRecorder, request_id_for
from service.domain.errors import PlanbridgeError

PATH = "/webhooks/team"
ENDPOINT = "webhooks.team_event"  # the view's endpoint name, as the request metrics label it
_SIGNATURE_HEADERS = (("webhook-id", "HTTP_WEBHOOK_ID"), ("webhook-timestamp", "HTTP_WEBHOOK_TIMESTAMP"))
_SIGNATURE_HEADERS += (("webhook-signature", "HTTP_WEBHOOK_SIGNATURE"),)
_STATUS_LINES = {202: "202 ACCEPTED"}
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _status_line(status: int) -> str:
    line = _STATUS_LINES.get(status)
    if line is None:
        from werkzeug.http import HTTP_STATUS_CODES

        line = _STATUS_LINES[status] = f"{status} {HTTP_STATUS_CODES.get(status, 'UNKNOWN').upper()}"
    return line


class IntakeLane:
    """WSGI middleware: signed team events that will be applied skip Flask's dispatch (see the module doc)."""

    def __init__(self, app: Flask, inner: WSGIApp) -> None:
        self.app = app
        self.inner = inner  # Flask's own wsgi_app: everything the lane does not take
        self._max_length: int | None = app.config.get("MAX_CONTENT_LENGTH")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """Answer a signed team event here, or pass the request to Flask."""
        length = self._takes(environ)
        if length is None:
            return self.inner(environ, start_response)
        started = time.perf_counter()
        raw = environ["wsgi.input"].read(length) if length else b""
        container: Container = self.app.extensions["planbridge"]
        try:
            headers = {name: environ[key] for name, key in _SIGNATURE_HEADERS}
            sender, webhook_id = webhooks.read_signed(container, raw, headers)
            body, event_type, command = webhooks.read_event(raw)
        except PlanbridgeError:
            return self._to_flask(environ, raw, start_response)  # refused: Flask's view says why
        request_id = request_id_for(environ.get("HTTP_X_REQUEST_ID", ""))
        token = logs.request_id.set(request_id)
        try:
            digest = hashlib.sha256(raw).hexdigest()
            outcome = webhooks.apply_event(container, sender, webhook_id, digest, body, event_type, command)
        except Exception:
            # Nothing of the event was committed (handle_event commits it with its answer, or raises):
            # Flask's view runs it again and its error handlers answer whatever it raises.
            return self._to_flask(environ, raw, start_response)
        finally:
            logs.request_id.reset(token)
        recorder: RequestRecorder = self.app.extensions["planbridge.requests"]
        recorder.observe("POST", ENDPOINT, outcome.status, started)
        if outcome.status >= 400:  # a refusal recorded as the event's answer: the view's problem+json, as it is
            with self.app.app_context():  # (written by Flask's JSON provider)
                response = webhooks._answer(outcome)
            response.headers["X-Request-ID"] = request_id
            return response(environ, start_response)
        data = json.dumps(outcome.body).encode()  # the bytes of the view's answer (webhooks._answer)
        answer = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        if outcome.replayed:
            answer.append(("Idempotent-Replayed", "true"))
        answer.append(("X-Request-ID", request_id))
        start_response(_status_line(outcome.status), answer)
        return [data]

    def _takes(self, environ: dict[str, Any]) -> int | None:
        """Return the body's length when the lane takes the request, else None."""
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST":
            return None
        if environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower() != "application/json":
            return None
        if "HTTP_TRANSFER_ENCODING" in environ or not all(key in environ for _, key in _SIGNATURE_HEADERS):
            return None
        length = environ.get("CONTENT_LENGTH", "")
        if not (length.isascii() and length.isdecimal()):
            return None
        size = int(length)
        return None if self._max_length is not None and size > self._max_length else size

    def _to_flask(self, environ: dict[str, Any], raw: bytes, start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ["wsgi.input"] = io.BytesIO(raw)  # the body as read: Flask reads it again
        return self.inner(environ, start_response)


def install(app: Flask) -> None:
    """Put the lane in front of the app's own WSGI callable."""
    app.wsgi_app = IntakeLane(app, app.wsgi_app)  # type: ignore[method-assign]
