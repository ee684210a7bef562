"""SQLite: ids of outbox entries, conflicts, subscriptions and deliveries are never reused

Without AUTOINCREMENT, SQLite gives a new row the largest rowid plus one, so after the newest row is
deleted (a subscription deleted, a delivery going with it, a done outbox entry pruned) the next row takes
its id. An id is part of the API (`DELETE /subscriptions/{id}`, `POST /deliveries/{id}/skip`,
`POST /outbox/{id}/replay`): a client repeating a request whose answer it lost would then act on another
row. AUTOINCREMENT makes SQLite hand out ids above every one it ever gave (https://sqlite.org/autoinc.html),
as PostgreSQL's sequences already do. SQLite cannot add it to a table, so each table is made again under
its own name, rows, ids and indexes kept (https://sqlite.org/lang_altertable.html, "other kinds of table
schema changes"); the environment runs migrations with foreign keys off and checks them afterwards
(migrations/env.py), so that dropping `subscriptions` does not cascade to `deliveries`.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

import re

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TABLES = ("outbox", "sync_conflicts", "subscriptions", "deliveries")
# As SQLAlchemy created them: "id INTEGER NOT NULL," and a named table constraint "PRIMARY KEY (id)".
_ID_COLUMN = re.compile(r"\bid INTEGER NOT NULL(?=\s*,)")
_PK_CONSTRAINT = re.compile(r",\s*CONSTRAINT \"?pk_\w+\"? PRIMARY KEY \(id\)")
_WITH_AUTOINCREMENT = re.compile(r"\bid INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT\b")


def _remake(table: str, *, autoincrement: bool) -> None:
    bind = op.get_bind()
    sql = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).scalar_one()
    indexes = [
        row[0]
        for row in bind.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (table,)
        )
    ]
    if autoincrement:
        if _WITH_AUTOINCREMENT.search(sql):
            return
        remade, columns = _ID_COLUMN.subn("id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT", sql, count=1)
        remade, constraints = _PK_CONSTRAINT.subn("", remade, count=1)
    else:
        remade, columns = _WITH_AUTOINCREMENT.subn("id INTEGER NOT NULL", sql, count=1)
        remade = remade.rstrip().removesuffix(")").rstrip() + f",\n\tCONSTRAINT pk_{table} PRIMARY KEY (id)\n)"
        constraints = 1
    if columns != 1 or constraints != 1:
        raise RuntimeError(f"table {table} is not as migration 0012 left it: {sql}")
    remade = re.sub(rf"^CREATE TABLE \"?{table}\"?", f"CREATE TABLE _remade_{table}", remade, count=1)
    op.execute(remade)
    op.execute(f"INSERT INTO _remade_{table} SELECT * FROM {table}")  # noqa: S608  (a fixed table name)
    op.execute(f"DROP TABLE {table}")
    op.execute(f"ALTER TABLE _remade_{table} RENAME TO {table}")
    for index in indexes:
        op.execute(index)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in TABLES:
            _remake(table, autoincrement=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in reversed(TABLES):
            _remake(table, autoincrement=False)
