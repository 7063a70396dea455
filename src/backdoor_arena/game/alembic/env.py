"""Alembic environment: run programmatically by `db.migrate` with a connection in `config.attributes`."""

from alembic import context

from backdoor_arena.game.db import Base

connection = context.config.attributes.get("connection")
if connection is None:  # the `alembic` command line: an engine from sqlalchemy.url
    from sqlalchemy import create_engine

    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
