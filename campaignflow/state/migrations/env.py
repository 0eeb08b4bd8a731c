"""Alembic environment of the campaignflow state store.

Run programmatically by :meth:`campaignflow.state.store.StateStore.migrate`, which passes an open
SQLAlchemy connection (already inside a transaction, holding the migration lock) in
``config.attributes["connection"]``. Without one (a developer running the ``alembic`` command
with ``sqlalchemy.url`` set), a connection is opened from the URL; offline (``--sql``) mode
renders the SQL for the URL's dialect.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import create_engine

from campaignflow.state.store import VERSION_TABLE
from campaignflow.state.tables import metadata

config = context.config
target_metadata = metadata


def _include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    # The state store may share a database with other tools (the Dagster instance, say):
    # autogenerate looks only at our own tables.
    if type_ == "table":
        return name in target_metadata.tables
    return True


def _options(dialect_name: str) -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "version_table": config.attributes.get("version_table", VERSION_TABLE),
        "render_as_batch": dialect_name == "sqlite",
        "include_name": _include_name,
        "compare_type": True,
    }


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("offline migrations need sqlalchemy.url")
    dialect_name = url.split(":", 1)[0].split("+", 1)[0]
    context.configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **_options(dialect_name))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **_options(connection.dialect.name))
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError('pass a connection in config.attributes["connection"] or set sqlalchemy.url')
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context.configure(connection=conn, **_options(conn.dialect.name))
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
