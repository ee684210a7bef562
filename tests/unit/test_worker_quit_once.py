"""A gunicorn worker quits once, however many quit signals reach it (Ctrl-C: SIGINT from the terminal, then
SIGQUIT from the master, within milliseconds)."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.workers.gthread import ThreadWorker

from service.gunicorn_app import ServiceWorker


class _SignalledQueue(queue.SimpleQueue):  # type: ignore[type-arg]
    """The pool's work queue; the pool's shutdown puts a wake-up on it while holding its lock, which is where
    a second quit signal is handled in this test (the moment the real one hit)."""

    def __init__(self, on_put: Any) -> None:
        super().__init__()
        self.on_put = on_put

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        on_put, self.on_put = self.on_put, None
        if on_put is not None:
            on_put()
        super().put(item, block, timeout)


def _quit_twice(worker_class: type[ThreadWorker]) -> tuple[bool, list[BaseException]]:
    """Run the worker's quit handler with a second quit arriving inside the first; say if it returned."""
    worker = worker_class.__new__(worker_class)
    worker.alive = True
    worker.cfg = SimpleNamespace(worker_int=lambda _worker: None)
    worker.tpool = ThreadPoolExecutor(max_workers=1)
    worker.tpool._work_queue = _SignalledQueue(lambda: worker.handle_quit(3, None))  # SIGQUIT, nested
    ended: list[BaseException] = []

    def first_quit() -> None:
        try:
            worker.handle_quit(2, None)  # SIGINT
        except BaseException as exc:  # handle_quit ends with sys.exit
            ended.append(exc)

    thread = threading.Thread(target=first_quit, daemon=True)
    thread.start()
    thread.join(timeout=5)
    return not thread.is_alive(), ended


def test_a_second_quit_signal_inside_the_first_does_not_hang_the_worker() -> None:
    returned, ended = _quit_twice(ServiceWorker)
    assert returned
    assert len(ended) == 1 and isinstance(ended[0], SystemExit) and ended[0].code == 0


def test_gunicorns_own_gthread_worker_hangs_there() -> None:
    """The reason for ServiceWorker: if gunicorn fixes this, the subclass can go."""
    returned, _ = _quit_twice(ThreadWorker)
    assert not returned


def test_the_service_runs_on_the_quit_once_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.gunicorn_app as gunicorn_app

    seen: dict[str, Any] = {}

    class _Capture:
        def __init__(self, options: dict[str, Any]) -> None:
            seen.update(options)

        def run(self) -> None:
            pass

    monkeypatch.setattr(gunicorn_app, "_Gunicorn", _Capture)
    monkeypatch.setattr(gunicorn_app, "share_session_secret", lambda _settings: None)
    monkeypatch.setattr(gunicorn_app, "create_app", lambda: None)
    monkeypatch.setattr(gunicorn_app.Settings, "from_env", classmethod(lambda cls: None))
    gunicorn_app.run("127.0.0.1", 0, 2)
    assert seen["worker_class"] is ServiceWorker
