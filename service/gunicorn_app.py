"""Run the Flask app under gunicorn from Python, so `planbridge serve` needs no extra config file."""

from __future__ import annotations

from typing import Any

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


def run(host: str, port: int, workers: int) -> None:
    """Serve the API on host:port with `workers` gthread workers."""
    Settings.from_env()  # fail fast on bad settings, before forking
    create_app()  # and on a missing secret
    _Gunicorn(
        {
            "bind": f"{host}:{port}",
            "workers": workers,
            "worker_class": "gthread",
            "threads": 4,
            "accesslog": "-",
            "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss',
            "timeout": 60,
            "graceful_timeout": 10,
            # A control socket shared per user would collide between instances (tests, dev, a second
            # service on one host); planbridge does not use it.
            "control_socket_disable": True,
        }
    ).run()
