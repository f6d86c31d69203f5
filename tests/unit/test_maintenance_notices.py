"""What owners and operators are told, and when (pure functions over the journal)."""

from __future__ import annotations

from hostagent.maintenance import notices
from hostagent.maintenance.journal import GuestRecord, Journal

LEADS = (86400.0, 3600.0)


def journal(notify: bool = True) -> Journal:
    j = Journal.new(100_000.0, "kernel update", ["web1", "web2", "db1"], notify_owners=notify,
                    owners={"web1": "alice@example.com", "web2": "alice@example.com", "db1": "bob@example.com"})
    return j


def test_before_notices_fall_due_at_each_lead_time_once() -> None:
    j = journal()
    assert notices.due_before(j, 100_000 - 90_000, LEADS) == []
    assert notices.due_before(j, 100_000 - 86_000, LEADS) == ["before:86400"]
    j = j.mark_sent("before:86400")
    assert notices.due_before(j, 100_000 - 5000, LEADS) == []
    assert notices.due_before(j, 100_000 - 3000, LEADS) == ["before:3600"]
    assert notices.due_before(j.mark_sent("before:3600"), 100_000 - 10, LEADS) == []


def test_scheduled_late_sends_one_notice_for_every_lead_already_past() -> None:
    assert notices.due_before(journal(), 100_000 - 600, LEADS) == ["before:86400", "before:3600"]


def test_no_notices_without_the_flag_or_after_the_start() -> None:
    assert notices.due_before(journal(notify=False), 100_000 - 600, LEADS) == []
    assert notices.due_before(journal(), 100_001, LEADS) == []
    assert notices.due_before(journal().advance("cancelled"), 100_000 - 600, LEADS) == []


def test_guests_are_grouped_by_owner() -> None:
    owners = notices.by_owner(journal())
    assert {o: [g.name for g in gs] for o, gs in owners.items()} == {"alice@example.com": ["web1", "web2"],
                                                                     "bob@example.com": ["db1"]}


def test_the_before_notice_names_the_time_in_utc_and_the_guests() -> None:
    j = journal()
    subject, text = notices.before_notice(j, notices.by_owner(j)["alice@example.com"], "hv1", 100_000 - 1800)
    assert subject.startswith("Planned maintenance of hv1 at ") and "UTC" in subject
    assert "in 30 min 0 s" in text and "Reason: kernel update" in text
    assert "  - web1\n  - web2\n" in text and "db1" not in text


def test_the_after_notice_gives_each_guests_downtime_and_outcome() -> None:
    j = journal().advance("preflight").advance("saving")
    j = j.guest("db1", "saving", save_started=1000.0).guest("db1", "saved", image="managed")
    j = j.guest("db1", "restoring").guest("db1", "running", running_again=1000.0 + 125.4, outcome="restored")
    subject, text = notices.after_notice(j, notices.by_owner(j)["bob@example.com"], "hv1")
    assert subject == "Maintenance of hv1 finished: your downtime"
    assert "db1            2 min 5 s       restored: it was paused, not rebooted" in text


def test_a_cold_booted_guest_is_called_rebooted() -> None:
    j = journal().advance("preflight").advance("saving")
    j = j.guest("web1", "saving", save_started=0.0).guest("web1", "saved", image="managed")
    j = j.guest("web1", "restoring").guest("web1", "restore_failed").guest("web1", "cold_booted", running_again=40.0,
                                                                            outcome="cold_booted")
    _, text = notices.after_notice(j, [j.guests["web1"]], "hv1")
    assert "40 s            REBOOTED: it could not be restored from its memory image" in text


def test_every_outcome_has_its_own_text() -> None:
    texts = [notices.owner_text(GuestRecord("g", outcome=outcome, unsaved=unsaved)) for outcome, unsaved in (
        ("restored", None), ("cold_booted", None), ("restarted", "shut_down"), ("restarted", "with_host"),
        ("left_stopped", None), ("lost", None), (None, None))]
    assert len(set(texts)) == len(texts)


def test_the_report_lists_every_guest_and_the_total_downtime() -> None:
    j = journal().advance("preflight").advance("saving")
    for name, down in (("web1", 10.0), ("web2", 20.0)):
        j = j.guest(name, "saving", save_started=0.0).guest(name, "saved").guest(name, "restoring")
        j = j.guest(name, "running", running_again=down)
    subject, text = notices.report(j, "hv1")
    assert subject == f"[hostagent] maintenance {j.id} on hv1: saving"
    assert "total guest downtime 30.0 s, longest 20.0 s" in text
    assert "db1            planned        -          bob@example.com" in text
    assert "web1           running        10.0 s" in text


def test_called_off_tells_owners_nothing_happened() -> None:
    j = journal().mark_sent("before:86400").advance("cancelled")
    subject, text = notices.called_off(j, notices.by_owner(j)["bob@example.com"], "hv1")
    assert subject.endswith("cancelled") and "not touched" in text and "db1" in text
