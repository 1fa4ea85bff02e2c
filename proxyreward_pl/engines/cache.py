"""A persistent cache of engine results: SQLite (WAL), one committed row per answered request."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path


class EngineCache:
    """key -> JSON payload. Each put is its own transaction, so a killed run keeps everything it was paid for."""

    def __init__(self, path: Path):
        self.path = path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, payload TEXT NOT NULL, "
                         "created REAL DEFAULT (julianday('now')))")

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT payload FROM results WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, payload: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO results (key, payload) VALUES (?, ?)", (key, json.dumps(payload)))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM results").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
