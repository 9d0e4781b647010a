"""Alembic environment: migrates the connection handed over by ``Database.open()``.

Run from the ``alembic`` command line (with ``alembic.ini`` here and a synchronous
``sqlalchemy.url``) it opens its own connection, which is useful for writing new revisions.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from sipswitch.store.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        context.configure(
            url=config.get_main_option("sqlalchemy.url"),
            target_metadata=metadata,
            literal_binds=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url (a synchronous driver URL) to run alembic directly")
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as own_connection:
            _run(own_connection)
            own_connection.commit()
    finally:
        engine.dispose()


_main()
