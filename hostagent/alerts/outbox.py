"""The alert outbox: the single source of truth for what was mailed (docs/alerts.md, "Delivery").

Every mail event is one JSON file named by its Message-ID, written durably (file and directory
fsync'd) before anything else records the event:

- ``<spool>/<id>.json``: waiting for a server to accept it;
- ``<spool>/sent/<id>.json``: accepted, with ``sent_at``; kept ``sent_keep`` seconds, and the newest
  event of every alert still open is kept as long as it is open;
- ``<spool>/failed/<id>.json`` (and ``.why``): refused for good, or a message that cannot be sent for
  a reason of its own (moved aside, never retried, alerted through the routes that work);
- ``<spool>/corrupt/``: an entry that could not be read;
- ``<spool>/refused-recipients``: recipients refused for good (5xx to RCPT TO).

"Sent" is the move into ``sent/``, made once the server has accepted the message: a sent copy is
written durably, then the waiting entry is removed.  An entry found in both places was sent (the
agent died between the two steps).  An event whose Message-ID is in any of the three places is never
added again: the same event is never mailed twice, whatever the state database could record.  The
one window for a duplicate is between the server's acceptance and the durable write of the sent
copy (the agent killed, or the disk failing, in those milliseconds): the duplicate then carries the
same Message-ID, so a mail client or a ticket system can drop it.

Each event also carries the alert records it produced and a sequence number: the alert state is
derived from the outbox (``latest_records``), so a state database that is deleted, locked or cannot
be written is rebuilt from it, and no alert is raised twice for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from hostagent.durable import fsync_directory, read_bounded, write_durable
from hostagent.records import field, record

MAX_ENTRY = 4 << 20
MAX_ENTRIES = 20000  # files looked at in one place: a directory flooded by something else is not read whole
REFUSED_FILE = "refused-recipients"  # not *.json: the outbox's entries are
SENT, FAILED, CORRUPT = "sent", "failed", "corrupt"


@record
class Entry:
    """One mail event.  ``since_boot`` (CLOCK_BOOTTIME at creation) with ``boot`` (the boot id) gives
    its age without the wall clock; ``created`` (wall) is only shown."""
    path: Path
    message: str
    to: list[str]
    created: float
    message_id: str
    subject: str = ""
    attempts: int = 0
    last_error: str | None = None
    boot: str = ""
    since_boot: float = 0.0
    seq: int = 0
    records: dict[str, Any] = field(default_factory=dict)  # alert key -> its AlertRecord JSON after the event
    sent_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message, "to": self.to, "created": self.created, "message_id": self.message_id,
                "subject": self.subject, "attempts": self.attempts, "last_error": self.last_error,
                "boot": self.boot, "since_boot": self.since_boot, "seq": self.seq, "records": self.records,
                "sent_at": self.sent_at}


def _number(data: dict[str, Any], key: str, default: float = 0.0) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) > 1e12:
        raise ValueError(f"{key}: not a number in range")
    return float(value)


def parse_entry(path: Path, data: object) -> Entry:
    """An entry from its JSON; ValueError names what is wrong with a corrupt one."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    message, to, records = data.get("message"), data.get("to"), data.get("records", {})
    if not isinstance(message, str) or not isinstance(to, list) or not all(isinstance(t, str) for t in to):
        raise ValueError("message or recipients of the wrong type")
    if not isinstance(records, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in records.items()):
        raise ValueError("records of the wrong type")
    attempts, seq = _number(data, "attempts"), _number(data, "seq")
    sent_at = data.get("sent_at")
    return Entry(path, message, list(to), _number(data, "created"), str(data.get("message_id") or ""),
                 str(data.get("subject") or "")[:1000], int(max(0, attempts)),
                 None if data.get("last_error") is None else str(data["last_error"])[:2000],
                 str(data.get("boot") or "")[:64], _number(data, "since_boot"), int(max(0, seq)), records,
                 None if sent_at is None else _number(data, "sent_at"))


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def file_name(self, message_id: str) -> str:
        return f"{hashlib.sha256(message_id.encode()).hexdigest()[:32]}.json"

    def where(self, message_id: str) -> str | None:
        """Where an event is: "waiting", "sent", "failed", or None if it was never added."""
        name = self.file_name(message_id)
        for place, path in ((SENT, self.directory / SENT / name), (FAILED, self.directory / FAILED / name),
                            ("waiting", self.directory / name)):
            if path.exists():
                return place
        return None

    def add(self, entry: Entry) -> bool:
        """Write a new event durably; False (and nothing written) if its Message-ID is already here."""
        entry.path = self.directory / self.file_name(entry.message_id)
        if self.where(entry.message_id) is not None:
            return False
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_durable(entry.path, json.dumps(entry.to_json()).encode())
        return True

    def _listing(self, directory: Path) -> list[Path]:
        try:
            with os.scandir(directory) as found:
                names = []
                for item in found:
                    if item.name.endswith(".json") and not item.name.startswith("."):
                        names.append(item.name)
                        if len(names) >= MAX_ENTRIES:
                            break
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [directory / name for name in sorted(names)]

    def waiting(self) -> list[Path]:
        """The entries waiting to be sent (OSError if the directory cannot be read)."""
        return self._listing(self.directory)

    def sent(self) -> list[Path]:
        return self._listing(self.directory / SENT)

    def load(self, path: Path) -> Entry:
        """One entry; ValueError names what is wrong with a corrupt one, OSError if it is unreadable."""
        return parse_entry(path, json.loads(read_bounded(path, MAX_ENTRY)))

    def save(self, entry: Entry) -> None:
        """A waiting entry's attempts and last error, rewritten in place."""
        write_durable(entry.path, json.dumps(entry.to_json()).encode())

    def mark_sent(self, entry: Entry, at: float) -> None:
        """Record that a server accepted the entry: its sent copy first, then the waiting file goes."""
        target = self.directory / SENT
        target.mkdir(exist_ok=True, mode=0o700)
        entry.sent_at = at
        write_durable(target / entry.path.name, json.dumps(entry.to_json()).encode())
        entry.path.unlink(missing_ok=True)
        fsync_directory(self.directory)

    def settled(self, path: Path) -> bool:
        """A waiting file whose sent copy exists was sent (the agent died between the two steps): it goes."""
        if (self.directory / SENT / path.name).exists():
            with contextlib.suppress(OSError):
                path.unlink()
            return True
        return False

    def set_aside(self, path: Path, where: str, note: str) -> Path:
        """Move an entry into ``failed/`` or ``corrupt/``, with why beside it."""
        target = self.directory / where
        target.mkdir(exist_ok=True, mode=0o700)
        moved = target / path.name
        os.replace(path, moved)
        write_durable(moved.with_suffix(".why"), note.encode())
        fsync_directory(self.directory)
        return moved

    def set_aside_entries(self, where: str) -> list[tuple[str, str]]:
        """(file name, why) of every entry in ``corrupt/`` or ``failed/``."""
        found = []
        for path in self._listing(self.directory / where):
            try:
                why = read_bounded(path.with_suffix(".why"), 4096).decode(errors="replace").strip()
            except (OSError, ValueError):
                why = "reason not recorded"
            found.append((path.name, why))
        return found

    def latest_records(self) -> tuple[dict[str, tuple[int, dict[str, Any]]], int]:
        """Each alert key's newest record in the outbox (waiting, sent or set aside), with its event's
        sequence number; and the highest sequence number seen."""
        latest: dict[str, tuple[int, dict[str, Any]]] = {}
        top = 0
        for path in [*self._listing(self.directory), *self._listing(self.directory / SENT),
                     *self._listing(self.directory / FAILED)]:
            try:
                entry = self.load(path)
            except (OSError, ValueError, RecursionError):
                continue
            top = max(top, entry.seq)
            for key, data in entry.records.items():
                if key not in latest or latest[key][0] < entry.seq:
                    latest[key] = (entry.seq, data)
        return latest, top

    def prune(self, now: float, keep: float, still_open: set[str]) -> int:
        """Remove sent entries older than ``keep`` seconds, but never the newest event of an alert that
        is still open (its record rebuilds the state); returns how many went."""
        keep_paths: dict[str, tuple[int, Path]] = {}
        old: list[Path] = []
        for path in self.sent():
            try:
                entry = self.load(path)
            except (OSError, ValueError, RecursionError):
                old.append(path)  # an unreadable sent copy proves nothing
                continue
            for key in entry.records:
                if key in still_open and (key not in keep_paths or keep_paths[key][0] < entry.seq):
                    keep_paths[key] = (entry.seq, path)
            if entry.sent_at is None or now - entry.sent_at > keep:  # a clock gone back ages nothing
                old.append(path)
        kept = {path for _, path in keep_paths.values()}
        removed = 0
        for path in old:
            if path not in kept:
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
        return removed

    def refused(self) -> dict[str, dict[str, Any]]:
        """Recipients refused for good: address -> {"code", "reply", "at"}."""
        try:
            data = json.loads(read_bounded(self.directory / REFUSED_FILE, MAX_ENTRY))
        except (OSError, ValueError, RecursionError):
            return {}
        if not isinstance(data, dict):
            return {}
        found: dict[str, dict[str, Any]] = {}
        for address, refusal in data.items():  # a hand-edited or foreign file: each value checked
            if not isinstance(address, str) or not isinstance(refusal, dict):
                continue
            code, reply, at = refusal.get("code"), refusal.get("reply"), refusal.get("at")
            found[address[:320]] = {
                "code": code if isinstance(code, int) and not isinstance(code, bool) and 0 <= code < 1000 else 0,
                "reply": reply[:300] if isinstance(reply, str) else "",
                "at": float(at) if isinstance(at, int | float) and not isinstance(at, bool) and 0 <= at < 1e11
                else 0.0}
        return found

    def set_refused(self, refused: dict[str, dict[str, Any]]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_durable(self.directory / REFUSED_FILE, json.dumps(refused, indent=1).encode())
