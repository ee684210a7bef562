"""Statements compiled once and run on the DB-API cursor of a session's connection.

The event intake runs the same handful of statements for every event. Through `Session.execute`, each
one costs building its cache key, an execution context and a result object, which measured as most of
the CPU an event took (bench/webhook_intake.py). A `Prepared` statement is compiled once per dialect;
running it converts the parameters with SQLAlchemy's own type processors (so JSON and UTC timestamps
are stored exactly as the ORM stores them) and hands the SQL to the driver. It runs inside the session's
transaction, so it commits and rolls back with everything else; driver errors come out as SQLAlchemy's
exceptions (an `IntegrityError` stays an `IntegrityError`).

A unit of work that runs nothing but these statements (a push's read and record, the outbox worker's claim)
can run them in a `DirectTransaction`: a SQLAlchemy Core connection and its transaction, without the ORM
Session, whose own bookkeeping cost more than the statements of such a transaction (~0.1 ms each).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import Session

Processor = Callable[[Any], Any] | None
_CONNECTION = "planbridge.prepared.connection"  # the session.info key of the transaction's connection


class DirectTransaction:
    """What a `Prepared` statement needs of a Session, on a Core connection of its own: transactions begun
    as the engine begins them (its `begin` event: on SQLite, BEGIN IMMEDIATE under the writer lock), and
    committed, rolled back and given back to the pool as a Session would. Like a Session, it begins another
    transaction at the next statement after a commit or rollback. Nothing else of a Session is here: an ORM
    call on it (a repository method that is not a prepared statement) raises at once, naming the method."""

    autoflush = False  # no ORM objects: nothing to flush before a statement

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: sa.Connection | None = None
        self._open: tuple[Dialect, Any] | None = None  # the dialect and DB-API connection of the open transaction

    def begun(self) -> tuple[Dialect, Any]:
        """Return the dialect and the DB-API connection of the open transaction, beginning one if none."""
        if self._open is not None:
            return self._open
        connection = self._connection
        if connection is None:
            connection = self._connection = self._engine.connect()
        connection.begin()
        self._open = (connection.dialect, connection.connection.dbapi_connection)
        return self._open

    def get_bind(self) -> Engine:
        """Return the engine (as `Session.get_bind` does), for its dialect."""
        return self._engine

    def flush(self) -> None:
        """Nothing to flush."""

    def commit(self) -> None:
        """Commit the open transaction, if any."""
        if self._connection is not None and self._open is not None:
            self._open = None
            self._connection.commit()

    def rollback(self) -> None:
        """Roll back the open transaction, if any."""
        if self._connection is not None and self._open is not None:
            self._open = None
            self._connection.rollback()

    def close(self) -> None:
        """Roll back what was not committed and give the connection back to the pool."""
        connection, self._connection, self._open = self._connection, None, None
        if connection is not None:
            connection.close()

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"a direct transaction runs prepared statements only, not Session.{name}")


Transactional = Session | DirectTransaction  # what a Prepared statement runs in


def dbapi_connection(session: Transactional) -> tuple[Dialect, Any]:
    """Return the dialect and the DB-API connection of the session's transaction (beginning one if none).

    `Session.connection()` costs ~5 us of checks each time; the statements of one event ask for it
    eight times. The answer is kept in `session.info` with the transaction it belongs to and reused
    while that transaction is the session's and active; a new, nested or ended one asks again.
    """
    if type(session) is DirectTransaction:
        return session.begun()
    transaction = session._transaction
    kept = session.info.get(_CONNECTION)
    if kept is not None and kept[0] is transaction and transaction is not None and transaction.is_active:
        return kept[1], kept[2]
    connection = session.connection()
    kept = session.info[_CONNECTION] = (
        session._transaction,
        connection.dialect,
        connection.connection.dbapi_connection,
    )
    return kept[1], kept[2]


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # bind names, in the driver's order for positional paramstyles
    positional: bool
    bind: tuple[Processor, ...]
    result: tuple[Processor, ...]
    # (name, processor) in the driver's order, the names without a processor apart: one pass per call
    named_binds: tuple[tuple[str, Processor], ...] = ()


class Prepared:
    """A Core statement that runs on the session's DB-API connection, skipping SQLAlchemy's per-call work.

    Every bind parameter must be named (`sa.bindparam`) and passed on each call; literals belong in
    the SQL (`sa.literal_column`), not in binds.
    """

    def __init__(self, statement: sa.Executable) -> None:
        self.statement = statement
        self._by_dialect: weakref.WeakKeyDictionary[Dialect, _Compiled] = weakref.WeakKeyDictionary()
        # The last dialect asked for and its statement, by a weak reference (a process has one or two
        # dialects; a WeakKeyDictionary lookup makes a weak reference on every call).
        self._last: tuple[weakref.ref[Dialect], _Compiled] | None = None

    def _compiled(self, dialect: Dialect) -> _Compiled:
        last = self._last
        if last is not None and last[0]() is dialect:
            return last[1]
        compiled = self._by_dialect.get(dialect)
        if compiled is None:
            compiled = self._by_dialect[dialect] = self._compile(dialect)
        self._last = (weakref.ref(dialect), compiled)
        return compiled

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self.statement.compile(dialect=dialect)
        names = tuple(compiled.positiontup) if compiled.positional and compiled.positiontup else tuple(compiled.binds)
        for name in names:
            if compiled.binds[name].value is not None or compiled.binds[name].callable is not None:
                raise ValueError(f"bind {name!r} carries a value; name every bind and pass it on each call")
        bind = tuple(compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names)
        # A query's columns, or a write's RETURNING columns (none for a plain write).
        columns = getattr(self.statement, "exported_columns", ())
        result = tuple(column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns)
        return _Compiled(
            compiled.string, names, bool(compiled.positional), bind, result, tuple(zip(names, bind, strict=True))
        )

    def _run(self, session: Transactional, params: Mapping[str, Any], many: Sequence[Mapping[str, Any]] | None) -> Any:
        if session.autoflush:
            session.flush()  # as the ORM would before a query: rows it still holds become visible
        dialect, connection = dbapi_connection(session)
        compiled = self._compiled(dialect)
        cursor = connection.cursor()
        try:
            if many is not None:
                cursor.executemany(compiled.sql, self._many_params(compiled, many))
            else:
                cursor.execute(compiled.sql, self._params(compiled, params))
        except dialect.loaded_dbapi.Error as exc:
            cursor.close()
            raise sa.exc.DBAPIError.instance(
                compiled.sql, None, exc, dialect.loaded_dbapi.Error, dialect=dialect
            ) from exc
        return compiled, cursor

    @staticmethod
    def _params(compiled: _Compiled, params: Mapping[str, Any]) -> Any:
        if compiled.positional:
            return tuple([params[name] if p is None else p(params[name]) for name, p in compiled.named_binds])
        return {name: params[name] if p is None else p(params[name]) for name, p in compiled.named_binds}

    @classmethod
    def _many_params(cls, compiled: _Compiled, many: Sequence[Mapping[str, Any]]) -> list[Any]:
        """The parameters of each row, as `_params` converts them, converting a value that is the very object
        the row before passed for the same bind once (a batch's rows share their timestamp: one conversion of
        it, not one per row; a converter gives the same text for the same value)."""
        if len(many) < 2 or not any(p is not None for _name, p in compiled.named_binds):
            return [cls._params(compiled, params) for params in many]
        last: dict[str, tuple[Any, Any]] = {}  # bind name -> (the value last converted, what it became)

        def convert(name: str, p: Processor, value: Any) -> Any:
            if p is None:
                return value
            seen = last.get(name)
            if seen is not None and seen[0] is value:
                return seen[1]
            converted = p(value)
            last[name] = (value, converted)
            return converted

        if compiled.positional:
            return [tuple([convert(name, p, row[name]) for name, p in compiled.named_binds]) for row in many]
        return [{name: convert(name, p, row[name]) for name, p in compiled.named_binds} for row in many]

    def execute(self, session: Transactional, params: Mapping[str, Any]) -> int:
        """Run a write; return the number of rows it touched."""
        _compiled, cursor = self._run(session, params, None)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def executemany(self, session: Transactional, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run a write once per parameter set."""
        if rows:
            self._run(session, {}, rows)[1].close()

    def all(self, session: Transactional, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run a query (or a write with RETURNING); return its rows, converted as the ORM would."""
        compiled, cursor = self._run(session, params, None)
        try:
            rows = cursor.fetchall()
        finally:
            cursor.close()
        if not any(compiled.result):
            return [tuple(row) for row in rows]
        return [
            tuple(value if p is None else p(value) for p, value in zip(compiled.result, row, strict=True))
            for row in rows
        ]

    def first(self, session: Transactional, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run a query; return its first row, or None."""
        rows = self.all(session, params)
        return rows[0] if rows else None

    def first_outside(self, engine: Engine, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """Run a query on a pooled connection outside any transaction of planbridge's: no BEGIN, so on
        SQLite no writer lock is taken, and what it reads is what was last committed. Return its first
        row, converted as `first` converts it, or None."""
        dialect = engine.dialect
        compiled = self._compiled(dialect)
        connection = engine.raw_connection()  # no "begin" event: pysqlite runs the SELECT on its own
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(compiled.sql, self._params(compiled, params))
                rows = cursor.fetchmany(1)
            except dialect.loaded_dbapi.Error as exc:
                raise sa.exc.DBAPIError.instance(
                    compiled.sql, None, exc, dialect.loaded_dbapi.Error, dialect=dialect
                ) from exc
            finally:
                cursor.close()
        finally:
            connection.close()  # back to the pool, which rolls back what a driver began (PostgreSQL)
        if not rows:
            return None
        return tuple(value if p is None else p(value) for p, value in zip(compiled.result, rows[0], strict=True))
