"""Alembic's entry point: run the revisions on the connection the ledger
passes (tasks.ledger.migrations.upgrade), or, for a developer writing a
revision, on the database given by ``-x url=...`` or alembic.ini."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from tasks.ledger.schema import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is not None:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    else:
        with sa.create_engine(url or "").connect() as developer_connection:
            context.configure(connection=developer_connection, target_metadata=metadata)
            with context.begin_transaction():
                context.run_migrations()
