"""Database fixtures: every store test runs on a SQLite file and on the real PostgreSQL server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

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


def migrated_database(kind: str, tmp_path: Path) -> Iterator[tuple[Engine, str]]:
    """Yield (engine, url) of a migrated database, "sqlite" (a file in tmp_path) or "postgres" (a fresh
    schema), and remove it afterwards: the body of the fixtures that give a test its database."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'planbridge.db'}"
        engine = create_engine(url)
        upgrade(engine)
        yield engine, url
        engine.dispose()
        return
    engine, drop, url = _postgres_engine()
    upgrade(engine)
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
    upgrade(engine)
    yield engine, url
    drop()
