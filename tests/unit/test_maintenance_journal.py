"""Maintenance time parsing and the journal's transitions and durability (issue #8 groundwork)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from hostagent.errors import HostagentError
from hostagent.maintenance.journal import Journal, JournalError, JournalStore
from hostagent.maintenance.when import describe, parse_when

BERLIN = dt.timezone(dt.timedelta(hours=1), "CET")
NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def test_when_formats() -> None:
    assert parse_when("2026-11-23 16:00", NOW, BERLIN) == dt.datetime(2026, 11, 23, 15, 0, tzinfo=dt.UTC)
    assert parse_when("2026-11-23T16:00:00+00:00", NOW, BERLIN) == dt.datetime(2026, 11, 23, 16, tzinfo=dt.UTC)
    assert parse_when("2026-11-23T16:00Z", NOW, BERLIN) == dt.datetime(2026, 11, 23, 16, tzinfo=dt.UTC)
    assert describe(dt.datetime(2026, 11, 23, 16, tzinfo=dt.UTC)).endswith("(2026-11-23 16:00 UTC)")


@pytest.mark.parametrize(("text", "message"), [
    ("2026-11-22 11:59", "in the past"),
    ("next monday", "not a time"),
    ("2026-13-01 10:00", "not a time"),
])
def test_when_refusals(text: str, message: str) -> None:
    with pytest.raises(HostagentError, match=message):
        parse_when(text, NOW, dt.UTC)


def test_journal_transitions_and_guest_records() -> None:
    journal = Journal.new(NOW.timestamp() + 3600, "kernel update", ["web1", "db1"], {"web1": "alice@example.com"})
    journal = journal.advance("preflight").advance("saving")
    journal = journal.guest("web1", "saving", save_started=100.0).guest("web1", "saved", image="/save/web1")
    journal = journal.guest("db1", "saving", save_started=101.0).guest("db1", "save_failed", error="timeout")
    journal = journal.guest("db1", "shut_down")
    journal = journal.advance("rebooting").advance("restoring")
    journal = journal.guest("web1", "restoring").guest("web1", "running", running_again=700.0)
    assert journal.guests["web1"].downtime_s == 600.0
    with pytest.raises(JournalError, match="guest web1 cannot go from running to saving"):
        journal.guest("web1", "saving")
    with pytest.raises(JournalError, match="cannot go from restoring to saving"):
        journal.advance("saving")
    assert [phase for phase, _ in journal.history] == ["planned", "preflight", "saving", "rebooting", "restoring"]


def test_journal_store_round_trip_and_active(tmp_path: Path) -> None:
    store = JournalStore(tmp_path / "maintenance")
    first = Journal.new(NOW.timestamp() + 60, "reason", ["vm1"])
    store.create(first)
    assert store.load(first.id) == first
    assert store.active() == first
    store.update(first.id, lambda current: current.cancel())
    assert store.active() is None
    assert sorted(p.name for p in (tmp_path / "maintenance").iterdir()) == [f"{first.id}.json", "maintenance.lock"]
    (tmp_path / "maintenance/0123456789ab.json").write_text("{")
    with pytest.raises(JournalError, match="unreadable maintenance journal"):
        store.load("0123456789ab")


def test_now_means_at_once() -> None:
    import datetime as dt

    from hostagent.maintenance.when import parse_when

    moment = dt.datetime(2026, 11, 23, 15, 0, tzinfo=dt.UTC)
    assert parse_when("now", moment) == moment and parse_when(" now ", moment) == moment


def valid() -> dict[str, object]:
    journal = Journal.new(NOW.timestamp(), "kernel", ["web1"]).advance("preflight")
    return journal.to_json()


@pytest.mark.parametrize(("mangle", "message"), [
    (lambda d: [d], "journal: not an object"),
    (lambda d: {**d, "id": 5}, "journal.id: not a string"),
    (lambda d: {**d, "id": "../../etc"}, "not a maintenance id"),
    (lambda d: {**d, "phase": "exploded"}, "journal.phase: 'exploded' is none of"),
    (lambda d: {**d, "guests": ["web1"]}, "journal.guests: not an object"),
    (lambda d: {**d, "guests": {"web1": {**d["guests"]["web1"], "state": 3}}}, "guests.web1.state: not a string"),
    (lambda d: {**d, "guests": {"web1": {**d["guests"]["web1"], "name": "db1"}}}, "guests.web1.name: says 'db1'"),
    (lambda d: {**d, "guests": {"web1": {**d["guests"]["web1"], "attempts": 1.5}}}, "attempts: not a plausible count"),
    (lambda d: {**d, "guests": {"web1": {**d["guests"]["web1"], "outcome": "fine"}}}, "outcome: 'fine' is none of"),
    (lambda d: {**d, "reboot_at": "tomorrow"}, "journal.reboot_at: not a plausible time"),
    (lambda d: {**d, "reboot_at": 1e300}, "journal.reboot_at: not a plausible time"),
    (lambda d: {**d, "reboot_at": True}, "journal.reboot_at: not a plausible time"),
    (lambda d: {**d, "history": [["planned"]]}, r"history\[0\]: not a \[phase, time\] pair"),
    (lambda d: {**d, "history": {"planned": 1}}, "journal.history: not a list"),
    (lambda d: {**d, "sent": [1]}, "sent: not a list of strings"),
    (lambda d: {**d, "force": "yes"}, "journal.force: not true or false"),
    (lambda d: {k: v for k, v in d.items() if k != "created"}, "journal.created: missing"),
])
def test_journals_of_the_wrong_shape_are_refused_naming_the_field(mangle: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Journal.from_json(mangle(valid()))  # type: ignore[operator]


@pytest.mark.parametrize(("content", "message"), [
    (b'{"id": "', "unreadable maintenance journal"),
    (b"\xff\xfe\x00binary", "unreadable maintenance journal"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"reboot_at": ' + b"9" * 5000 + b"}", "unreadable maintenance journal"),
    (b'{"reboot_at": NaN}', "unreadable maintenance journal"),
    (b" " * (5 << 20), "larger than"),
])
def test_unreadable_files_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    store = JournalStore(tmp_path)
    (tmp_path / "0123456789ab.json").write_bytes(content)
    with pytest.raises(JournalError, match=message) as caught:
        store.load("0123456789ab")
    assert str(tmp_path / "0123456789ab.json") in str(caught.value)
    journals, unreadable = store.scan()
    assert journals == [] and [u.path.name for u in unreadable] == ["0123456789ab.json"]
    assert [u.path.name for u in store.quarantine()] == ["0123456789ab.corrupt"]
    assert store.scan()[1][0].path.name == "0123456789ab.corrupt"


def test_a_fifo_or_a_symlink_to_dev_zero_never_hangs_the_reader(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "0123456789ab.json")
    (tmp_path / "ba9876543210.json").symlink_to("/dev/zero")
    store = JournalStore(tmp_path)
    assert store.all() == [] and len(store.scan()[1]) == 2


def test_a_transition_from_a_phase_that_moved_on_is_refused_not_overwritten(tmp_path: Path) -> None:
    from hostagent.maintenance.journal import PhaseMoved

    store = JournalStore(tmp_path)
    stale = store.create(Journal.new(NOW.timestamp(), "kernel", ["web1"]))
    store.update(stale.id, lambda current: current.cancel())  # another process cancels
    with pytest.raises(PhaseMoved, match="cannot go from cancelled to preflight"):
        store.update(stale.id, lambda current: current.advance("preflight"))
    marked = store.update(stale.id, lambda current: current.mark_sent("report"))
    assert (marked.phase, marked.sent) == ("cancelled", ("report",))  # metadata lands on the fresh copy
    with pytest.raises(JournalError, match="exists already"):
        store.create(stale)


def test_cancel_before_and_during_the_saves() -> None:
    planned = Journal.new(NOW.timestamp(), "kernel", ["web1"])
    assert planned.cancel().phase == "cancelled"
    saving = planned.advance("preflight").advance("saving")
    cancelled = saving.cancel()
    assert (cancelled.phase, cancelled.cancelled) == ("restoring", True)
    with pytest.raises(JournalError, match="too late to cancel"):
        saving.advance("rebooting").cancel()


def test_the_backend_a_maintenance_was_planned_with_must_be_the_one_it_runs_and_restores_with() -> None:
    from hostagent.config import MaintenanceConfig
    from hostagent.hypervisor.select import changed, describe

    xl = MaintenanceConfig(hypervisor="xl")
    libvirt = MaintenanceConfig(hypervisor="libvirt", uri="qemu:///system")
    assert (describe(xl), describe(libvirt)) == ("xl", "libvirt qemu:///system")
    assert changed("xl", xl) is None and changed(None, libvirt) is None  # a journal from before: no record
    assert "planned with xl, but the hypervisor is now libvirt qemu:///system" in str(changed("xl", libvirt))
    journal = Journal.new(0.0, "r", ["g1"], hypervisor="xl")
    assert Journal.from_json(journal.to_json()).hypervisor == "xl"
