"""The controller's store (SQLite): every host's last contact and report, and the report history.

History older than the retention is pruned after each poll.  Alert state lives in the same
directory, in the agent's own StateStore, through the shared Alerter.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from hostagent.errors import HostagentError
from hostagent.records import record

SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY, address TEXT, groups TEXT, last_attempt REAL, last_seen REAL, last_error TEXT,
    version TEXT, status TEXT, findings TEXT, maintenance TEXT, poll_seconds REAL);
CREATE TABLE IF NOT EXISTS reports (
    host TEXT NOT NULL, at REAL NOT NULL, status TEXT NOT NULL, report TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS reports_by_host ON reports (host, at);
"""


@record(frozen=True)
class HostState:
    name: str
    address: str
    groups: tuple[str, ...]
    last_attempt: float | None
    last_seen: float | None
    last_error: str | None
    version: str | None
    status: str | None  # the worst status of the last report
    findings: list[dict[str, Any]]
    maintenance: dict[str, Any] | None
    poll_seconds: float | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "groups": list(self.groups),
                "last_attempt": self.last_attempt, "last_seen": self.last_seen, "last_error": self.last_error,
                "version": self.version, "status": self.status, "findings": self.findings,
                "maintenance": self.maintenance, "poll_seconds": self.poll_seconds}


class FleetStore:
    def __init__(self, directory: Path) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(directory / "fleet.sqlite", timeout=10, isolation_level=None,
                                       check_same_thread=False)
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise HostagentError(f"fleet store in {directory}: {err}") from None
        self._lock = threading.Lock()

    def record_success(self, name: str, address: str, groups: tuple[str, ...], at: float, seconds: float,
                       version: str, report: dict[str, Any], maintenance: dict[str, Any] | None) -> None:
        status = str(report.get("status", "UNKNOWN"))
        findings = list(report.get("findings", []))
        with self._lock:
            self._db.execute("INSERT INTO hosts VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
                             "address=excluded.address, groups=excluded.groups, last_attempt=excluded.last_attempt, "
                             "last_seen=excluded.last_seen, last_error=NULL, version=excluded.version, "
                             "status=excluded.status, findings=excluded.findings, "
                             "maintenance=excluded.maintenance, poll_seconds=excluded.poll_seconds",
                             (name, address, json.dumps(list(groups)), at, at, None, version, status,
                              json.dumps(findings), json.dumps(maintenance), seconds))
            self._db.execute("INSERT INTO reports VALUES (?,?,?,?)", (name, at, status, json.dumps(report)))

    def record_failure(self, name: str, address: str, groups: tuple[str, ...], at: float, error: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO hosts (name, address, groups, last_attempt, last_error) VALUES (?,?,?,?,?) "
                             "ON CONFLICT(name) DO UPDATE SET address=excluded.address, groups=excluded.groups, "
                             "last_attempt=excluded.last_attempt, last_error=excluded.last_error",
                             (name, address, json.dumps(list(groups)), at, error))

    def hosts(self) -> list[HostState]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM hosts ORDER BY name").fetchall()
        return [HostState(r[0], r[1], tuple(json.loads(r[2] or "[]")), r[3], r[4], r[5], r[6], r[7],
                          json.loads(r[8] or "[]"), json.loads(r[9]) if r[9] else None, r[10]) for r in rows]

    def history(self, name: str, limit: int = 100) -> list[tuple[float, str]]:
        with self._lock:
            return list(self._db.execute("SELECT at, status FROM reports WHERE host=? ORDER BY at DESC LIMIT ?",
                                         (name, limit)).fetchall())

    def history_since(self, name: str, since: float) -> list[tuple[float, str]]:
        """(time, status) of every kept report of the host since ``since``, oldest first."""
        with self._lock:
            return list(self._db.execute("SELECT at, status FROM reports WHERE host=? AND at >= ? ORDER BY at",
                                         (name, since)).fetchall())

    def latest_report(self, name: str) -> dict[str, Any] | None:
        """The host's last report as it sent it, or None (never polled, or a row that is not JSON)."""
        with self._lock:
            row = self._db.execute("SELECT report FROM reports WHERE host=? ORDER BY at DESC LIMIT 1",
                                   (name,)).fetchone()
        try:
            report = json.loads(row[0]) if row else None
        except ValueError:
            return None
        return report if isinstance(report, dict) else None

    def forget(self, names: set[str]) -> None:
        """Hosts no longer in the inventory."""
        with self._lock:
            for name in names:
                self._db.execute("DELETE FROM hosts WHERE name=?", (name,))

    def prune(self, older_than: float) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM reports WHERE at < ?", (older_than,)).rowcount
