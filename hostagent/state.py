"""hostagent's own persistent state (baselines, counters): SQLite in the state directory.

Each put is its own transaction, so a crash never leaves half a record.  Without a state
directory (a snapshot checked offline) the store lives in memory for the run.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from hostagent.errors import HostagentError

STATE_FILE = "state.db"


class StateStore:
    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        if self.directory is None:
            target = ":memory:"
        else:
            try:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as err:
                raise HostagentError(f"state directory {self.directory}: {err.strerror or err}") from None
            target = str(self.directory / STATE_FILE)
        try:
            self._db = sqlite3.connect(target, timeout=10, isolation_level=None)
            self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        except sqlite3.Error as err:
            raise HostagentError(f"state database {target}: {err}") from None

    def get(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def items(self, prefix: str) -> dict[str, Any]:
        rows = self._db.execute("SELECT key, value FROM kv WHERE key >= ? AND key < ?", (prefix, prefix + "\uffff"))
        return {key: json.loads(value) for key, value in rows}

    def close(self) -> None:
        self._db.close()
