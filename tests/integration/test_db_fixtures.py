"""The database fixtures' shortcut (tests/db_fixtures.py) makes what a migration makes.

Each process migrates once per backend; later tests get a copy of the migrated SQLite file, or the
migration's statements replayed on their PostgreSQL schema. These tests hold the shortcut to the real
thing: a database it makes has the schema, revision and contents of one `upgrade()` makes.
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa

from service.store.db import create_engine, current_revision, head_revision, upgrade
from tests.db_fixtures import _postgres_engine, migrate_postgres, migrate_sqlite


def _sqlite_schema(path) -> dict:
    with sqlite3.connect(path) as conn:
        return {
            "objects": sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()),
            "sequences": sorted(conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall()),
            "version": conn.execute("SELECT version_num FROM alembic_version").fetchall(),
            "journal_mode": conn.execute("PRAGMA journal_mode").fetchone(),
            "user_version": conn.execute("PRAGMA user_version").fetchone(),
        }


def test_a_copied_sqlite_database_is_the_migrated_one(tmp_path):
    migrated = tmp_path / "migrated.db"
    engine = create_engine(f"sqlite:///{migrated}")
    upgrade(engine)
    engine.dispose()
    migrate_sqlite(tmp_path / "first.db")
    migrate_sqlite(tmp_path / "copied.db")  # from the process's template, however it was made

    expected = _sqlite_schema(migrated)
    assert len(expected["objects"]) > 20 and expected["version"] == [(head_revision(),)]
    assert _sqlite_schema(tmp_path / "copied.db") == expected
    copied = create_engine(f"sqlite:///{tmp_path / 'copied.db'}")
    try:
        assert current_revision(copied) == head_revision()
    finally:
        copied.dispose()


_CATALOGUE = {
    "columns": """SELECT table_name, column_name, ordinal_position, data_type, is_nullable, column_default,
                         character_maximum_length, numeric_precision, is_identity
                  FROM information_schema.columns WHERE table_schema = current_schema()""",
    "constraints": """SELECT rel.relname, con.conname, con.contype, pg_get_constraintdef(con.oid)
                      FROM pg_constraint con JOIN pg_class rel ON rel.oid = con.conrelid
                      WHERE rel.relnamespace = current_schema()::regnamespace""",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()",
    "sequences": """SELECT sequence_name, data_type, start_value, increment FROM information_schema.sequences
                    WHERE sequence_schema = current_schema()""",
    "triggers": """SELECT event_object_table, trigger_name, event_manipulation, action_statement
                   FROM information_schema.triggers WHERE trigger_schema = current_schema()""",
    "functions": """SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p
                    WHERE p.pronamespace = current_schema()::regnamespace""",
    "views": "SELECT viewname, definition FROM pg_views WHERE schemaname = current_schema()",
    "version": "SELECT version_num FROM alembic_version",
}


def _postgres_schema(engine) -> dict:
    with engine.connect() as conn:
        schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
        return {
            name: sorted(tuple(str(v).replace(schema, "<schema>") for v in row) for row in conn.exec_driver_sql(sql))
            for name, sql in _CATALOGUE.items()
        }


def test_a_replayed_postgres_migration_is_the_migration():
    made = []
    try:
        for _ in range(2):  # the first records the migration unless an earlier test did; the second replays it
            engine, drop, _url = _postgres_engine()
            made.append(drop)
            migrate_postgres(engine)
        migrated, drop, _url = _postgres_engine()
        made.append(drop)
        upgrade(migrated)

        expected = _postgres_schema(migrated)
        assert len(expected["columns"]) > 100 and expected["version"] == [(head_revision(),)]
        assert _postgres_schema(engine) == expected
        with engine.begin() as conn:  # and it takes writes: its sequences are its own
            assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    finally:
        for drop in made:
            drop()
