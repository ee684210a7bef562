"""Database fixtures: every store test runs on a SQLite file and on the real PostgreSQL server."""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa

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


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path):
    """Yield (engine, url) of a migrated database; runs the test once per backend."""
    if request.param == "sqlite":
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
