"""Database fixtures: every store test runs on a SQLite file and on the real PostgreSQL server.

Migrating a database costs far more than the test that uses it is often worth (24 migrations in one
transaction: ~0.2 s on SQLite, ~0.35 s on PostgreSQL), and over a thousand tests take one. So each process
migrates once per backend and gives every later test what that migration made: on SQLite a copy of the
migrated file, on PostgreSQL the statements the migration executed, replayed in one transaction on the
test's fresh schema. tests/integration/test_db_fixtures.py checks both come out as a migration's would.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service.store.db import create_engine, upgrade

POSTGRES_URL = os.environ.get("PLANBRIDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_engine():
    """Return an engine on a fresh schema of the test database, and a function that drops it."""
    schema = f"pb_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_URL} ({type(exc).__name__}); start it "
            "(see .ci/run) or point PLANBRIDGE_TEST_POSTGRES_URL at one. These tests are not skipped."
        )
    engine = create_engine(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"})

    def drop() -> None:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return engine, drop, f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


# (statement, parameters, executemany, no_parameters): what one real migration of a fresh schema executed
_postgres_migration: list[tuple[str, Any, bool, bool]] = []
_sqlite_template: list[Path] = []


def migrate_postgres(engine: Engine) -> None:
    """Bring a fresh, empty PostgreSQL schema to the head revision: the first time in this process by
    migrating it (recording every statement executed), afterwards by executing those statements again, in
    the same order with the same parameters, in one transaction."""
    if _postgres_migration:
        with engine.begin() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            for statement, parameters, many, no_parameters in _postgres_migration:
                if many:
                    cursor.executemany(statement, parameters)
                elif no_parameters:
                    cursor.execute(statement)
                else:
                    cursor.execute(statement, parameters)
            cursor.close()
        return
    executed: list[tuple[str, Any, bool, bool]] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:
        no_parameters = bool(context is not None and context.no_parameters)
        executed.append((statement, parameters, executemany, no_parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        upgrade(engine)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    _postgres_migration[:] = executed


def migrate_sqlite(path: Path) -> None:
    """Make `path` a migrated SQLite database: a copy of a file this process migrated once."""
    if not _sqlite_template:
        directory = Path(tempfile.mkdtemp(prefix="planbridge-migrated-"))
        atexit.register(shutil.rmtree, directory, True)
        template = directory / "planbridge.db"
        engine = create_engine(f"sqlite:///{template}")
        upgrade(engine)
        engine.dispose()  # the last connection closed checkpoints the WAL into the file and removes it
        assert not Path(f"{template}-wal").exists(), "the migrated template's WAL was not checkpointed"
        _sqlite_template.append(template)
    shutil.copyfile(_sqlite_template[0], path)


def migrated_database(kind: str, tmp_path: Path) -> Iterator[tuple[Engine, str]]:
    """Yield (engine, url) of a migrated database, "sqlite" (a file in tmp_path) or "postgres" (a fresh
    schema), and remove it afterwards: the body of the fixtures that give a test its database."""
    if kind == "sqlite":
        path = tmp_path / "planbridge.db"
        migrate_sqlite(path)
        url = f"sqlite:///{path}"
        engine = create_engine(url)
        yield engine, url
        engine.dispose()
        return
    engine, drop, url = _postgres_engine()
    migrate_postgres(engine)
    yield engine, url
    drop()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    """Yield (engine, url) of a migrated database; runs the test once per backend."""
    yield from migrated_database(request.param, tmp_path)


@pytest.fixture
def engine(database):
    """A migrated engine, once on SQLite and once on PostgreSQL."""
    return database[0]


@pytest.fixture
def postgres():
    """Yield (engine, url) of a migrated PostgreSQL schema, for what only PostgreSQL does (SKIP LOCKED)."""
    engine, drop, url = _postgres_engine()
    migrate_postgres(engine)
    yield engine, url
    drop()
