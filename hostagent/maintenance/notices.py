"""What owners and operators are told about a maintenance: pure text, no mail machinery.

Owners get notices at the configured lead times before the reboot and one afterwards with each
of their guests' measured downtime, the basis for crediting them.  The operator gets a report
when the maintenance ends.  ``Journal.sent`` records what went out, so nothing is sent twice.
"""

from __future__ import annotations

from collections.abc import Iterable

from hostagent.maintenance.journal import GuestRecord, Journal
from hostagent.maintenance.when import at as _at
from hostagent.maintenance.when import duration as _duration
from hostagent.rpc import shown

AFTER, REPORT = "after", "report"
# What an owner reads for each outcome (journal.OUTCOMES); a guest whose save failed says how it went down.
OWNER_TEXT = {
    "restored": "restored: it was paused, not rebooted",
    "cold_booted": "REBOOTED: it could not be restored from its memory image, so it was started afresh",
    "restarted:shut_down": "REBOOTED: it could not be saved, so it was shut down cleanly and started again",
    "restarted:with_host": "REBOOTED: it could not be saved and went down with the host; started again after",
    "restarted:not_begun": "REBOOTED: the maintenance stopped before its save began, and it was found down; "
                           "started again",
    "left_stopped": "not touched: it was stopped before the maintenance and is left stopped",
    "lost": "NOT RUNNING after the maintenance: our staff are on it",
    None: "not interrupted: it kept running",
}


# a guest someone else started after hostagent had saved it or shut it down, then saved again and restored
STARTED_AGAIN_TEXT = {
    "saved": "restored, but someone else started it during the maintenance after it had been saved: it may have "
             "been booted afresh then",
    "shut_down": "REBOOTED: it could not be saved and was shut down; someone else started it again during the "
                 "maintenance, and it was then saved and restored",
}


def owner_text(record: GuestRecord) -> str:
    if record.outcome == "restored" and record.started_again in STARTED_AGAIN_TEXT:
        return STARTED_AGAIN_TEXT[record.started_again]
    key = f"restarted:{record.unsaved or 'with_host'}" if record.outcome == "restarted" else record.outcome
    return OWNER_TEXT.get(key, OWNER_TEXT["lost"])


def downtime_text(record: GuestRecord) -> str:
    if record.outcome in ("left_stopped", None):  # None: it kept running (a save that failed or never began)
        return "none"
    if record.outcome == "lost":
        return "still down"
    if record.downtime_s is not None:
        return _duration(record.downtime_s)
    return "unknown"


def due_before(journal: Journal, now: float, lead_times: Iterable[float]) -> list[str]:
    """Keys of the before-notices due now; several due at once (scheduled late) go out as one."""
    if journal.phase != "planned" or not journal.notify_owners or now >= journal.reboot_at:
        return []
    return [f"before:{lead:g}" for lead in sorted(lead_times, reverse=True)
            if now >= journal.reboot_at - lead and f"before:{lead:g}" not in journal.sent]


def by_owner(journal: Journal, announced_only: bool = False) -> dict[str, list[GuestRecord]]:
    """Owner -> their guests; ``announced_only``: only guests planned at scheduling (told beforehand), not
    those the run-time plan added."""
    owners: dict[str, list[GuestRecord]] = {}
    for record in journal.guests.values():
        if announced_only and record.added:
            continue
        if record.owner:
            owners.setdefault(record.owner, []).append(record)
    return owners


def before_notice(journal: Journal, guests: list[GuestRecord], hostname: str, now: float) -> tuple[str, str]:
    left = journal.reboot_at - now
    subject = f"Planned maintenance of {hostname} at {_at(journal.reboot_at)}"
    lines = [f"The host {hostname}, which runs your virtual machines listed below, will be rebooted at",
             f"  {_at(journal.reboot_at)}",
             f"that is in {_duration(left) if left < 7200 else f'{left / 3600:.1f} hours'}.",
             ""]
    if journal.reason:
        lines += [f"Reason: {shown(journal.reason, 2000)}", ""]
    lines += ["Your machines will be saved to disk before the reboot and restored after it, so they will",
              "not appear to have been rebooted; expect a network outage of some minutes while they are",
              "paused.  We will write again with the measured downtime of each machine.", "",
              *(f"  - {shown(g.name)}" for g in guests), "", f"Maintenance {journal.id}"]
    return subject, "\n".join(lines) + "\n"


def after_notice(journal: Journal, guests: list[GuestRecord], hostname: str) -> tuple[str, str]:
    subject = f"Maintenance of {hostname} finished: your downtime"
    lines = [f"The maintenance of {hostname} planned for {_at(journal.reboot_at)} has ended.", "",
             "machine        downtime        outcome"]
    for g in guests:
        lines.append(f"{shown(g.name):<14} {downtime_text(g):<15} {owner_text(g)}")
        if g.went_down is not None and g.outcome not in ("left_stopped", None):
            lines.append(f"{'':<14} down from {_at(g.went_down)} to {_at(g.running_again)}")
            if g.downtime_unknown:
                lines.append(f"{'':<14} downtime {g.downtime_unknown}")
    lines += ["", f"Maintenance {journal.id}"]
    return subject, "\n".join(lines) + "\n"


def called_off(journal: Journal, guests: list[GuestRecord], hostname: str) -> tuple[str, str]:
    word = "cancelled" if journal.phase == "cancelled" else "did not take place"
    subject = f"Maintenance of {hostname} at {_at(journal.reboot_at)} {word}"
    lines = [f"The maintenance of {hostname} we announced for {_at(journal.reboot_at)} {word}.",
             "Your machines were not touched:", *(f"  - {shown(g.name)}" for g in guests), "",
             "If it is rescheduled, you will get a new notice.", "", f"Maintenance {journal.id}"]
    return subject, "\n".join(lines) + "\n"


def report(journal: Journal, hostname: str) -> tuple[str, str]:
    """The operator's report: every guest, its downtime and errors, and the phases with their times."""
    subject = f"[hostagent] maintenance {journal.id} on {hostname}: {journal.phase}"
    downtimes = [g.downtime_s for g in journal.guests.values() if g.downtime_s is not None]
    lines = [f"Maintenance {journal.id} on {hostname}: {journal.phase}",
             f"Planned for {_at(journal.reboot_at)}; reason: {shown(journal.reason, 2000) or '-'}"]
    if journal.error:
        lines.append(f"Error: {shown(journal.error, 2000)}")
    lines += ["", "guest          outcome        downtime   owner / details"]
    for g in journal.guests.values():
        down = f"{g.downtime_s:.1f} s" if g.downtime_s is not None else ("unknown" if g.downtime_unknown else "-")
        details = [g.owner or "-"]
        details += ["added at run time"] if g.added else []
        details += [f"restored by {g.restored_by}"] if g.restored_by and g.restored_by != "hostagent" else []
        details += [f"memory image kept at {g.kept_image}"] if g.kept_image else []
        details += [f"clock {g.clock}"] if g.clock and g.clock != "set" else []
        details += [f"downtime {g.downtime_unknown}"] if g.downtime_unknown else []
        details += [g.error] if g.error else []
        lines.append(f"{shown(g.name):<14} {g.outcome or g.state:<14} {down:<10} "
                     + shown(" / ".join(details), 2000))
    if downtimes:
        lines.append(f"total guest downtime {sum(downtimes):.1f} s, longest {max(downtimes):.1f} s")
    lines += ["", "phases:", *(f"  {phase:<10} {_at(at)}" for phase, at in journal.history)]
    return subject, "\n".join(lines) + "\n"
