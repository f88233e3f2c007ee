"""Alembic environment: the service's own tables (store.tables.Base), on the engine it hands in."""

from __future__ import annotations

from alembic import context

from store.tables import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # `alembic` CLI use: build an engine from the URL in the config
        from store.engine import make_engine

        engine = make_engine(config.get_main_option("sqlalchemy.url"))
        with engine.begin() as connection:
            context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
            context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run()
