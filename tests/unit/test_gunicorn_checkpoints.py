"""Each gunicorn worker of `planbridge serve` starts one background WAL checkpointer for the app's SQLite
file once it has loaded the app (post_worker_init), and none on PostgreSQL (service/store/checkpoints.py)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from service import gunicorn_app
from service.api.app import create_app
from service.store.checkpoints import BACKSTOP_PAGES, running_checkpointers, stop_background_checkpoints
from service.store.db import create_engine, sqlite_file
from tests.support import settings


@pytest.fixture(autouse=True)
def _no_checkpointer_left():
    yield
    stop_background_checkpoints()


def _serve_hooks(monkeypatch, database_url: str) -> dict:
    """The options `planbridge serve` gives gunicorn, taken instead of running it."""
    taken: dict = {}
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("PLANBRIDGE_WEBHOOK_SECRET", settings().webhook_secrets[0])
    monkeypatch.setenv("PLANBRIDGE_SESSION_SECRET", "s" * 48)
    monkeypatch.setattr(gunicorn_app, "_Gunicorn", lambda options: SimpleNamespace(run=lambda: taken.update(options)))
    monkeypatch.setattr(gunicorn_app.gc, "freeze", lambda: None)  # the test process's objects stay collectable
    gunicorn_app.run("127.0.0.1", 0, 2, 8)
    return taken


def _worker(engine) -> SimpleNamespace:
    """A worker as gunicorn's post_worker_init sees it: its app loaded (`load`'s middleware around Flask)."""
    return SimpleNamespace(wsgi=gunicorn_app.CloseWhenBodyUnread(create_app(settings(), engine)))


def test_a_serve_worker_starts_exactly_one_checkpointer_for_the_apps_sqlite_file(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'served.db'}"
    post_worker_init = _serve_hooks(monkeypatch, url)["post_worker_init"]
    engine = create_engine(url)
    assert running_checkpointers() == {}  # the master made the app to check settings: no thread there
    post_worker_init(_worker(engine))
    post_worker_init(_worker(engine))  # however often: one per file per process
    assert list(running_checkpointers()) == [os.path.realpath(tmp_path / "served.db")]
    file = sqlite_file(engine)
    assert file is not None and file.wal_autocheckpoint == BACKSTOP_PAGES


def test_a_serve_worker_on_postgresql_starts_no_checkpointer(monkeypatch, tmp_path):
    url = "postgresql://planbridge@127.0.0.1:9/never-connected"
    post_worker_init = _serve_hooks(monkeypatch, url)["post_worker_init"]
    post_worker_init(_worker(create_engine(url)))
    assert running_checkpointers() == {}
