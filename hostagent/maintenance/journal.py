"""The maintenance journal: the single source of truth for a scheduled reboot.

APScheduler hands a one-shot job out at most once, so progress lives here: a JSON file
written atomically and fsync'd at every change, with the run's phase and a record per guest.
Transitions are checked, so the journal can only ever tell the truth about what was done.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hostagent.durable import LOCK_WAIT, LockTimeout, read_bounded, write_durable
from hostagent.errors import HostagentError
from hostagent.maintenance.when import TimeRangeError, at, checked_time
from hostagent.records import field, record, replace

PHASES = ("planned", "preflight", "saving", "rebooting", "restoring", "done", "failed", "cancelled", "missed")
FINAL = ("done", "failed", "cancelled", "missed")
NEXT_PHASE = {
    "planned": ("preflight", "cancelled", "missed"),
    "preflight": ("saving", "failed", "cancelled"),
    "saving": ("rebooting", "failed", "restoring"),  # restoring: a cancel or an aborted save brings guests back
    "rebooting": ("restoring",),
    "restoring": ("done", "failed", "cancelled"),  # cancelled: the guests a cancel found saved run again
}
CANCELLABLE = ("planned", "preflight", "saving")
GUEST_STATES = ("planned", "saving", "saved", "save_failed", "shut_down", "skipped", "stopped", "restoring",
                "running", "restore_failed", "cold_booted", "lost")
NEXT_GUEST = {
    # stopped: found stopped after a maintenance that never began its save (someone else stopped it)
    "planned": ("saving", "skipped", "save_failed", "stopped"),
    # restoring: the save was interrupted (worker killed); restore_failed: the restore raised before its first try
    "saving": ("saved", "save_failed", "restoring", "restore_failed", "lost"),
    "save_failed": ("shut_down", "skipped", "restoring", "restore_failed", "lost"),
    # planned: found running again at the final listing before the reboot (I1), so it is saved again
    "saved": ("restoring", "restore_failed", "lost", "planned"),
    "shut_down": ("restoring", "restore_failed", "lost", "planned"),
    "stopped": ("planned",),
    "skipped": ("restoring", "restore_failed", "lost"),
    "restoring": ("running", "restore_failed", "restoring", "cold_booted", "lost"),
    # running: another service started it between hostagent's attempts (phases._restore_guest)
    "restore_failed": ("restoring", "cold_booted", "lost", "running"),
}
# How a guest that was not saved went down: shut down after its save failed, with the host (on_save_failure
# = "skip"), or found down after a maintenance that stopped before its save began (a crash, a kill)
UNSAVED = ("shut_down", "with_host", "not_begun")
# The one truthful outcome of each guest, from which the journal, status, the report and the notices speak.
OUTCOMES = {
    "restored": "restored from its memory image: the guest saw no reboot",
    "cold_booted": "booted afresh after its restore failed (its memory image is kept)",
    "restarted": "not saved (its save failed): shut down and booted again",
    "left_stopped": "stopped before the maintenance: left stopped",
    "lost": "NOT RUNNING after the maintenance",
}
ID_PATTERN = re.compile(r"[0-9a-f]{12}")
MAX_JOURNAL_BYTES = 4 << 20


class JournalError(HostagentError):
    """An impossible transition or an unreadable journal."""


class PhaseMoved(JournalError):
    """A compare-and-set refused: the journal on disk had moved on (cancelled, finished) meanwhile."""

    def __init__(self, journal: Journal, message: str) -> None:
        super().__init__(message)
        self.journal = journal


class JournalWriteError(JournalError):
    """The journal could not be written (a full disk, a read-only file system): nothing changed."""


@record(frozen=True)
class GuestRecord:
    name: str
    state: str = "planned"
    image: str | None = None  # where the saved memory is (managed save or file)
    owner: str | None = None
    save_started: float | None = None
    running_again: float | None = None
    attempts: int = 0
    error: str | None = None
    outcome: str | None = None  # one of OUTCOMES, once the maintenance is over for this guest
    added: bool = False  # running at the scheduled time, not at scheduling: added at run time
    restored_by: str | None = None  # "hostagent", or the service that restored it first
    kept_image: str | None = None  # a memory image kept after a cold boot
    clock: str | None = None  # "set", or why the guest's clock could not be set after the restore
    unsaved: str | None = None  # how a guest that was not saved went down (UNSAVED)
    # started by something other than hostagent after it went down ("saved" or "shut_down": how it had gone
    # down), found running by the final listing and saved again; from its image or afresh, nobody can tell
    started_again: str | None = None
    down_since: float | None = None  # when it first went down, when that was before its last save (started_again)

    @property
    def went_down(self) -> float | None:
        """When the guest's interruption began: its first save, or its only one."""
        return self.down_since if self.down_since is not None else self.save_started

    @property
    def downtime_s(self) -> float | None:
        """Seconds from the start of its (first) save to running again; None when unknown (``downtime_unknown``)."""
        down = self.went_down
        if down is None or self.running_again is None or self.running_again < down:
            return None
        return self.running_again - down

    @property
    def downtime_unknown(self) -> str | None:
        """Why a guest that went down has no downtime: the wall clock went back across the reboot (the
        only clock that spans one), or it never ran again."""
        down = self.went_down
        if down is None:
            return None
        if self.running_again is None:
            return "it did not run again" if self.outcome == "lost" else None
        if self.running_again < down:
            return f"unknown: the host's clock went back {down - self.running_again:.0f} s across the reboot"
        return None


@record(frozen=True)
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
    boot_id: str | None = None  # the kernel's boot id when the saves began, then when the reboot command ran
    cancelled: bool = False  # a cancel arrived after the run started: no reboot, guests restored
    reboot_issued: float | None = None  # when the reboot command returned (absent: it may never have run)
    hypervisor: str | None = None  # the backend the guests were planned with (select.describe)

    @classmethod
    def new(cls, reboot_at: float, reason: str, guests: list[str], owners: dict[str, str] | None = None,
            force: bool = False, force_unbootable: bool = False, notify_owners: bool = False,
            hypervisor: str | None = None) -> Journal:
        now = time.time()
        records = {g: GuestRecord(g, owner=(owners or {}).get(g)) for g in guests}
        return cls(uuid.uuid4().hex[:12], reboot_at, reason, "planned", now, (("planned", now),), records,
                   None, force, force_unbootable, notify_owners, hypervisor=hypervisor)

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
            raise PhaseMoved(self, f"maintenance {self.id}: cannot go from {self.phase} to {phase}")
        at = time.time() if now is None else now
        return replace(self, phase=phase, history=(*self.history, (phase, at)), error=error or self.error, **changes)

    def cancel(self, now: float | None = None) -> Journal:
        """Cancelled before anything was touched, or, once guests are being saved, restoring them with no reboot."""
        if self.phase not in CANCELLABLE:
            raise PhaseMoved(self, f"maintenance {self.id} is already {self.phase}: too late to cancel")
        if self.phase == "saving":
            return self.advance("restoring", now, error="cancelled during the saves: not rebooted", cancelled=True)
        return self.advance("cancelled", now, cancelled=True)

    def guest(self, name: str, state: str, **changes: Any) -> Journal:
        record = self.guests[name]
        if state != record.state and state not in NEXT_GUEST.get(record.state, ()):
            raise JournalError(f"maintenance {self.id}: guest {name} cannot go from {record.state} to {state}")
        return replace(self, guests={**self.guests, name: replace(record, state=state, **changes)})

    def with_guest(self, record: GuestRecord) -> Journal:
        """A guest the run-time plan adds (started after scheduling)."""
        if record.name in self.guests:
            raise JournalError(f"maintenance {self.id}: guest {record.name} is already in the journal")
        return replace(self, guests={**self.guests, record.name: record})

    def row(self) -> dict[str, Any]:
        """The summary ``maintenance list --json`` prints and ``hostagent rpc`` returns."""
        import datetime as dt

        try:  # journals read from disk are in range already (from_json); this never raises all the same
            utc = dt.datetime.fromtimestamp(checked_time(self.reboot_at, "reboot_at"), dt.UTC).isoformat()
        except TimeRangeError:
            utc = "an impossible time"
        return {"id": self.id, "phase": self.phase, "reason": self.reason, "reboot_at": at(self.reboot_at),
                "reboot_at_utc": utc, "notify_owners": self.notify_owners, "sent": list(self.sent),
                "history": [{"phase": phase, "at": when} for phase, when in self.history],
                "guests": {n: {"state": g.state, "outcome": g.outcome, "owner": g.owner, "downtime_s": g.downtime_s,
                               "downtime_unknown": g.downtime_unknown, "attempts": g.attempts,
                               "added_at_run_time": g.added, "restored_by": g.restored_by,
                               "kept_image": g.kept_image, "clock": g.clock, "error": g.error,
                               "started_again": g.started_again}
                           for n, g in self.guests.items()},
                "cancelled": self.cancelled, "error": self.error}

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "reboot_at": self.reboot_at, "reason": self.reason, "phase": self.phase,
                "created": self.created, "history": [list(h) for h in self.history], "error": self.error,
                "force": self.force, "force_unbootable": self.force_unbootable,
                "notify_owners": self.notify_owners, "sent": list(self.sent), "boot_id": self.boot_id,
                "cancelled": self.cancelled, "reboot_issued": self.reboot_issued, "hypervisor": self.hypervisor,
                "guests": {name: asdict(record) for name, record in self.guests.items()}}

    @classmethod
    def from_json(cls, data: Any) -> Journal:
        """The journal in ``data``, every field checked: ShapeError names the first one that is wrong."""
        top = _Shape(data, "journal")
        guests = {}
        for name, raw in top.mapping("guests").items():
            record = _Shape(raw, f"guests.{name}")
            guests[name] = GuestRecord(
                name=record.text("name"), state=record.choice("state", GUEST_STATES),
                image=record.text("image", optional=True), owner=record.text("owner", optional=True),
                save_started=record.time("save_started", optional=True),
                running_again=record.time("running_again", optional=True),
                attempts=int(record.number("attempts", integer=True) or 0),
                error=record.text("error", optional=True),
                outcome=record.choice("outcome", tuple(OUTCOMES), optional=True),
                added=record.flag("added"), restored_by=record.text("restored_by", optional=True),
                kept_image=record.text("kept_image", optional=True), clock=record.text("clock", optional=True),
                unsaved=record.choice("unsaved", UNSAVED, optional=True),
                started_again=record.choice("started_again", ("saved", "shut_down"), optional=True),
                down_since=record.time("down_since", optional=True))
            if guests[name].name != name:
                raise ShapeError(f"guests.{name}.name: says {guests[name].name!r}")
        journal_id = top.text("id")
        if not ID_PATTERN.fullmatch(journal_id):
            raise ShapeError(f"id: {journal_id!r} is not a maintenance id")
        history = []
        for index, entry in enumerate(top.sequence("history")):
            if not (isinstance(entry, list) and len(entry) == 2 and entry[0] in PHASES):
                raise ShapeError(f"history[{index}]: not a [phase, time] pair")
            history.append((entry[0], _Shape({"at": entry[1]}, f"history[{index}]").time("at") or 0.0))
        sent = top.sequence("sent", optional=True)
        if not all(isinstance(key, str) for key in sent):
            raise ShapeError("sent: not a list of strings")
        return cls(journal_id, top.time("reboot_at") or 0.0, top.text("reason", optional=True) or "",
                   top.choice("phase", PHASES) or "planned", top.time("created") or 0.0, tuple(history), guests,
                   top.text("error", optional=True), top.flag("force"), top.flag("force_unbootable"),
                   top.flag("notify_owners"), tuple(sent), top.text("boot_id", optional=True), top.flag("cancelled"),
                   top.time("reboot_issued", optional=True), top.text("hypervisor", optional=True))


class ShapeError(ValueError):
    """A journal field of the wrong type or value."""


class _Shape:
    """Typed access to one JSON object, each miss raising ShapeError with the field's path."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ShapeError(f"{where}: not an object")
        self.data, self.where = data, where

    def _get(self, key: str, optional: bool) -> Any:
        if key not in self.data or self.data[key] is None:
            if optional:
                return None
            raise ShapeError(f"{self.where}.{key}: missing")
        return self.data[key]

    def text(self, key: str, optional: bool = False) -> Any:
        value = self._get(key, optional)
        if value is not None and not isinstance(value, str):
            raise ShapeError(f"{self.where}.{key}: not a string")
        return value

    def choice(self, key: str, allowed: tuple[str, ...], optional: bool = False) -> Any:
        value = self.text(key, optional)
        if value is not None and value not in allowed:
            raise ShapeError(f"{self.where}.{key}: {value[:40]!r} is none of {', '.join(allowed)}")
        return value

    def number(self, key: str, optional: bool = False, integer: bool = False) -> float | None:
        value = self._get(key, optional or integer)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or (integer and not isinstance(value, int)) or abs(value) > 1e12:
            raise ShapeError(f"{self.where}.{key}: not a plausible {'count' if integer else 'time'}")
        return float(value)

    def time(self, key: str, optional: bool = False) -> float | None:
        """A POSIX time inside when.TIME_MIN .. TIME_MAX, the range every renderer accepts (I3)."""
        value = self._get(key, optional)
        if value is None:
            return None
        try:
            return checked_time(value, f"{self.where}.{key}")
        except TimeRangeError as err:
            raise ShapeError(str(err)) from None

    def flag(self, key: str) -> bool:
        value = self.data.get(key, False)
        if not isinstance(value, bool):
            raise ShapeError(f"{self.where}.{key}: not true or false")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._get(key, False)
        if not isinstance(value, dict):
            raise ShapeError(f"{self.where}.{key}: not an object")
        return value

    def sequence(self, key: str, optional: bool = False) -> list[Any]:
        value = self._get(key, optional)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ShapeError(f"{self.where}.{key}: not a list")
        return value


@record(frozen=True)
class Unreadable:
    """A journal file that could not be read, and why (``<name>.corrupt`` once moved aside)."""

    path: Path
    reason: str
    transient: bool = False  # an I/O error, not a bad journal: never set aside, and no new maintenance meanwhile

    def row(self) -> dict[str, Any]:
        return {"file": str(self.path), "phase": "unreadable", "error": self.reason}


class AlreadyPlanned(JournalError):
    """A maintenance that is not final exists: at most one per host (invariant I2)."""

    def __init__(self, active: Journal) -> None:
        super().__init__(f"maintenance {active.id} is already {active.phase} for {at(active.reboot_at)}; "
                         "cancel it first")
        self.active = active


LOCK_NAME = "maintenance.lock"
_held: dict[str, tuple[int, int]] = {}  # lock path -> (descriptor, depth) held by this process
_held_guard = threading.RLock()
_parsed: dict[str, tuple[tuple[int, int, int, int], Journal]] = {}  # path -> ((inode, mtime, ctime, size), journal)
SETTLED = 2.0  # s: a file changed more recently is never taken from memory (timestamps may be coarse)


class JournalStore:
    """Journals as files ``<dir>/<id>.json``, and the one lock of this host's maintenance state.

    Every change goes through ``update`` or ``create``, under the host-level lock
    (``<dir>/maintenance.lock``, flock; invariant I2): ``schedule``, ``cancel``, the worker and the
    daemon all take this one lock, so "is a maintenance active?" and "create one" are one step, and
    a cancel cannot fall between a check and the step it guards.  ``update`` re-reads the journal
    from disk under the lock, applies the change (a transition refused on a journal that moved on
    raises PhaseMoved) and writes it under a unique temporary name, fsync'd with its directory.
    Nobody writes from a stale copy, so a cancel can never be undone.  The lock is re-entrant
    within a process (``locked``), so a step may hold it across a check and its updates."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, journal_id: str) -> Path:
        if not ID_PATTERN.fullmatch(journal_id):
            raise JournalError(f"{journal_id!r} is not a maintenance id (12 hex digits)")
        return self.directory / f"{journal_id}.json"

    @contextlib.contextmanager
    def locked(self, wait: float = LOCK_WAIT) -> Iterator[None]:
        """Hold the host-level maintenance lock for the block (re-entrant in this process)."""
        path = str(self.directory / LOCK_NAME)
        if not _held_guard.acquire(timeout=wait):
            raise LockTimeout(f"{path}: held by another thread for over {wait:g} s")
        try:
            fd, depth = _held.get(path, (-1, 0))
            if depth == 0:
                fd = self._flock(Path(path), wait)
            _held[path] = (fd, depth + 1)
            try:
                yield
            finally:
                fd, depth = _held.pop(path)
                if depth > 1:
                    _held[path] = (fd, depth - 1)
                else:
                    os.close(fd)  # closing the descriptor releases the lock
        finally:
            _held_guard.release()

    def _flock(self, path: Path, wait: float) -> int:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            raise JournalError(f"{path}: cannot take the maintenance lock: {err.strerror or err}") from None
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise JournalError(f"{path}: cannot take the maintenance lock: {err.strerror}") from None
            if time.monotonic() > deadline:
                os.close(fd)
                raise LockTimeout(f"{path}: held by another process for over {wait:g} s; try again")
            time.sleep(0.01)

    def _write(self, journal: Journal) -> None:
        path = self.path(journal.id)
        try:  # I3 on the way out too: a clock past the range must not write a journal no reader accepts
            Journal.from_json(journal.to_json())
        except ShapeError as err:
            raise JournalWriteError(f"{path}: not written, it would not read back: {err}") from None
        try:
            write_durable(path, (json.dumps(journal.to_json(), indent=2) + "\n").encode())
        except OSError as err:
            raise JournalWriteError(f"{path}: cannot write the maintenance journal: {err.strerror or err}") from None

    def create(self, journal: Journal) -> Journal:
        """Write a new journal; refused when one with its id exists, and with AlreadyPlanned while another
        maintenance is not final (the check and the write are one step under the lock)."""
        with self.locked():
            journals, unreadable = self.scan()
            active = next((j for j in journals if not j.final), None)
            if active is not None:
                raise AlreadyPlanned(active)
            cannot = [entry for entry in unreadable if entry.transient]
            if cannot:  # it may be the active one: one maintenance per host is not known to hold
                raise JournalError(f"{cannot[0].path}: {cannot[0].reason}; nothing scheduled until it can be read")
            if self.path(journal.id).exists():
                raise JournalError(f"maintenance {journal.id} exists already")
            self._write(journal)
        return journal

    def update(self, journal_id: str, change: Callable[[Journal], Journal]) -> Journal:
        """Re-read the journal under the lock (from the file, never from memory), apply ``change``, write the
        result and return it."""
        with self.locked():
            current = self.load(journal_id, fresh=True)
            changed = change(current)
            if changed != current:
                self._write(changed)
            return changed

    def load(self, journal_id: str, fresh: bool = False) -> Journal:
        path = self.path(journal_id)
        try:
            return self._read(path, fresh)
        except FileNotFoundError:
            raise JournalError(f"no maintenance {journal_id} in {self.directory}") from None
        except (OSError, ValueError) as err:
            raise JournalError(f"{path}: unreadable maintenance journal: {err}") from None

    @staticmethod
    def _read(path: Path, fresh: bool = False) -> Journal:
        """The journal in ``path``.  One already parsed is taken from memory while its file is the same: every
        write is a new file (a new inode, though a freed one comes back), so inode, mtime, ctime and size
        name one content, once the file is older than SETTLED s (timestamps can be coarser than the
        writes).  ``fresh``: always the file (every change under the lock reads it so)."""
        info = os.lstat(path)
        key = (info.st_ino, info.st_mtime_ns, info.st_ctime_ns, info.st_size)
        cached = _parsed.get(str(path))
        settled = time.time() - max(info.st_mtime_ns, info.st_ctime_ns) / 1e9 > SETTLED
        if cached is not None and cached[0] == key and settled and not fresh:
            return cached[1]
        try:
            data = json.loads(read_bounded(path, MAX_JOURNAL_BYTES))
        except RecursionError:
            raise ShapeError("nested too deeply") from None
        journal = Journal.from_json(data)
        if f"{journal.id}.json" != path.name:
            raise ShapeError(f"id: says {journal.id}, but the file is {path.name}")
        if len(_parsed) > 4096:
            _parsed.clear()
        if settled:
            _parsed[str(path)] = (key, journal)
        return journal

    def scan(self) -> tuple[list[Journal], list[Unreadable]]:
        """Every readable journal by reboot time, and the files that are not (moved aside or not)."""
        if not self.directory.is_dir():
            return [], []
        journals, unreadable = [], []
        for path in sorted(self.directory.glob("*.json")):
            try:
                journals.append(self._read(path))
            except FileNotFoundError:
                continue
            except OSError as err:  # EIO, EMFILE, ENOMEM: the journal may be fine; it is looked at again
                unreadable.append(Unreadable(path, f"cannot read the maintenance journal now: {err}", transient=True))
            except ValueError as err:
                unreadable.append(Unreadable(path, f"unreadable maintenance journal: {err}"))
        unreadable += [Unreadable(p, "moved aside: unreadable maintenance journal")
                       for p in sorted(self.directory.glob("*.corrupt"))]
        return sorted(journals, key=lambda j: j.reboot_at), unreadable

    def all(self) -> list[Journal]:
        return self.scan()[0]

    def prune(self, retention: float, now: float | None = None) -> list[str]:
        """Delete the final journals that ended more than ``retention`` s ago, with their logs and lock
        files; returns their ids.  A journal not final, or whose report is not sent, is kept."""
        cutoff = (time.time() if now is None else now) - retention
        removed = []
        with self.locked():
            for journal in self.all():
                ended = journal.history[-1][1] if journal.history else journal.created
                if not journal.final or "report" not in journal.sent or ended >= cutoff:
                    continue
                for suffix in (".json", ".log", ".worker", ".lock"):
                    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                        os.unlink(self.directory / f"{journal.id}{suffix}")
                _parsed.pop(str(self.path(journal.id)), None)
                removed.append(journal.id)
        return removed

    def quarantine(self) -> list[Unreadable]:
        """Move every ``*.json`` that is not a journal aside to ``*.corrupt``, under the lock; returns those
        moved (for an alert).  A file that could not be read now (an I/O error) stays where it is."""
        moved = []
        with self.locked():
            for entry in self.scan()[1]:
                if entry.path.suffix != ".json" or entry.transient:
                    continue
                target = entry.path.with_suffix(".corrupt")
                try:
                    os.replace(entry.path, target)
                except OSError as err:
                    moved.append(Unreadable(entry.path, f"{entry.reason}; cannot move it aside: "
                                                        f"{err.strerror or err}"))
                    continue
                _parsed.pop(str(entry.path), None)
                moved.append(Unreadable(target, f"{entry.path.name}: {entry.reason}; moved aside to {target.name}"))
        return moved

    @contextlib.contextmanager
    def worker(self, journal_id: str) -> Iterator[None]:
        """Held by a maintenance worker for its whole life: one worker per maintenance, even across a
        daemon restart (a worker outlives a killed daemon).  JournalError when another one holds it."""
        fd = os.open(self.path(journal_id).with_suffix(".worker"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JournalError(f"maintenance {journal_id}: another worker is running") from None
            yield
        finally:
            os.close(fd)

    def worker_running(self, journal_id: str) -> bool:
        """Whether a worker (perhaps one a killed daemon left behind) holds this maintenance."""
        try:
            with self.worker(journal_id):
                return False
        except JournalError:
            return True
        except OSError:
            return False

    def active(self) -> Journal | None:
        """The one maintenance not yet final, if any."""
        pending = [j for j in self.all() if not j.final]
        return pending[0] if pending else None
