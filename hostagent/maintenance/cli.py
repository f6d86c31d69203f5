"""``hostagent maintenance``: schedule, list, show, cancel and run reboots with guest save/restore."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from hostagent.config import Config
from hostagent.context import CheckContext
from hostagent.errors import HostagentError
from hostagent.host import Host
from hostagent.maintenance.journal import Journal, JournalStore
from hostagent.maintenance.preflight import Preflight, run_preflight
from hostagent.maintenance.when import describe, parse_when


def store_for(config: Config, state_dir: str | None) -> JournalStore:
    return JournalStore(Path(state_dir or config.agent.state_dir) / "maintenance")


def _connect(config: Config) -> Any:
    from hostagent.hypervisor.libvirt_backend import LibvirtHypervisor

    return LibvirtHypervisor(config.maintenance.uri)


def schedule(config: Config, state_dir: str | None, when: str, reason: str, *, dry_run: bool, force: bool,
             force_unbootable: bool, notify_owners: bool = False,
             now: dt.datetime | None = None) -> tuple[dict[str, Any], Preflight]:
    moment = parse_when(when, now or dt.datetime.now(dt.UTC).astimezone())
    store = store_for(config, state_dir)
    active = store.active()
    if active is not None and not dry_run:
        raise HostagentError(f"maintenance {active.id} is already {active.phase} for "
                             f"{describe(dt.datetime.fromtimestamp(active.reboot_at, dt.UTC))}; cancel it first")
    host = Host("/", command_timeout=config.agent.command_timeout)
    ctx = CheckContext.for_host(host, None, config.disks.include, config.disks.exclude)
    result = run_preflight(ctx, config, lambda: _connect(config), config.maintenance.save_dir)
    document: dict[str, Any] = {"reboot_at": describe(moment), "reboot_at_utc": moment.astimezone(dt.UTC).isoformat(),
                                "reason": reason, "dry_run": dry_run, "preflight": result.lines(),
                                "allowed": result.allowed(force, force_unbootable)}
    if not result.allowed(force, force_unbootable):
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
                              force_unbootable=force_unbootable, notify_owners=notify_owners)
        store.save(journal)
        document["id"] = journal.id
    return document, result


def listing(config: Config, state_dir: str | None) -> list[dict[str, Any]]:
    return [journal.row() for journal in store_for(config, state_dir).all()]


def cancel(config: Config, state_dir: str | None) -> dict[str, Any]:
    store = store_for(config, state_dir)
    active = store.active()
    if active is None:
        raise HostagentError("no maintenance is scheduled")
    if active.phase != "planned":
        raise HostagentError(f"maintenance {active.id} is already {active.phase}: too late to cancel")
    store.save(active.advance("cancelled"))
    return {"id": active.id, "phase": "cancelled"}


def run_now(config: Config, config_path: str | None, state_dir: str | None) -> dict[str, Any]:
    """Run the planned maintenance at once in a worker child process (it reboots the host with
    maintenance.reboot_command); progress goes to this terminal."""
    import subprocess
    import sys

    from hostagent.maintenance.worker import command, deadline_for

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
        process.kill()
        raise HostagentError(f"maintenance {active.id}: the worker overran {deadline:.0f} s and was killed; "
                             "hostagent watch resumes it from the journal") from None
    result = store.load(active.id)
    return {"id": result.id, "phase": result.phase, "error": result.error,
            "guests": {n: g.state for n, g in result.guests.items()}}


def render(document: Any) -> str:
    return json.dumps(document, indent=2) + "\n"
