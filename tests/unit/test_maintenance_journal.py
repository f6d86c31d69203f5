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
    assert sorted(p.name for p in (tmp_path / "maintenance").iterdir()) == [f"{first.id}.json", f"{first.id}.lock"]
    (tmp_path / "maintenance/0123456789ab.json").write_text("{")
    with pytest.raises(JournalError, match="unreadable maintenance journal"):
        store.load("0123456789ab")


def test_now_means_at_once() -> None:
    import datetime as dt

    from hostagent.maintenance.when import parse_when

    moment = dt.datetime(2026, 11, 23, 15, 0, tzinfo=dt.UTC)
    assert parse_when("now", moment) == moment and parse_when(" now ", moment) == moment
