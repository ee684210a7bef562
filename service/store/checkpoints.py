"""SQLite WAL checkpoints in a background thread, off the request path.

Left to SQLite, the commit that takes the WAL past `wal_autocheckpoint` pages (1000, 2 MB at 2 KiB pages)
checkpoints inside COMMIT: it copies the WAL into the database file and fsyncs it, while planbridge's writer
lock (service.store.db.WriterLock, released only after COMMIT returns) keeps every other writer of both
gunicorn workers waiting: the p99 of a loaded intake (issue #15). A long-running process that writes
(`planbridge serve`'s workers, `planbridge worker`) starts one thread per database file instead:

- a PASSIVE checkpoint without the writer lock, which copies what is in the WAL beside the writers (readers
  and writers never wait for it, and it waits for no one);
- when the WAL holds more than RESTART_FRAMES frames, a second PASSIVE checkpoint holding the writer lock: no
  frame can be added meanwhile, so it copies the few written since the first pass and the whole WAL is in the
  database file when the next writer begins, which starts the WAL again from its beginning (the file stops
  growing). Its cost under the lock is those few frames and two fsyncs, not the 2 MB;
- a sleep of `interval` seconds between passes.

The engine's connections get `wal_autocheckpoint` = BACKSTOP_PAGES (20 MB) instead of SQLite's 1000: should
the thread die or fall behind, SQLite still bounds the WAL. Engines without a checkpointer (CLI commands, the
tests' thousands of engines) keep SQLite's default.

Durability is unchanged: commits still run with synchronous=FULL and the WAL is fsynced in COMMIT, before
202 is sent; a checkpoint only copies frames already durable in the WAL, and SQLite fsyncs the database file
before it counts a frame as copied, and restarts the WAL only once every frame is copied and synced. A crash
at any point of a checkpoint leaves the WAL's frames to be replayed at the next open, as before.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import NamedTuple

from sqlalchemy.engine import Engine

from service.store.db import BUSY_TIMEOUT_S, DEFAULT_WAL_AUTOCHECKPOINT, SqliteFile, sqlite_file

log = logging.getLogger("planbridge.checkpoints")

INTERVAL_S = 0.05  # between passes
RESTART_FRAMES = 1000  # past this many frames in the WAL, a pass ends with the WAL copied whole, under the lock
BACKSTOP_PAGES = 10_000  # wal_autocheckpoint of an engine with a checkpointer: SQLite's own, should the thread stop
CATCH_UP_S = 0.005  # an unlocked copy that took longer is run again before the one under the lock
LOG_EVERY_S = 60.0  # at most one error line a minute per checkpointer (the others are counted in it)


class Pass(NamedTuple):
    """What a checkpoint pass saw: the WAL's frames, those copied to the database file, and whether it
    ended with the writer lock held (the WAL then restarts at the next write)."""

    frames: int
    copied: int
    locked: bool


class Checkpointer:
    """One background checkpointing thread for one SQLite file, in this process."""

    def __init__(self, file: SqliteFile, interval: float = INTERVAL_S) -> None:
        self.file = file
        self.interval = interval
        self.passes = 0  # passes run, and passes that took the writer lock (for tests and metrics)
        self.locked_passes = 0
        self.errors = 0
        self.last_pass: Pass | None = None
        self._locked_at = -1  # the WAL's frames after the last pass that copied it whole under the writer lock
        self._stop = threading.Event()
        self._connection: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._last_logged = -LOG_EVERY_S
        self._unlogged = 0

    @property
    def running(self) -> bool:
        """Tell whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (a daemon: it ends with the process)."""
        self._thread = threading.Thread(target=self._run, name="planbridge-checkpoints", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = BUSY_TIMEOUT_S) -> None:
        """Stop the thread and wait for it (tests; a server's thread ends with its process)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_pass(self) -> Pass:
        """Checkpoint once beside the writers, then, when the WAL is long, under the writer lock."""
        self.passes += 1
        started = time.monotonic()
        frames, copied = self._checkpoint()
        for _ in range(3):  # a long copy (a slow disk): again, so what is left for the lock is what came meanwhile
            if frames <= RESTART_FRAMES or time.monotonic() - started < CATCH_UP_S:
                break
            started = time.monotonic()
            frames, copied = self._checkpoint()
        # A WAL copied whole beside the writers does not restart: SQLite starts it again only for a writer
        # whose transaction began with every frame copied, and under load the next writer has always begun
        # before the copy ends. So the pass ends under the writer lock, unless nothing was written since
        # the last such pass (an idle WAL the next writer will restart).
        if frames <= RESTART_FRAMES or (frames == self._locked_at and copied >= frames):
            self.last_pass = Pass(frames, copied, False)
            return self.last_pass
        self.file.writer.acquire()
        try:
            frames, copied = self._checkpoint()
        finally:
            self.file.writer.release()
        self.locked_passes += 1
        self._locked_at = frames if copied >= frames else -1
        self.last_pass = Pass(frames, copied, True)
        return self.last_pass

    def _checkpoint(self) -> tuple[int, int]:
        if self._connection is None:
            # mode=rw: a file not there (yet) is an error to retry, never an empty file made here.
            uri = Path(self.file.path).as_uri() + "?mode=rw"
            connection = sqlite3.connect(
                uri, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False, uri=True
            )
            connection.execute("PRAGMA synchronous=FULL")  # as every planbridge connection (db._sqlite_pragmas)
            connection.execute("PRAGMA wal_autocheckpoint=0")  # it never writes, but nor should it checkpoint
            self._connection = connection
        # (busy, frames in the WAL, frames copied): busy is 1 when another process's checkpoint was running.
        _busy, frames, copied = self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return max(frames, 0), max(copied, 0)  # -1 each when the database is not in WAL mode

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_pass()
            except Exception as exc:  # the thread outlives any one failure, and says so
                self.errors += 1
                self._failed(exc)
            self._stop.wait(self.interval)
        self._close()

    def _failed(self, exc: Exception) -> None:
        self._close()  # a new connection at the next pass
        now = time.monotonic()
        if now - self._last_logged < LOG_EVERY_S:
            self._unlogged += 1
            return
        code = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        log.warning(
            "background checkpoint of %s failed (%s); %d more failures since the last line; retrying",
            os.path.basename(self.file.path),
            code,
            self._unlogged,
        )
        self._last_logged, self._unlogged = now, 0

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except sqlite3.Error:
                pass


_checkpointers: dict[str, Checkpointer] = {}
_checkpointed: weakref.WeakSet[SqliteFile] = weakref.WeakSet()  # the engines' files given the backstop
_guard = threading.Lock()
_forked_away: list[Checkpointer] = []  # a parent's, kept from being closed in a child (their SQLite handles)


def _after_fork_in_child() -> None:
    # A thread does not survive fork: a child starts its own if it wants one. The parent's checkpointers are
    # kept, never used or closed (closing a parent's SQLite connection in a child can unlock the parent's
    # locks), and the child's engines fall back to SQLite's own checkpoints until it starts one.
    global _guard
    _guard = threading.Lock()
    _forked_away.extend(_checkpointers.values())
    _checkpointers.clear()
    for file in _checkpointed:
        file.wal_autocheckpoint = DEFAULT_WAL_AUTOCHECKPOINT
    _checkpointed.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def start_background_checkpoints(engine: Engine, interval: float = INTERVAL_S) -> Checkpointer | None:
    """Checkpoint the engine's SQLite file in a background thread of this process (one per file, however many
    engines ask), and give the engine's connections the backstop wal_autocheckpoint. Return the checkpointer;
    None for PostgreSQL and in-memory databases, which need none."""
    file = sqlite_file(engine)
    if file is None:
        return None
    with _guard:
        checkpointer = _checkpointers.get(file.path)
        if checkpointer is None or not checkpointer.running:
            checkpointer = Checkpointer(file, interval)
            checkpointer.start()
            _checkpointers[file.path] = checkpointer
        file.wal_autocheckpoint = BACKSTOP_PAGES
        _checkpointed.add(file)
        return checkpointer


def stop_background_checkpoints() -> None:
    """Stop every checkpointer of this process, and give their engines SQLite's default back (tests)."""
    with _guard:
        checkpointers = list(_checkpointers.values())
        _checkpointers.clear()
        for file in _checkpointed:
            file.wal_autocheckpoint = DEFAULT_WAL_AUTOCHECKPOINT
        _checkpointed.clear()
    for checkpointer in checkpointers:
        checkpointer.stop()


def running_checkpointers() -> dict[str, Checkpointer]:
    """Return this process's running checkpointers by database file (real path)."""
    with _guard:
        return {path: c for path, c in _checkpointers.items() if c.running}
