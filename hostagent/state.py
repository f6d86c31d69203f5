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
    def __init__(self, directory: str | os.PathLike[str] | None, timeout: float = 10.0) -> None:
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
            self._db = sqlite3.connect(target, timeout=timeout, isolation_level=None)
        except sqlite3.Error as err:
            raise HostagentError(f"state database {target}: {err}") from None
        self._ready = False
        try:
            self._table()
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) and "busy" not in str(err):
                raise HostagentError(f"state database {target}: {err}") from None
            # another process holds it: the table is made at the next use; until then reads and writes
            # fail like any other on a locked database (the daemon starts all the same)
        except sqlite3.Error as err:
            raise HostagentError(f"state database {target}: {err}") from None

    def _table(self) -> None:
        if not self._ready:
            self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._ready = True

    def get(self, key: str) -> Any:
        self._table()
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        self._table()
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def items(self, prefix: str) -> dict[str, Any]:
        self._table()
        rows = self._db.execute("SELECT key, value FROM kv WHERE key >= ? AND key < ?", (prefix, prefix + "\uffff"))
        return {key: json.loads(value) for key, value in rows}

    def close(self) -> None:
        self._db.close()
