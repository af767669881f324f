r"""The ledger's schema migrations, run by Alembic when a process first opens
a ledger: any ledger, fresh or made by an earlier version, is brought to the
newest revision before it is used.

Two processes opening one ledger at once must not both migrate it: the
upgrade runs in one transaction that holds the SQLite write lock (every
ledger transaction begins IMMEDIATE) or a PostgreSQL advisory lock, so the
second waits, then finds the ledger at the newest revision.

To change the schema (a new table, a new column):

1. change the tables in ``tasks/ledger/schema.py``;
2. from the repository root, write the revision that makes that change::

       .venv/bin/alembic -c tasks/ledger/migrations/alembic.ini revision \
           --rev-id 0002 -m "ledger inventory"

   or have Alembic draft it from the difference between schema.py and a
   ledger at the previous revision (``-x url=`` before the command)::

       .venv/bin/alembic -c tasks/ledger/migrations/alembic.ini \
           -x url=sqlite:///ledger-dev.sqlite upgrade head
       .venv/bin/alembic -c tasks/ledger/migrations/alembic.ini \
           -x url=sqlite:///ledger-dev.sqlite revision --autogenerate \
           --rev-id 0002 -m "ledger inventory"

   Number revisions in order, each revising the one before;
3. fill in its ``upgrade()`` with ``op.create_table``/``op.add_column``:
   never import the tables from schema.py into a revision, which must do
   the same thing for ever.

tests/operations/test_ledger_migrations.py checks that the revisions build
exactly the tables schema.py declares.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

FOLDER = Path(__file__).resolve().parent
# Any constant, the same in every process: the key of the PostgreSQL
# advisory lock that one migrating process holds.
_ADVISORY_LOCK_KEY = 0x1ED6E2


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(FOLDER))
    return config


def upgrade(engine: Engine) -> None:
    """Bring the ledger to the newest revision, one process at a time."""
    config = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ADVISORY_LOCK_KEY)))
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
