"""The ledger's schema through Alembic: a fresh ledger, a ledger made before
migrations, and two processes opening one at the same moment."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from tasks.discover import SourceFile
from tasks.ledger import Inventory, RunLedger, engine_for
from tasks.ledger.migrations import alembic_config
from tasks.ledger.schema import metadata
from tests.operations.claiming import claim

DATASTORE = "0123456789abcdef0123456789abcdef"
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def _revision(url: str) -> str | None:
    with sa.create_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_the_revisions_build_exactly_the_declared_tables(empty_ledger_url: str) -> None:
    """Whoever changes tasks/ledger/schema.py without a revision (or the other
    way round) hears it here."""
    with engine_for(empty_ledger_url).connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == []
    assert _revision(empty_ledger_url) == HEAD


def test_a_ledger_from_before_migrations_is_adopted_with_its_rows(tmp_path: Path) -> None:
    """Tables there, no alembic_version: the columns added since are added,
    the tables missing are created, the rows are kept, and it is stamped."""
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE ledger_files (datastore_id VARCHAR(64) NOT NULL, uri VARCHAR(2048) "
            "NOT NULL, source TEXT NOT NULL, relative_path TEXT NOT NULL, size BIGINT, "
            "version VARCHAR(256), sha256 VARCHAR(64), status VARCHAR(32), "
            "error_type VARCHAR(256), reason TEXT, job_id VARCHAR(32), "
            "attempts INTEGER DEFAULT '0' NOT NULL, run_id VARCHAR(64), "
            "claim_owner VARCHAR(64), claim_expires_at DATETIME, "
            "first_seen_at DATETIME NOT NULL, updated_at DATETIME NOT NULL, "
            "PRIMARY KEY (datastore_id, uri))")
        old.execute(
            "INSERT INTO ledger_files (datastore_id, uri, source, relative_path, size, "
            "version, status, attempts, first_seen_at, updated_at) VALUES (?, '/landing/a.dcm', "
            "'/landing', 'a.dcm', 10, 'v1', 'imported', 1, '2026-01-01 00:00:00', "
            "'2026-01-01 00:00:00')", (DATASTORE,))
    url = f"sqlite:///{path}"

    ledger = RunLedger(url, "after-upgrade", DATASTORE)
    ledger.start_run("dicom-ingest", "/landing")
    claimed = claim(ledger, [SourceFile("/landing/a.dcm", 10, "v1", "a.dcm"),
                             SourceFile("/landing/b.dcm", 20, "v1", "b.dcm")], skip_unchanged=True)

    assert [f.uri for f in claimed.files] == ["/landing/b.dcm"]  # a.dcm: imported, unchanged
    assert claimed.skipped_unchanged == 1
    assert _revision(url) == HEAD
    inspector = sa.inspect(engine_for(url))
    assert set(inspector.get_table_names()) >= {t.name for t in metadata.sorted_tables}
    columns = {c["name"] for c in inspector.get_columns("ledger_files")}
    assert {"claim_change", "output_missing_run_id", "sop_instance_uid"} <= columns


def test_a_migration_listed_before_instances_were_kept_keeps_what_its_windows_kept(
    tmp_path: Path,
) -> None:
    """An inventory part done at revision 0004: after the upgrade, a later
    window's copy of an instance an earlier window imported is its duplicate."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    with sa.create_engine(url).begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, "0004")
        for uri, status, done in (("/landing/a.dcm", "imported", True),
                                  ("/landing/b.dcm", "invalid", True),
                                  ("/landing/c.dcm", "imported", False)):
            conn.execute(sa.text(
                "INSERT INTO ledger_files (datastore_id, uri, source, relative_path, status, "
                "attempts, sop_instance_uid, first_seen_at, updated_at) VALUES (:d, :u, "
                "'/landing', :u, :s, 1, :sop, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"),
                {"d": DATASTORE, "u": uri, "s": status,
                 "sop": "1.2.3" if uri != "/landing/b.dcm" else "1.2.4"})
            conn.execute(sa.text(
                "INSERT INTO ledger_inventory (inventory_id, datastore_id, uri, relative_path, "
                "size, version, change, done) VALUES ('migration', :d, :u, :u, 1, 'v1', 'new', "
                ":done)"), {"d": DATASTORE, "u": uri, "done": done})

    inventory = Inventory(RunLedger(url, "after-upgrade", DATASTORE), "migration")
    assert inventory.keep_instances({"1.2.3": "/landing/z.dcm", "1.2.4": "/landing/y.dcm"}) == {
        "1.2.3": "/landing/a.dcm"}  # b.dcm was refused: y.dcm is kept
    assert _revision(url) == HEAD


def _open(url: str, run_id: str, barrier: threading.Barrier) -> str | None:
    barrier.wait()
    RunLedger(url, run_id, DATASTORE).start_run("dicom-ingest", "/landing")
    with engine_for(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@pytest.mark.slow
def test_processes_opening_an_empty_ledger_at_once_all_get_it(empty_ledger_url: str) -> None:
    processes = 4
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        barrier = manager.Barrier(processes)
        with context.Pool(processes) as pool:
            revisions = pool.starmap(
                _open, [(empty_ledger_url, f"run-{i}", barrier) for i in range(processes)])
    assert revisions == [HEAD] * processes
    with engine_for(empty_ledger_url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(
            metadata.tables["ledger_runs"])).scalar_one() == processes
