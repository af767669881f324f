"""Durable state for the local service: SQLite for records, files for blobs.

With a data directory everything survives a restart; without one the same
code runs on an in-memory SQLite database and a dict of blobs, so there is one
code path to test. Records are JSON documents keyed by (kind, id): the service
has few kinds and loads each fully at start-up, so a relational schema would
buy nothing but migrations.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DataDirInUse(Exception):
    """Another service (or a service's crash recovery) holds the directory."""


class Store:
    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = data_dir
        self._lock = threading.RLock()
        self._blobs: dict[str, bytes] = {}
        self._dir_lock: int | None = None
        if data_dir is None:
            self._db = sqlite3.connect(":memory:", check_same_thread=False)
        else:
            data_dir.mkdir(parents=True, exist_ok=True)
            self._dir_lock = _hold_exclusively(data_dir)
            (data_dir / "blobs").mkdir(exist_ok=True)
            _remove_cut_off_writes(data_dir / "blobs")
            self._db = sqlite3.connect(data_dir / "state.sqlite", check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records ("
            "kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, id))"
        )
        self._db.commit()

    def put(self, kind: str, record_id: str, body: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO records (kind, id, body) VALUES (?, ?, ?)",
                (kind, record_id, json.dumps(body)),
            )
            self._db.commit()

    def put_many(self, kind: str, items: dict[str, dict[str, Any]]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO records (kind, id, body) VALUES (?, ?, ?)",
                [(kind, rid, json.dumps(body)) for rid, body in items.items()],
            )
            self._db.commit()

    def delete(self, kind: str, record_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM records WHERE kind = ? AND id = ?", (kind, record_id))
            self._db.commit()

    def load(self, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, body FROM records WHERE kind = ? ORDER BY rowid", (kind,)
            ).fetchall()
        for record_id, body in rows:
            yield record_id, json.loads(body)

    def _blob_path(self, key: str) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "blobs" / key

    def put_blob(self, key: str, data: bytes) -> None:
        if self.data_dir is None:
            self._blobs[key] = bytes(data)
            return
        path = self._blob_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def get_blob(self, key: str) -> bytes:
        if self.data_dir is None:
            return self._blobs[key]
        try:
            return self._blob_path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def delete_blob(self, key: str) -> None:
        if self.data_dir is None:
            self._blobs.pop(key, None)
            return
        self._blob_path(key).unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._dir_lock is not None:
                os.close(self._dir_lock)  # closing the descriptor releases the lock
                self._dir_lock = None


def _hold_exclusively(data_dir: Path) -> int:
    """Two services on one directory would each trust its own copy of the
    records and undo each other's imports on restart; the second is refused.
    The kernel drops the lock when the holder dies, so a crash never leaves
    the directory locked."""
    descriptor = os.open(data_dir / "service.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise DataDirInUse(
            f"{data_dir} is in use by another local service: stop it, or give another "
            "--data-dir"
        ) from None
    return descriptor


def _remove_cut_off_writes(blobs: Path) -> None:
    """A ``.tmp`` file is a blob whose write a crash cut off before its
    rename: no record refers to it, and with the directory held exclusively
    no write is under way."""
    for partial in blobs.rglob("*.tmp"):
        partial.unlink(missing_ok=True)
