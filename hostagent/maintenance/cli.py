"""``hostagent maintenance``: schedule, list, show, cancel and run reboots with guest save/restore."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from hostagent.actions import AuditLog
from hostagent.config import Config
from hostagent.context import CheckContext
from hostagent.errors import HostagentError
from hostagent.host import Host
from hostagent.hypervisor import select
from hostagent.maintenance.journal import OUTCOMES, AlreadyPlanned, Journal, JournalError, JournalStore, PhaseMoved
from hostagent.maintenance.preflight import Preflight, run_preflight
from hostagent.maintenance.when import describe, duration, parse_when
from hostagent.records import replace
from hostagent.rpc import MAX_REASON, shown


def store_for(config: Config, state_dir: str | None) -> JournalStore:
    return JournalStore(Path(state_dir or config.agent.state_dir) / "maintenance")


def schedule(config: Config, state_dir: str | None, when: str, reason: str, *, dry_run: bool, force: bool,
             force_unbootable: bool, notify_owners: bool = False,
             now: dt.datetime | None = None) -> tuple[dict[str, Any], Preflight]:
    if not reason.isprintable() or len(reason) > MAX_REASON:
        raise HostagentError(f"--reason {shown(reason, 60)!r}: at most {MAX_REASON} printable characters "
                             "(no control characters: the reason is printed on terminals and in mail)")
    current = now or dt.datetime.now(dt.UTC).astimezone()
    moment = parse_when(when, current)
    lead = moment.timestamp() - current.timestamp()
    if notify_owners and lead < config.maintenance.min_notice_lead:
        raise HostagentError(f"--reboot-at {when[:60]!r} is {duration(lead)} away: owners who are notified get at "
                             f"least maintenance.min_notice_lead ({duration(config.maintenance.min_notice_lead)}) "
                             "of notice; choose a later time, or schedule without --notify-owners")
    store = store_for(config, state_dir)
    active = store.active()  # the early answer; store.create decides under the lock
    if active is not None and not dry_run:
        raise HostagentError(str(AlreadyPlanned(active)))
    host = Host("/", command_timeout=config.agent.command_timeout)
    config = replace(config, maintenance=select.resolve(config.maintenance, host))
    ctx = CheckContext.for_host(host, None, config.disks.include, config.disks.exclude)
    result = run_preflight(ctx, config, lambda: select.connect(config.maintenance), config.maintenance.save_dir)
    document: dict[str, Any] = {"reboot_at": describe(moment), "reboot_at_utc": moment.astimezone(dt.UTC).isoformat(),
                                "reason": reason, "dry_run": dry_run, "preflight": result.lines(),
                                "allowed": result.allowed(force, force_unbootable)}
    if not result.allowed(force, force_unbootable):
        if result.hypervisor_problem:
            raise HostagentError("preflight refuses the reboot: the guests cannot be seen, so a reboot could take "
                                 "any of them down unsaved (no option overrides this):\n  "
                                 + "\n  ".join(result.lines()))
        needs = "--force-unbootable" if result.boot_problems else "--force"
        raise HostagentError("preflight refuses the reboot:\n  " + "\n  ".join(result.lines())
                             + f"\n(override with {needs} once you know why)")
    saving = [g for g in result.guests if g.action == "save"]
    owners = {g.name: g.owner or config.maintenance.owners.get(g.name) for g in saving}
    document["owners"] = owners
    if notify_owners:
        unknown = sorted(name for name, owner in owners.items() if not owner)
        document["notices"] = {"lead_times_s": list(config.maintenance.notice_lead_times),
                               "guests_without_owner": unknown}
    if not dry_run:
        journal = Journal.new(moment.timestamp(), reason, [g.name for g in saving],
                              owners={n: o for n, o in owners.items() if o}, force=force,
                              force_unbootable=force_unbootable, notify_owners=notify_owners,
                              hypervisor=select.describe(config.maintenance))
        audit = AuditLog.configured(state_dir or config.agent.state_dir, config.agent)
        event = {"event": "maintenance", "action": "schedule", "maintenance": journal.id, "subject": journal.id,
                 "reboot_at": document["reboot_at_utc"], "reason": reason, "force": force,
                 "force_unbootable": force_unbootable, "guests": sorted(journal.guests)}
        try:
            store.create(journal)
        except AlreadyPlanned as err:  # a parallel schedule won the lock first
            _audit_or_log(audit, {**event, "state": "refused", "error": str(err)})
            raise HostagentError(str(err)) from None
        except JournalError as err:
            _audit_or_log(audit, {**event, "state": "refused", "error": str(err)})
            raise HostagentError(f"{err}; nothing was scheduled") from None
        _audit_or_log(audit, {**event, "state": "planned"})
        document["id"] = journal.id
    return document, result


def _audit_or_log(audit: AuditLog, event: dict[str, Any]) -> None:
    """The audit record; when even that cannot be written, the same record goes to syslog."""
    try:
        audit.record(event)
    except HostagentError as err:
        import syslog

        syslog.openlog("hostagent", 0, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_ERR, f"{err}; the record: {json.dumps(event)}")


def listing(config: Config, state_dir: str | None) -> list[dict[str, Any]]:
    """Every maintenance, and every journal file that cannot be read (phase ``unreadable``)."""
    journals, unreadable = store_for(config, state_dir).scan()
    return [journal.row() for journal in journals] + [entry.row() for entry in unreadable]


def render_rows(rows: list[dict[str, Any]], status: bool) -> str:
    """``maintenance list|status`` as text: each maintenance, its guests' outcomes and downtimes."""
    lines = []
    for row in rows:
        if row["phase"] == "unreadable":
            lines.append(f"{row['file']}  unreadable: {row['error']}")
            continue
        lines.append(f"{row['id']}  {row['phase']:10} {row['reboot_at']}  {shown(row['reason'])}")
        for guest, record in row["guests"].items():
            down = f", down {record['downtime_s']:.1f} s" if record["downtime_s"] is not None else (
                f", downtime {record['downtime_unknown']}" if record.get("downtime_unknown") else "")
            said = OUTCOMES.get(record["outcome"], record["state"])
            added = " (added at run time)" if record["added_at_run_time"] else ""
            error = f" ({shown(record['error'], 400)})" if record["error"] else ""
            lines.append(f"    {shown(guest)}: {said}{added}{down}{error}")  # names and errors from the host
        if row["error"]:
            lines.append(f"    error: {shown(row['error'], 400)}")
    if not rows:
        lines.append("no maintenance" + (" scheduled" if status else ""))
    return "\n".join(lines) + "\n"


def cancel(config: Config, state_dir: str | None) -> dict[str, Any]:
    """Cancel the maintenance that has not rebooted yet: a compare-and-set on the journal on disk.

    Before the saves start nothing was touched; once they have, the run stops before the reboot and
    the guests already saved are restored at once.  After ``rebooting`` it is too late."""
    store = store_for(config, state_dir)
    try:
        with store.locked():  # the same lock as schedule and the worker: the one active maintenance is cancelled
            active = store.active()
            if active is None:
                raise HostagentError("no maintenance is scheduled")
            cancelled = store.update(active.id, lambda current: current.cancel())
    except PhaseMoved as moved:
        raise HostagentError(str(moved)) from None
    # the cancel is on disk: a record that cannot be written goes to syslog, and the operator is told the truth
    _audit_or_log(AuditLog.configured(state_dir or config.agent.state_dir, config.agent),
                  {"event": "maintenance", "action": "cancel", "maintenance": cancelled.id, "subject": cancelled.id,
                   "state": cancelled.phase})
    note = "no reboot; the guests already saved are being restored" if cancelled.phase == "restoring" else \
        "nothing was touched"
    return {"id": cancelled.id, "phase": "cancelled", "journal_phase": cancelled.phase, "note": note}


def run_now(config: Config, config_path: str | None, state_dir: str | None) -> dict[str, Any]:
    """Run the planned maintenance at once in a worker child process (it reboots the host with
    maintenance.reboot_command); progress goes to this terminal."""
    import subprocess
    import sys

    from hostagent.maintenance.worker import command, deadline_for, kill_group

    store = store_for(config, state_dir)
    active = store.active()
    if active is None or active.phase != "planned":
        raise HostagentError("no planned maintenance to run: schedule one with --reboot-at")
    directory = state_dir or config.agent.state_dir
    deadline = deadline_for("run", active, config.maintenance)
    # the worker's progress goes to this terminal's stderr, so --json output stays clean
    process = subprocess.Popen(command("run", active.id, directory, config_path), stdout=sys.stderr.fileno(),
                               start_new_session=True)
    try:
        process.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        kill_group(process)  # the worker's session: its saves and shutdowns go with it
        raise HostagentError(f"maintenance {active.id}: the worker overran {deadline:.0f} s and was killed; "
                             "hostagent watch resumes it from the journal") from None
    result = store.load(active.id)
    return {"id": result.id, "phase": result.phase, "error": result.error,
            "guests": {n: g.state for n, g in result.guests.items()}}


def render(document: Any) -> str:
    return json.dumps(document, indent=2) + "\n"
