"""Logging: one line per record, JSON by default, with the request id and event id of the work at hand.

Only ids and codes are logged, never names, MRNs or free text (the call sites are written that way;
tests check a whole event's journey leaves no patient detail in the log).
"""

from __future__ import annotations

import contextvars
import json
import logging
import time

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
event_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("event_id", default=None)


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
            "msg": record.getMessage(),
        }
        for key in ("request_id", "event_id"):
            if getattr(record, key, None):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Send every log record to stderr, as JSON lines or as plain text with the ids."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [req=%(request_id)s event=%(event_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
