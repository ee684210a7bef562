"""Engines for SQLite (WAL, durable commits) and PostgreSQL, and the migration entry points."""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import sqlite3
import threading
import weakref
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine, make_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_S = 10
# What SQLite and PostgreSQL say of a table or column a migration has not made yet (`planbridge db upgrade`).
UNMIGRATED = re.compile(r"no such (table|column)|(relation|column) \S+ does not exist")


class WriterLock:
    """One SQLite writer at a time: a thread lock for this process, an flock(2) for the others.

    Every transaction begins with BEGIN IMMEDIATE, so writers queue for the database lock. Left to
    SQLite, a waiter polls in sleeps of up to 100 ms (the busy handler), which under load turns a
    sub-millisecond commit into a tail of hundreds of milliseconds; a waiter on this lock is woken as
    soon as the holder commits. Writers outside planbridge still meet the busy timeout as before.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd = -1
        self.reset()

    def reset(self) -> None:
        """Take a lock and a descriptor of this process's own (at creation, and in a forked child)."""
        # A child's copy of the descriptor shares the parent's flock, and its thread lock may have been
        # copied while held, so a child gets new ones; closing the copy leaves the parent's lock alone.
        if self._fd >= 0:
            os.close(self._fd)
        self._thread_lock = threading.Lock()
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def acquire(self) -> None:
        """Wait for the lock, up to the busy timeout within this process (then "database is locked")."""
        if not self._thread_lock.acquire(timeout=BUSY_TIMEOUT_S):
            raise sqlite3.OperationalError("database is locked")
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def release(self) -> None:
        """Let the next writer in."""
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()


_writer_locks: dict[str, WriterLock] = {}
_writer_locks_guard = threading.Lock()


def _reset_after_fork() -> None:
    global _writer_locks_guard
    _writer_locks_guard = threading.Lock()
    for lock in _writer_locks.values():
        lock.reset()


os.register_at_fork(after_in_child=_reset_after_fork)


def writer_lock(database: str) -> WriterLock:
    """Return the process's writer lock for a database file (one per file, shared by its engines)."""
    path = os.path.realpath(database)
    with _writer_locks_guard:
        if path not in _writer_locks:
            _writer_locks[path] = WriterLock(path + ".writer-lock")
        return _writer_locks[path]


DEFAULT_WAL_AUTOCHECKPOINT = 1000  # pages: SQLite's own, for engines without a background checkpointer


class SqliteFile:
    """What the engines of a SQLite file share with its background checkpointer (service/store/checkpoints.py):
    the file's real path, its writer lock, and the `wal_autocheckpoint` each connection of the engine is to
    have, set on a connection before its next transaction when it changed."""

    def __init__(self, path: str, writer: WriterLock) -> None:
        self.path = path
        self.writer = writer
        self.wal_autocheckpoint = DEFAULT_WAL_AUTOCHECKPOINT


_sqlite_files: weakref.WeakKeyDictionary[Engine, SqliteFile] = weakref.WeakKeyDictionary()


def sqlite_file(engine: Engine) -> SqliteFile | None:
    """Return the SQLite file an engine writes (None for PostgreSQL, in-memory and URI databases)."""
    return _sqlite_files.get(engine)


class _LockingConnection(sqlite3.Connection):
    """A pysqlite connection that lets go of its writer lock once its transaction has ended."""

    writer: WriterLock | None = None
    holds_writer = False
    wal_autocheckpoint = DEFAULT_WAL_AUTOCHECKPOINT  # what this connection's pragma was last set to

    def set_wal_autocheckpoint(self, pages: int) -> None:
        """Set the WAL size, in pages, past which this connection's commits checkpoint (outside a transaction)."""
        self.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")
        self.wal_autocheckpoint = pages

    def begin_immediate(self) -> None:
        """Take the writer lock, then SQLite's write lock."""
        if self.writer is not None:
            self.writer.acquire()
            self.holds_writer = True
        try:
            self.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._let_go()
            raise

    def _let_go(self) -> None:
        if self.holds_writer and not self.in_transaction:
            self.holds_writer = False
            assert self.writer is not None
            self.writer.release()

    def commit(self) -> None:
        """Commit, then release the writer lock; a failed commit is rolled back first.

        SQLite leaves the transaction open when COMMIT fails (a full disk, a deferred constraint), but
        SQLAlchemy takes a failed commit as the end of the transaction and never rolls back, so the
        connection would go back to the pool still holding both locks and stall every later writer.
        """
        try:
            super().commit()
        except BaseException:
            if self.in_transaction:
                try:
                    super().rollback()
                except sqlite3.Error:
                    pass  # the commit's own error is the one to report
            raise
        finally:
            self._let_go()

    def rollback(self) -> None:
        """Roll back, then release the writer lock."""
        try:
            super().rollback()
        finally:
            self._let_go()

    def close(self) -> None:
        """Close, releasing the writer lock if a transaction was still open."""
        try:
            super().close()
        finally:
            if self.holds_writer:
                self.holds_writer = False
                assert self.writer is not None
                self.writer.release()


SQLITE_PAGE_SIZE = 2048  # bytes, for new database files


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside one writer; synchronous=FULL makes a commit survive power loss,
    # which is what "durable before 202" means.
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, see create_engine
    cursor = dbapi_connection.cursor()
    # A new database file gets 2 KiB pages (an existing one keeps its own: the pragma changes nothing once
    # the file holds a table, nor in WAL mode). A commit writes every page it changed whole to the WAL, and
    # an accepted event changes about ten pages, most of them index leaves keyed by random ids with one new
    # entry each: smaller pages halve the bytes written and checksummed per event (bench/webhook_load.py).
    cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


# orjson for the JSON columns (plan documents, event bodies and answers, payloads): ~5x faster than the
# json module each way, on every event. What it would write differently is left to the json module, so
# nothing is stored or read that was not before: datetimes, dataclasses and subclasses of str or int
# (passed through to `default`, which refuses them), keys that are not strings, integers past 64 bits,
# lone surrogates, NaN and infinities (which orjson writes as null); and on reading, integers past 64
# bits (which orjson reads as floats), NaN, Infinity and anything else orjson refuses.
ORJSON_AS_JSON_WOULD = (
    orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def refuse_for_orjson(value: Any) -> Any:
    """orjson's `default`: refuse what it passes through, so the json module answers for it."""
    raise TypeError(type(value).__name__)


def json_dumps(value: Any) -> str:
    """Return the JSON text of a value, as `json.dumps` would give it up to spacing and escapes."""
    try:
        text = orjson.dumps(value, default=refuse_for_orjson, option=ORJSON_AS_JSON_WOULD)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value)
    if b"null" in text and _non_finite(value):  # orjson wrote a NaN or infinity as null; json writes NaN
        return json.dumps(value)
    return text.decode()


_INFINITIES = (math.inf, -math.inf)


def _non_finite(value: Any) -> bool:
    """Tell whether a NaN or an infinity is anywhere in the value (a walk costs under half of a json.dumps,
    and most documents hold a null: a push's stored documents all fell back to the json module)."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float:
            if item != item or item in _INFINITIES:
                return True
        elif kind is dict:
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)
    return False


# orjson reads an integer past 64 bits as a float, where json keeps it exact: a text with 19 digits in a
# row (in a number, or in a string: no matter) is left to json. Found without a regex: `[0-9]{19}` tries a
# match at every character (~30 us for a 500-byte event body, 7x orjson's parse); the UTF-8 bytes with
# every ASCII digit made "0" and every other byte " " hold 19 "0"s in a row exactly when the text holds
# 19 digits in a row (a multi-byte character's bytes are all >= 0x80, never a digit): ~1 us.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_NINETEEN_ZEROS = b"0" * 19
_LONG_DIGITS = re.compile(r"[0-9]{19}")  # for a str that UTF-8 cannot carry (a lone surrogate)


def has_long_digits(text: str | bytes) -> bool:
    """Tell whether the text holds 19 ASCII digits in a row (`re.search(r"[0-9]{19}", text)`)."""
    if isinstance(text, str):
        try:
            text = text.encode("utf-8")
        except UnicodeEncodeError:
            return _LONG_DIGITS.search(text) is not None
    return _NINETEEN_ZEROS in text.translate(_DIGITS_AS_ZEROS)


def json_loads(text: str | bytes | memoryview) -> Any:
    """Return the value of a JSON text, exactly as `json.loads` would."""
    if isinstance(text, memoryview):
        text = bytes(text)
    if not has_long_digits(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def normalise_url(url: str) -> str:
    """Return the URL with the psycopg 3 driver named for plain postgresql:// URLs."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def create_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite files get their directory made and WAL switched on."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        on_disk = bool(parsed.database) and parsed.database != ":memory:" and not parsed.query.get("uri")
        writer = writer_lock(parsed.database) if on_disk else None
        on_file = SqliteFile(os.path.realpath(parsed.database), writer) if writer is not None else None
        connect_args = {"timeout": BUSY_TIMEOUT_S, "factory": _LockingConnection, **kwargs.pop("connect_args", {})}
        kwargs = {"json_serializer": json_dumps, "json_deserializer": json_loads, **kwargs}
        engine = sa.create_engine(url, connect_args=connect_args, **kwargs)

        def on_connect(dbapi_connection: Any, record: Any) -> None:
            _sqlite_pragmas(dbapi_connection, record)
            if isinstance(dbapi_connection, _LockingConnection):
                dbapi_connection.writer = writer

        def begin(conn: sa.Connection) -> None:
            # pysqlite's own transaction handling defers BEGIN; emit it ourselves so a read-modify-write
            # holds the write lock from the start (https://docs.sqlalchemy.org/en/20/dialects/sqlite.html).
            dbapi_connection = conn.connection.dbapi_connection
            if isinstance(dbapi_connection, _LockingConnection):
                # Only a commit checkpoints automatically, and every write begins here: a connection gets the
                # engine's wal_autocheckpoint before its next transaction (an attribute compare otherwise).
                if on_file is not None and dbapi_connection.wal_autocheckpoint != on_file.wal_autocheckpoint:
                    dbapi_connection.set_wal_autocheckpoint(on_file.wal_autocheckpoint)
                dbapi_connection.begin_immediate()
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        sa.event.listen(engine, "connect", on_connect)
        sa.event.listen(engine, "begin", begin)
        if on_file is not None:
            _sqlite_files[engine] = on_file
        return engine
    kwargs = {"json_serializer": json_dumps, "json_deserializer": json_loads, **kwargs}
    return sa.create_engine(url, pool_pre_ping=True, **kwargs)


def alembic_config(engine: Engine) -> Config:
    """Return an Alembic configuration bound to this engine (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to `revision`."""
    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """Return the revision the database is at, or None when it was never migrated."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    """Return the newest migration's revision."""
    return ScriptDirectory.from_config(alembic_config(sa.create_engine("sqlite://"))).get_current_head()
