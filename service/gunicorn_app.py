"""Run the Flask app under gunicorn from Python, so `planbridge serve` needs no extra config file."""

from __future__ import annotations

import gc
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from service.api.app import create_app
from service.settings import Settings


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # newer gunicorn releases add settings; older ones lack them
                self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app()


ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss'  # client, method, path, status, bytes, seconds


class AccessLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger, building only the access-log fields that ACCESS_LOG_FORMAT uses.

    gunicorn's own builds some sixty for every request (each request and response header, each WSGI
    environ entry), about 8% of a signed webhook's CPU under load; the line it writes is the same.
    Never the query string or headers: no PHI reaches the access log.
    """

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        """Return the fields of one access-log line."""
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        sent = getattr(resp, "sent", None)
        return {
            "h": environ.get("REMOTE_ADDR", "-"),
            "m": environ.get("REQUEST_METHOD"),
            "U": environ.get("PATH_INFO"),
            "s": status,
            "b": str(sent) if sent is not None else "-",
            "L": f"{request_time.seconds}.{request_time.microseconds:06d}",
        }


def default_shape(database_url: str) -> tuple[int, int]:
    """Return (workers, threads) for a database: two processes of 8 threads on SQLite, of 4 on PostgreSQL.

    A process serves requests on one core at a time (the GIL), and a signed event costs a few
    milliseconds of CPU, so two processes use a 2-core machine. On SQLite, writes are serialised by
    the writer lock and each process groups the events that queue behind it into one commit (see
    service/store/committer.py), so more threads per process means larger groups, not more waiting.
    Measured with bench/webhook_load.py: 2 x 8 beat 1 x 8 by ~1.7x and matched 3 x 8 and 4 x 4.
    """
    return (2, 8) if database_url.startswith("sqlite") else (2, 4)


def _freeze_loaded_objects(_worker: Any) -> None:
    # The app, its schemas and fhir.resources' models are a few hundred thousand objects that live as
    # long as the worker; left in the collected generations, every full collection walks them all and
    # stalls each thread for ~100 ms, which is the p99 of a loaded server. Freezing takes them out.
    gc.collect()
    gc.freeze()


def run(host: str, port: int, workers: int, threads: int = 4) -> None:
    """Serve the API on host:port with `workers` gthread workers of `threads` threads each."""
    Settings.from_env()  # fail fast on bad settings, before forking
    create_app()  # and on a missing secret
    _Gunicorn(
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            "worker_class": "gthread",
            "threads": threads,
            "post_worker_init": _freeze_loaded_objects,
            "accesslog": "-",
            "access_log_format": ACCESS_LOG_FORMAT,
            "logger_class": AccessLogger,
            "timeout": 60,
            "graceful_timeout": 10,
            # A control socket shared per user would collide between instances (tests, dev, a second
            # service on one host); planbridge does not use it.
            "control_socket_disable": True,
        }
    ).run()
