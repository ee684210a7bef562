"""SQLite WAL checkpoints run in a background thread, not inside the commit that holds the writer lock (#15).

SQLite's automatic checkpoint runs in the COMMIT that takes the WAL past 1000 pages, copying ~2 MB into the
database file and fsyncing it while planbridge's writer lock keeps every other writer waiting. An engine given
a background checkpointer (service/store/checkpoints.py) has its connections checkpoint automatically only
past a backstop of 10,000 pages, and the thread keeps the WAL short and restarts it.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from service.store.checkpoints import (
    BACKSTOP_PAGES,
    Checkpointer,
    running_checkpointers,
    start_background_checkpoints,
    stop_background_checkpoints,
)
from service.store.db import DEFAULT_WAL_AUTOCHECKPOINT, SqliteFile, create_engine, sqlite_file, writer_lock

PAGE = 2048  # service.store.db.SQLITE_PAGE_SIZE: a new file's pages
ROW = b"x" * 3000  # a row over one page: each commit writes a few pages to the WAL


def _engine(path: Path) -> sa.Engine:
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    return engine


def _insert(engine: sa.Engine, count: int, per_commit: int = 1) -> None:
    for _ in range(count):
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO rows (body) VALUES (?)", [(ROW,)] * per_commit)


def _wal_bytes(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def _wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_continuous_writes_with_background_checkpoints_keep_the_wal_bounded_and_restarted(tmp_path):
    path = tmp_path / "busy.db"
    engine = _engine(path)
    checkpointer = start_background_checkpoints(engine, interval=0.02)
    assert checkpointer is not None
    try:
        # Four writers until well past the backstop's 20 MB of WAL: without the thread, the WAL would reach it.
        target = (BACKSTOP_PAGES * PAGE * 3 // 2) // len(ROW)
        written = [0] * 4
        done = threading.Event()

        def writer(slot: int) -> None:
            while not done.is_set() and sum(written) < target:
                _insert(engine, 1)
                written[slot] += 1

        threads = [threading.Thread(target=writer, args=(slot,)) for slot in range(4)]
        for thread in threads:
            thread.start()
        largest_wal, frames_seen = 0, []
        deadline = time.monotonic() + 120
        while any(t.is_alive() for t in threads):
            largest_wal = max(largest_wal, _wal_bytes(path))
            if checkpointer.last_pass is not None:
                frames_seen.append(checkpointer.last_pass.frames)
            if time.monotonic() > deadline:
                done.set()
            time.sleep(0.005)
        for thread in threads:
            thread.join()
        largest_wal = max(largest_wal, _wal_bytes(path))

        assert sum(written) >= target, "the writers did not write past the backstop in two minutes"
        assert largest_wal < 6 * 1024 * 1024, f"the WAL grew to {largest_wal} bytes"
        restarts = sum(1 for before, after in itertools.pairwise(frames_seen) if after < before)
        assert restarts >= 3, f"the WAL never started again: frames seen {frames_seen[:50]}..."
        assert checkpointer.locked_passes >= 1 and checkpointer.errors == 0
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM rows").scalar() == sum(written)
    finally:
        stop_background_checkpoints()
        engine.dispose()


def test_a_commit_on_a_checkpointed_engine_leaves_the_big_checkpoint_to_the_thread(tmp_path):
    checkpointed_path, plain_path = tmp_path / "checkpointed.db", tmp_path / "plain.db"
    checkpointed, plain = _engine(checkpointed_path), _engine(plain_path)
    # A pass at the start, then none during the test: what the commits do alone is what is seen.
    checkpointer = start_background_checkpoints(checkpointed, interval=3600)
    assert checkpointer is not None
    try:
        with checkpointed.begin() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == BACKSTOP_PAGES
        with plain.begin() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == DEFAULT_WAL_AUTOCHECKPOINT
        # 3,000 pages in commits of ~20 pages: the plain engine's commits checkpoint at 1,000 pages and the
        # WAL starts again, so its file stays near 1,000 pages; the checkpointed engine's never do.
        commits = 3 * DEFAULT_WAL_AUTOCHECKPOINT * PAGE // (len(ROW) * 10)
        _insert(checkpointed, commits, per_commit=10)
        _insert(plain, commits, per_commit=10)
        assert _wal_bytes(plain_path) < 1.5 * DEFAULT_WAL_AUTOCHECKPOINT * PAGE
        assert _wal_bytes(checkpointed_path) > 2.5 * DEFAULT_WAL_AUTOCHECKPOINT * PAGE
        # and the thread's next pass copies it all (nothing is being written: no need for the writer lock),
        first = checkpointer.run_pass()
        assert first.copied == first.frames > 2 * DEFAULT_WAL_AUTOCHECKPOINT
        _insert(checkpointed, 1)
        assert checkpointer.run_pass().frames < 10  # the write after a full copy started the WAL again
    finally:
        stop_background_checkpoints()
        checkpointed.dispose()
        plain.dispose()
    with checkpointed.begin() as conn:  # stopped: the engine's connections get SQLite's default back
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == DEFAULT_WAL_AUTOCHECKPOINT


def test_one_checkpointer_per_file_in_a_process_however_many_engines_ask(tmp_path):
    first, second = _engine(tmp_path / "one.db"), create_engine(f"sqlite:///{tmp_path / 'one.db'}")
    try:
        assert start_background_checkpoints(first) is start_background_checkpoints(second)
        assert list(running_checkpointers()) == [os.path.realpath(tmp_path / "one.db")]
        assert start_background_checkpoints(create_engine("sqlite://")) is None  # in memory: nothing to do
    finally:
        stop_background_checkpoints()
    assert running_checkpointers() == {}


def test_a_forked_child_inherits_no_checkpointer_and_falls_back_to_sqlites_own(tmp_path):
    engine = _engine(tmp_path / "forked.db")
    start_background_checkpoints(engine, interval=3600)
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave without running any of pytest's teardown
            try:
                file = sqlite_file(engine)
                os.write(write, f"{len(running_checkpointers())} {file.wal_autocheckpoint if file else -1}".encode())
            finally:
                os._exit(0)
        os.close(write)
        answer = os.read(read, 100).decode()
        os.close(read)
        os.waitpid(pid, 0)
        assert answer == f"0 {DEFAULT_WAL_AUTOCHECKPOINT}"
        assert len(running_checkpointers()) == 1  # the parent's goes on
    finally:
        stop_background_checkpoints()
        engine.dispose()


def test_the_thread_survives_a_failing_checkpoint_and_logs_its_code_once(tmp_path, caplog):
    missing = tmp_path / "not-yet" / "planbridge.db"  # mode=rw: the thread never makes the file
    checkpointer = Checkpointer(SqliteFile(str(missing), writer_lock(str(tmp_path / "lock.db"))), interval=0.005)
    caplog.set_level(logging.WARNING, logger="planbridge.checkpoints")
    checkpointer.start()
    try:
        assert _wait_for(lambda: checkpointer.errors >= 5)
        assert checkpointer.running
        lines = [r.getMessage() for r in caplog.records if r.name == "planbridge.checkpoints"]
        assert lines == [
            "background checkpoint of planbridge.db failed (SQLITE_CANTOPEN); 0 more failures since "
            "the last line; retrying"
        ]
        assert not missing.exists()
        _engine(missing).dispose()  # the file appears: the next passes succeed
        passes = checkpointer.passes
        assert _wait_for(lambda: checkpointer.last_pass is not None and checkpointer.passes > passes + 2)
    finally:
        checkpointer.stop()
    assert not checkpointer.running
