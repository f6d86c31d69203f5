"""The self-test scheduler against a clock: smartd's -s schedule, one member of an array under test
at a time (across a daemon restart too, and with the state lost), nothing during a resync or near a
maintenance.  The drives here keep time on the test's clock (a short test takes 2 minutes, a long
one 90); tests/vm/test_selftest.py runs the same scheduler on a VM's AHCI disks."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hostagent.actions import AuditLog
from hostagent.actions.selftest import Scheduler, busy_reason, member_disks
from hostagent.config import parse_config
from hostagent.errors import ConfigError
from hostagent.selftest import DEFAULT_SCHEDULE, compile_schedule, due, plan
from hostagent.sources.smartctl import SelfTestStatus
from hostagent.state import StateStore

DURATION = {"short": 120.0, "long": 5400.0}
ARRAYS = {"md0": ["sda", "sdb"], "md1": ["sda", "sdb"], "md2": ["sdc", "sdd"]}


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class Drives:
    """Drives that run a self-test for DURATION[kind] seconds of the clock and log each one."""

    clock: Clock
    fail: set[str] = field(default_factory=set)
    no_smart: set[str] = field(default_factory=set)
    tests: list[tuple[str, str, float, float]] = field(default_factory=list)  # disk, kind, start, end

    def _current(self, disk: str) -> tuple[str, str, float, float] | None:
        return next((t for t in self.tests if t[0] == disk and t[2] <= self.clock() < t[3]), None)

    def status(self, disk: str) -> SelfTestStatus | None:
        if disk in self.no_smart:
            return None
        if self._current(disk) is not None:
            return SelfTestStatus(True, 50)
        done = [t for t in self.tests if t[0] == disk]
        if not done:
            return SelfTestStatus(False)
        failed = disk in self.fail
        return SelfTestStatus(False, None, f"{done[-1][1]}: {'read failure' if failed else 'completed'}", failed)

    def start(self, disk: str, kind: str) -> str | None:
        assert self._current(disk) is None, f"{disk}: started while a test runs"
        self.tests.append((disk, kind, self.clock(), self.clock() + DURATION[kind]))
        return None

    def overlaps(self) -> list[tuple[Any, Any]]:
        """Pairs of tests of two disks sharing an array that ran at the same time."""
        found = []
        for i, a in enumerate(self.tests):
            for b in self.tests[i + 1:]:
                shared = any(a[0] in m and b[0] in m for m in ARRAYS.values())
                if a[0] != b[0] and shared and a[2] < b[3] and b[2] < a[3]:
                    found.append((a, b))
        return found


def local(year: int, month: int, day: int, hour: int, minute: int = 0) -> float:
    return dt.datetime(year, month, day, hour, minute).timestamp()  # this machine's local time, as smartd's


def run(scheduler: Scheduler, clock: Clock, until: float, step: float = 300.0, busy: str | None = None) -> None:
    schedule = compile_schedule(DEFAULT_SCHEDULE)
    while clock.now < until:
        clock.now += step
        scheduler.tick(schedule, ARRAYS, busy)


def make(tmp_path: Path, clock: Clock, drives: Drives, state: str = "state") -> Scheduler:
    return Scheduler(StateStore(tmp_path / state), drives, AuditLog(tmp_path / state), clock=clock)


def audit(tmp_path: Path, state: str = "state") -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / state / "audit.jsonl").read_text().splitlines()]


def test_a_week_of_the_default_schedule_short_daily_long_on_saturday_staggered(tmp_path: Path) -> None:
    clock = Clock(local(2026, 11, 30, 0))  # a Monday
    drives = Drives(clock)
    run(make(tmp_path, clock, drives), clock, local(2026, 12, 7, 0))
    by_day: dict[tuple[int, str], list[str]] = {}
    for disk, kind, start, _ in drives.tests:
        started = dt.datetime.fromtimestamp(start)
        by_day.setdefault((started.day, kind), []).append(disk)
        # every test starts in its hour (02:00 short, 03:00 long) or while a peer finishes
        assert (started.hour, kind) in ((2, "short"), (3, "long"), (4, "long")), (disk, kind, started)
    for day in (30, 1, 2, 3, 4, 5, 6):  # every day: one short test per disk
        assert sorted(by_day[(day, "short")]) == ["sda", "sdb", "sdc", "sdd"], (day, by_day)
    longs = {day for day, kind in by_day if kind == "long"}
    assert longs == {5} and sorted(by_day[(5, "long")]) == ["sda", "sdb", "sdc", "sdd"]  # Saturday
    assert drives.overlaps() == []
    # staggered, not serialised: the two arrays' disks ran side by side
    starts = {(d, k): s for d, k, s, _ in drives.tests if k == "long"}
    assert starts[("sda", "long")] == starts[("sdc", "long")]
    assert starts[("sdb", "long")] >= starts[("sda", "long")] + DURATION["long"]
    events = [(r["event"], r["disk"]) for r in audit(tmp_path) if r["event"].startswith("selftest")]
    assert events.count(("selftest-start", "sda")) == 8 and events.count(("selftest-done", "sda")) == 8


def test_a_restart_mid_test_keeps_the_other_member_waiting(tmp_path: Path) -> None:
    clock = Clock(local(2026, 12, 5, 2, 59))  # Saturday: the long tests are due at 03:00
    drives = Drives(clock)
    run(make(tmp_path, clock, drives), clock, local(2026, 12, 5, 3, 5))
    assert [(d, k) for d, k, *_ in drives.tests] == [("sda", "long"), ("sdc", "long")]
    # the daemon restarts: a new scheduler on the same state directory
    again = make(tmp_path, clock, drives)
    run(again, clock, local(2026, 12, 5, 4, 0))
    assert [d for d, *_ in drives.tests] == ["sda", "sdc"]  # sdb and sdd wait for their peers
    tick = again.tick(compile_schedule(DEFAULT_SCHEDULE), ARRAYS, None)
    assert tick.decision.waiting == {"sdb": "sda, in an array with sdb, is under test",
                                     "sdd": "sdc, in an array with sdd, is under test"}
    run(again, clock, local(2026, 12, 5, 6, 0))
    assert drives.overlaps() == [] and sorted(d for d, *_ in drives.tests) == ["sda", "sdb", "sdc", "sdd"]


def test_with_the_state_lost_the_drives_own_status_still_keeps_peers_apart(tmp_path: Path) -> None:
    clock = Clock(local(2026, 12, 5, 2, 59))
    drives = Drives(clock)
    run(make(tmp_path, clock, drives), clock, local(2026, 12, 5, 3, 5))
    fresh = make(tmp_path, clock, drives, state="lost")  # the state directory was wiped
    tick = fresh.tick(compile_schedule("L/../../6/03"), ARRAYS, None)
    assert tick.started == () and set(tick.decision.waiting) == {"sda", "sdb", "sdc", "sdd"}
    run(fresh, clock, local(2026, 12, 5, 8, 0))
    assert drives.overlaps() == []


def test_nothing_starts_during_a_resync_or_near_a_maintenance(tmp_path: Path) -> None:
    resyncing = [SimpleNamespace(name="md0", sync=SimpleNamespace(action="recover"))]
    assert busy_reason(resyncing, None, 0) == "md0 is in recover"
    soon = SimpleNamespace(id="ab12", phase="planned", reboot_at=local(2026, 12, 5, 4))
    assert busy_reason([], soon, local(2026, 12, 5, 2)).startswith("maintenance ab12 (planned")
    assert busy_reason([], soon, local(2026, 12, 4, 2)) is None  # a day away: no reason to wait
    clock = Clock(local(2026, 12, 1, 1, 55))
    drives = Drives(clock)
    scheduler = make(tmp_path, clock, drives)
    run(scheduler, clock, local(2026, 12, 1, 2, 30), busy="md0 is in recover")
    assert drives.tests == []
    tick = scheduler.tick(compile_schedule(DEFAULT_SCHEDULE), ARRAYS, "md0 is in recover")
    assert tick.decision.waiting == dict.fromkeys(["sda", "sdb", "sdc", "sdd"], "md0 is in recover")
    run(scheduler, clock, local(2026, 12, 1, 3, 0))  # the recovery is over: the tests still due run
    assert sorted(d for d, *_ in drives.tests) == ["sda", "sdb", "sdc", "sdd"] and drives.overlaps() == []


def test_results_are_audited_and_disks_without_self_tests_are_left_alone(tmp_path: Path) -> None:
    clock = Clock(local(2026, 12, 1, 1, 55))
    drives = Drives(clock, fail={"sdb"}, no_smart={"sdc", "sdd"})
    run(make(tmp_path, clock, drives), clock, local(2026, 12, 1, 3, 0))
    done = {r["disk"]: (r["result"], r["failed"]) for r in audit(tmp_path) if r["event"] == "selftest-done"}
    assert done == {"sda": ("short: completed", False), "sdb": ("short: read failure", True)}
    assert {r["disk"] for r in audit(tmp_path) if r["event"] == "selftest-start"} == {"sda", "sdb"}


def test_a_restart_in_the_same_hour_does_not_repeat_its_tests(tmp_path: Path) -> None:
    clock = Clock(local(2026, 12, 1, 2, 1))
    drives = Drives(clock)
    run(make(tmp_path, clock, drives), clock, local(2026, 12, 1, 2, 30))
    count = len(drives.tests)
    run(make(tmp_path, clock, drives), clock, local(2026, 12, 1, 2, 55))
    assert len(drives.tests) == count == 4


def test_smartd_syntax_hours_and_the_long_test_wins_an_hour(tmp_path: Path) -> None:
    both = compile_schedule("(S/../.././03|L/../../6/03)")
    saturday = local(2026, 12, 5, 0)
    assert due(both, saturday, saturday + 4 * 3600) == [(local(2026, 12, 5, 3), "long")]
    assert due(compile_schedule(""), saturday, saturday + 86400) == []
    weekdays = compile_schedule("S/../../[1-5]/(09|21)")
    assert len(due(weekdays, local(2026, 11, 30, 0), local(2026, 12, 7, 0))) == 10
    assert plan({"sda": "short", "sdb": "long"}, set(), {"sda": {"sdb"}, "sdb": {"sda"}}, None).start == (
        ("sdb", "long"),)  # the long test first


def test_a_bad_schedule_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"checks\.smart\.selftest_schedule: not a regular expression"):
        parse_config({"checks": {"smart": {"selftest_schedule": "(S/../.././02"}}}, "/etc/hostagent/hostagent.toml")
    with pytest.raises(ConfigError, match=r"checks\.smart\.selftest_interval: must be more than 0 s"):
        parse_config({"checks": {"smart": {"selftest_interval": 0}}}, "x.toml")


def test_member_disks_skips_failed_members() -> None:
    member = SimpleNamespace
    array = SimpleNamespace(name="md0", members=[member(device="sda1", states=("in_sync",)),
                                                 member(device="sdb1", states=("faulty",))])
    assert member_disks([array], lambda name: [re.sub(r"[0-9]+$", "", name)]) == {"md0": ["sda"]}


def test_local_time_is_what_the_schedule_reads() -> None:
    assert time.localtime(local(2026, 12, 5, 3)).tm_hour == 3
