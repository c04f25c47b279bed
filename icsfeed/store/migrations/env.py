"""Alembic's environment for icsfeed: the connection comes from icsfeed.store.migrate (which
holds the lock that serialises upgrades); with the alembic command line, from ``-x url=…``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from icsfeed.store.schema import metadata

config = context.config


def run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=metadata, compare_type=True,
                      # SQLite alters most columns by copying the table
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def url() -> str:
    given = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not given:
        raise SystemExit("give the database: alembic -x url=sqlite:///path/to/icsfeed.db …")
    return given


if context.is_offline_mode():  # `alembic upgrade --sql`: the SQL a DBA can review and run
    context.configure(url=url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif config.attributes.get("connection") is not None:
    run(config.attributes["connection"])
else:
    with create_engine(url()).connect() as conn:
        run(conn)
        conn.commit()
