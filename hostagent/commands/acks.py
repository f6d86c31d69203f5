"""``hostagent alert ack|unack|acks`` on a host and ``hostagent fleet ack|unack|acks`` on the controller:
acknowledge an open alert so its reminders stop, until the ack expires."""

from __future__ import annotations

import getpass
import json
import os
import time
from pathlib import Path

from hostagent.actions import AuditLog
from hostagent.alerts import acks
from hostagent.alerts.alerter import PREFIX as RECORD_PREFIX
from hostagent.alerts.state import AlertRecord
from hostagent.errors import HostagentError
from hostagent.state import StateStore


def operator() -> str:
    """Who acknowledges: the login behind sudo, else the user."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def acknowledge(directory: Path, code: str, subject: str, until: str, comment: str, as_json: bool) -> int:
    now = time.time()
    state = StateStore(directory)
    raw = state.get(RECORD_PREFIX + f"{code}|{subject}")
    record = AlertRecord.from_json(raw) if isinstance(raw, dict) else None
    if record is None or record.status != "open":
        open_keys = sorted(k.removeprefix(RECORD_PREFIX).replace("|", " ")
                           for k, v in state.items(RECORD_PREFIX).items() if isinstance(v, dict)
                           and v.get("status") == "open")
        raise HostagentError(f"no open alert {code} {subject} in {directory}"
                             + (f"; open: {', '.join(open_keys)}" if open_keys else "; nothing is open"))
    ack = acks.Ack(code, subject, operator(), now, acks.parse_until(until, now), comment, record.severity)
    acks.put(state, ack)
    AuditLog(directory).record({"event": "ack", "code": code, "subject": subject, "by": ack.by,
                                "until": ack.until, "comment": comment, "severity": ack.severity})
    print(json.dumps(ack.__dict__) if as_json else f"{code} {subject}: {ack.describe()}")
    return 0


def unacknowledge(directory: Path, code: str, subject: str) -> int:
    state = StateStore(directory)
    removed = acks.remove(state, f"{code}|{subject}")
    if removed is None:
        raise HostagentError(f"no ack for {code} {subject} in {directory}")
    AuditLog(directory).record({"event": "unack", "code": code, "subject": subject, "by": operator()})
    print(f"{code} {subject}: ack removed; reminders resume")
    return 0


def list_acks(directory: Path, as_json: bool) -> int:
    found = acks.active(StateStore(directory), time.time())
    if as_json:
        print(json.dumps([a.__dict__ for a in found.values()], indent=2))
    for ack in found.values():
        if not as_json:
            print(f"{ack.severity:8} {ack.code:24} {ack.subject:16} {ack.describe()}")
    if not found and not as_json:
        print("no acknowledged alerts")
    return 0
