"""The maintenance journal: the single source of truth for a scheduled reboot.

APScheduler hands a one-shot job out at most once, so progress lives here: a JSON file
written atomically and fsync'd at every change, with the run's phase and a record per guest.
Transitions are checked, so the journal can only ever tell the truth about what was done.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hostagent.errors import HostagentError

PHASES = ("planned", "preflight", "saving", "rebooting", "restoring", "done", "failed", "cancelled", "missed")
FINAL = ("done", "failed", "cancelled", "missed")
NEXT_PHASE = {
    "planned": ("preflight", "cancelled", "missed"),
    "preflight": ("saving", "failed", "cancelled"),
    "saving": ("rebooting", "failed", "restoring"),  # restoring: an aborted save brings guests back
    "rebooting": ("restoring",),
    "restoring": ("done", "failed"),
}
GUEST_STATES = ("planned", "saving", "saved", "save_failed", "shut_down", "skipped", "restoring", "running",
                "restore_failed", "cold_booted")
NEXT_GUEST = {
    "planned": ("saving", "skipped"),
    "saving": ("saved", "save_failed", "restoring"),  # restoring: the save was interrupted (worker killed)
    "save_failed": ("shut_down", "skipped", "restoring"),
    "saved": ("restoring",),
    "shut_down": ("restoring",),
    "skipped": ("restoring",),
    "restoring": ("running", "restore_failed", "restoring"),
    "restore_failed": ("restoring", "cold_booted"),
}


class JournalError(HostagentError):
    """An impossible transition or an unreadable journal."""


@dataclass(frozen=True)
class GuestRecord:
    name: str
    state: str = "planned"
    image: str | None = None  # where the saved memory is (managed save or file)
    owner: str | None = None
    save_started: float | None = None
    running_again: float | None = None
    attempts: int = 0
    error: str | None = None

    @property
    def downtime_s(self) -> float | None:
        if self.save_started is None or self.running_again is None:
            return None
        return self.running_again - self.save_started


@dataclass(frozen=True)
class Journal:
    id: str
    reboot_at: float
    reason: str
    phase: str = "planned"
    created: float = field(default_factory=time.time)
    history: tuple[tuple[str, float], ...] = ()
    guests: dict[str, GuestRecord] = field(default_factory=dict)
    error: str | None = None
    force: bool = False  # the operator's overrides at scheduling time hold for the run
    force_unbootable: bool = False
    notify_owners: bool = False
    sent: tuple[str, ...] = ()  # notices and reports already mailed ("before:3600", "after", "report")
    boot_id: str | None = None  # the kernel's boot id when the reboot command ran

    @classmethod
    def new(cls, reboot_at: float, reason: str, guests: list[str], owners: dict[str, str] | None = None,
            force: bool = False, force_unbootable: bool = False, notify_owners: bool = False) -> Journal:
        now = time.time()
        records = {g: GuestRecord(g, owner=(owners or {}).get(g)) for g in guests}
        return cls(uuid.uuid4().hex[:12], reboot_at, reason, "planned", now, (("planned", now),), records,
                   None, force, force_unbootable, notify_owners)

    def entered(self, phase: str) -> float | None:
        """When the journal last entered this phase."""
        times = [at for name, at in self.history if name == phase]
        return times[-1] if times else None

    def mark_sent(self, *keys: str) -> Journal:
        return replace(self, sent=(*self.sent, *(k for k in keys if k not in self.sent)))

    @property
    def final(self) -> bool:
        return self.phase in FINAL

    def advance(self, phase: str, now: float | None = None, error: str | None = None, **changes: Any) -> Journal:
        if phase not in NEXT_PHASE.get(self.phase, ()):
            raise JournalError(f"maintenance {self.id}: cannot go from {self.phase} to {phase}")
        at = time.time() if now is None else now
        return replace(self, phase=phase, history=(*self.history, (phase, at)), error=error or self.error, **changes)

    def guest(self, name: str, state: str, **changes: Any) -> Journal:
        record = self.guests[name]
        if state != record.state and state not in NEXT_GUEST.get(record.state, ()):
            raise JournalError(f"maintenance {self.id}: guest {name} cannot go from {record.state} to {state}")
        return replace(self, guests={**self.guests, name: replace(record, state=state, **changes)})

    def row(self) -> dict[str, Any]:
        """The summary ``maintenance list --json`` prints and ``hostagent rpc`` returns."""
        import datetime as dt

        from hostagent.maintenance.when import describe

        at = dt.datetime.fromtimestamp(self.reboot_at, dt.UTC)
        return {"id": self.id, "phase": self.phase, "reason": self.reason, "reboot_at": describe(at),
                "reboot_at_utc": at.isoformat(), "notify_owners": self.notify_owners, "sent": list(self.sent),
                "history": [{"phase": phase, "at": when} for phase, when in self.history],
                "guests": {n: {"state": g.state, "owner": g.owner, "downtime_s": g.downtime_s,
                               "attempts": g.attempts, "error": g.error} for n, g in self.guests.items()},
                "error": self.error}

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "reboot_at": self.reboot_at, "reason": self.reason, "phase": self.phase,
                "created": self.created, "history": [list(h) for h in self.history], "error": self.error,
                "force": self.force, "force_unbootable": self.force_unbootable,
                "notify_owners": self.notify_owners, "sent": list(self.sent), "boot_id": self.boot_id,
                "guests": {name: asdict(record) for name, record in self.guests.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Journal:
        return cls(data["id"], data["reboot_at"], data["reason"], data["phase"], data["created"],
                   tuple((phase, at) for phase, at in data["history"]),
                   {name: GuestRecord(**record) for name, record in data["guests"].items()}, data.get("error"),
                   bool(data.get("force")), bool(data.get("force_unbootable")), bool(data.get("notify_owners")),
                   tuple(data.get("sent", ())), data.get("boot_id"))


class JournalStore:
    """Journals as files ``<dir>/<id>.json``, each write atomic and fsync'd (file and directory)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, journal: Journal) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.directory / f"{journal.id}.json"
        tmp = target.with_suffix(".tmp")
        with tmp.open("w") as handle:
            json.dump(journal.to_json(), handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def load(self, journal_id: str) -> Journal:
        path = self.directory / f"{journal_id}.json"
        try:
            return Journal.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise JournalError(f"no maintenance {journal_id} in {self.directory}") from None
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise JournalError(f"{path}: unreadable maintenance journal: {err}") from None

    def all(self) -> list[Journal]:
        if not self.directory.exists():
            return []
        return sorted((self.load(p.stem) for p in self.directory.glob("*.json")), key=lambda j: j.reboot_at)

    def active(self) -> Journal | None:
        """The one maintenance not yet final, if any."""
        pending = [j for j in self.all() if not j.final]
        return pending[0] if pending else None
