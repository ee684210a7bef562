"""Alembic environment: runs migrations on the engine planbridge hands over in config.attributes.

On SQLite, migrations run with foreign keys off, as SQLite's procedure for changing a table's schema
requires (https://sqlite.org/lang_altertable.html): a migration that makes a table again drops the old
one, and with foreign keys on, that drop would delete the rows that refer to it (ON DELETE CASCADE).
The pragma only takes effect outside a transaction, so it is set before the migrations' transaction
begins; once it has committed, `PRAGMA foreign_key_check` must find nothing, and foreign keys are on again
before the connection goes back to the pool.
"""

from typing import Any

from alembic import context

from service.store.tables import Base

engine = context.config.attributes["engine"]


def _raw(connection: Any) -> Any:
    return connection.connection.dbapi_connection


with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        _raw(connection).execute("PRAGMA foreign_keys=OFF")
    try:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=sqlite,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
        if sqlite:
            broken = _raw(connection).execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"the migrations left rows whose foreign keys point nowhere: {broken[:5]}")
    finally:
        if sqlite:
            _raw(connection).execute("PRAGMA foreign_keys=ON")
