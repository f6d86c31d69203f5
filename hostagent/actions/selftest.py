"""SMART self-tests on hostagent.selftest's schedule: start them with smartctl, follow them by the
drives' own status, and keep the schedule's state in the state store, so a daemon restart neither
repeats an hour's tests nor starts a second member of an array while the first is under test.

Each start and each end is audited (``selftest-start``, ``selftest-done``); the results reach
findings through the smart check, which reads the self-test log (``smart.selftest_failed``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from hostagent.actions import AuditLog
from hostagent.errors import HostagentError, ParseError
from hostagent.host import Host
from hostagent.records import record
from hostagent.selftest import HOUR, KINDS, Decision, due, merge_due, plan
from hostagent.sources.smartctl import SelfTestStatus, parse_selftest_status
from hostagent.state import StateStore

STATE_KEY = "selftest"


class Drives(Protocol):
    def status(self, disk: str) -> SelfTestStatus | None:
        """The drive's self-test state, or None when it cannot be read."""

    def start(self, disk: str, kind: str) -> str | None:
        """Start a ``kind`` self-test; None once started, else why not."""


class Smartctl:
    """The drives, through smartctl (each call a child process with a deadline)."""

    def __init__(self, host: Host, timeout: float) -> None:
        self.host, self.timeout = host, timeout

    def status(self, disk: str) -> SelfTestStatus | None:
        try:
            result = self.host.run("smartctl", ["--json=c", "-c", "-l", "selftest", f"/dev/{disk}"],
                                   name=f"{disk}.selftest.json", timeout=self.timeout)
            return parse_selftest_status(result.stdout, source=f"smartctl -c -l selftest /dev/{disk}")
        except (HostagentError, ParseError):
            return None

    def start(self, disk: str, kind: str) -> str | None:
        try:
            result = self.host.run("smartctl", ["-t", kind, f"/dev/{disk}"], name=f"{disk}.selftest-start",
                                   timeout=self.timeout)
        except HostagentError as err:
            return str(err)
        if result.returncode & 0b111:  # smartctl's bits 0-2: the command line, the device, a command failed
            return " ".join(result.stdout.strip().splitlines()[-1:]) or f"smartctl exited {result.returncode}"
        return None


@record(frozen=True)
class Tick:
    decision: Decision
    started: tuple[tuple[str, str], ...]  # (disk, kind)
    finished: tuple[tuple[str, str, str | None], ...]  # (disk, kind, result in smartctl's words)
    failed_to_start: tuple[tuple[str, str], ...]  # (disk, why)


class Scheduler:
    def __init__(self, state: StateStore, drives: Drives, audit: AuditLog,
                 clock: Callable[[], float] = time.time) -> None:
        self.state, self.drives, self.audit, self.clock = state, drives, audit, clock

    def tick(self, schedule: re.Pattern[str], arrays: dict[str, list[str]], busy: str | None) -> Tick:
        """One look: tests that came due, tests that ended, tests that may start now.  ``arrays``:
        each array -> its member disks (whole disks); ``busy``: why none may start, or None."""
        now = self.clock()
        record: dict[str, Any] = self.state.get(STATE_KEY) or {}
        after = float(record.get("checked") or (now // HOUR) * HOUR - 1)  # a first look counts this hour
        disks = sorted({disk for members in arrays.values() for disk in members})
        peers = {disk: {d for members in arrays.values() if disk in members for d in members} - {disk}
                 for disk in disks}
        pending = {d: k for d, k in dict(record.get("pending") or {}).items() if d in peers and k in KINDS.values()}
        pending = merge_due(pending, disks, [kind for _, kind in due(schedule, after, now)])
        running: dict[str, dict[str, Any]] = dict(record.get("running") or {})

        finished, unreadable = [], set()
        for disk in sorted(set(running) | set(pending) | {p for d in pending for p in peers[d]}):
            status = self.drives.status(disk)
            if status is None:  # no SMART, or no answer: a recorded test stays recorded, its peers wait
                unreadable.add(disk)
                continue
            if status.running and disk not in running:  # started by smartd, an operator, or before a crash
                running[disk] = {"kind": "unknown", "started": now}
            elif not status.running and disk in running:
                kind = running.pop(disk)["kind"]
                finished.append((disk, kind, status.result))
                self._audit({"event": "selftest-done", "disk": disk, "kind": kind, "result": status.result,
                             "failed": status.failed})
        for disk in sorted(unreadable & set(pending)):  # a disk without self-tests (virtio, some bridges)
            del pending[disk]
        decision = plan(pending, set(running), peers, busy)
        started, failed = [], []
        for disk, kind in decision.start:
            why = self.drives.start(disk, kind)
            self._audit({"event": "selftest-start", "disk": disk, "kind": kind, "error": why})
            pending.pop(disk)
            if why is None:
                running[disk] = {"kind": kind, "started": now}
                started.append((disk, kind))
            else:  # not retried: the next due hour tries again
                failed.append((disk, why))
        self.state.put(STATE_KEY, {"checked": now, "pending": pending, "running": running})
        return Tick(decision, tuple(started), tuple(finished), tuple(failed))

    def _audit(self, event: dict[str, Any]) -> None:
        self.audit.record(event)


def member_disks(arrays: Iterable[Any], parents: Callable[[str], list[str]]) -> dict[str, list[str]]:
    """Each array -> the whole disks under its working members (``parents`` maps sdb1 -> [sdb])."""
    found: dict[str, list[str]] = {}
    for array in arrays:
        disks: list[str] = []
        for member in array.members:
            if "faulty" in member.states:
                continue
            disks += [d for d in parents(member.device) if d not in disks]
        found[array.name] = disks
    return found


def busy_reason(arrays: Iterable[Any], maintenance: Any, now: float, lead: float = 3 * HOUR) -> str | None:
    """Why no self-test may start: an array's resync, recovery, check or reshape, or a maintenance
    under way or due within ``lead`` (a long test would run into the reboot)."""
    for array in arrays:
        if array.sync is not None and array.sync.action not in (None, "idle", "frozen"):
            return f"{array.name} is in {array.sync.action}"
    if maintenance is not None and (maintenance.phase != "planned" or maintenance.reboot_at - now < lead):
        return f"maintenance {maintenance.id} ({maintenance.phase}, reboot at {time.ctime(maintenance.reboot_at)})"
    return None
