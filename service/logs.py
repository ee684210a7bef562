"""Logging: one line per record, JSON by default, with the request id and event id of the work at hand.

Only ids and codes are logged, never names, MRNs or free text (the call sites are written that way;
tests check a whole event's journey leaves no patient detail in the log).

What a client sends can reach a log line (a path, an id), so control characters are escaped in every
line, backslash first: a `%0A` in a URL cannot start a forged line, a NUL or an ESC cannot hide text or
drive a terminal. The JSON lines escape the message before encoding it, so even a reader that prints a
decoded `msg` sees `\n`, not a line break; the text lines, tracebacks included, are one line each.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
event_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("event_id", default=None)

# C0 controls, DEL, C1 controls, and the Unicode line and paragraph separators; and the backslash, so
# an escape written by the client cannot pass for one written here.
_CONTROL = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group(0)
    named = _NAMED.get(char)
    if named is not None:
        return named
    return f"\\x{ord(char):02x}" if ord(char) <= 0xFF else f"\\u{ord(char):04x}"


def escape_controls(text: str) -> str:
    """Return text with backslashes doubled and control characters written as escapes (\\n, \\x00, \\u2028)."""
    return _CONTROL.sub(_escape_one, text)


class EscapingFormatter(logging.Formatter):
    """Wraps a formatter so each record it formats leaves as one line with no control character in it."""

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        """Return the inner formatter's line, escaped."""
        return escape_controls(self.inner.format(record))


class ContextFilter(logging.Filter):
    """Stamp each record with the current request and event ids."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the ids; never drop a record."""
        record.request_id = request_id.get()
        record.event_id = event_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the JSON line."""
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": escape_controls(record.getMessage()),
        }
        for key in ("request_id", "event_id"):
            if getattr(record, key, None):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out).replace("\x7f", "\\u007f")  # json.dumps escapes every control character but DEL


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Send every log record to stderr, as JSON lines or as plain text with the ids."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            EscapingFormatter(
                logging.Formatter(
                    "%(asctime)s %(levelname)s %(name)s [req=%(request_id)s event=%(event_id)s] %(message)s"
                )
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # urllib3 logs each request's whole URL at DEBUG, query included (`Patient?identifier=...|<MRN>`); our
    # own client logs the path without its query (service/fhir/client.py). urllib3 stays at INFO or above.
    logging.getLogger("urllib3").setLevel(max(root.getEffectiveLevel(), logging.INFO))
