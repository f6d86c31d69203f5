"""Running a maintenance: due or missed, preflight again, save, reboot; restore after the boot.

(issue #8, in progress: the daemon does not yet call these on its own.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

from hostagent.actions import AuditLog
from hostagent.config import Config
from hostagent.context import CheckContext
from hostagent.errors import HostagentError
from hostagent.host import Host
from hostagent.hypervisor import Hypervisor
from hostagent.maintenance.journal import Journal, JournalStore
from hostagent.maintenance.phases import PhaseConfig, Recorder, restore_phase, save_phase
from hostagent.maintenance.preflight import Preflight, run_preflight
from hostagent.state import StateStore


def due(journal: Journal, now: float, grace: float) -> Literal["wait", "run", "missed"]:
    """Whether a planned maintenance should start now; past its grace it is missed, never run late."""
    if journal.phase != "planned" or now < journal.reboot_at:
        return "wait"
    return "run" if now - journal.reboot_at <= grace else "missed"


def mark_missed(store: JournalStore, journal: Journal, now: float) -> Journal:
    late = now - journal.reboot_at
    missed = journal.advance("missed", now=now, error=f"the daemon was down at the scheduled time; "
                                                      f"{late:.0f} s late is past the grace: not rebooted")
    store.save(missed)
    return missed


def run_now(store: JournalStore, journal: Journal, hypervisor: Hypervisor, preflight: Preflight,
            config: PhaseConfig, reboot: Callable[[], None], *, force: bool = False,
            force_unbootable: bool = False, audit: AuditLog | None = None) -> Journal:
    """Preflight again, save every guest, sync, record ``rebooting`` and reboot."""
    recorder = Recorder(journal, store, audit)
    recorder.advance("preflight")
    if not preflight.allowed(force, force_unbootable):
        recorder.advance("failed", error="preflight at the scheduled time: " + "; ".join(preflight.lines()))
        return recorder.journal
    if not save_phase(recorder, hypervisor, config):
        restore_phase(recorder, hypervisor, config, aborted=True)
        return recorder.journal
    os.sync()
    recorder.advance("rebooting")
    reboot()
    return recorder.journal


def resume_after_boot(store: JournalStore, hypervisor: Hypervisor, config: PhaseConfig,
                      audit: AuditLog | None = None) -> Journal | None:
    """After the reboot (or a crash mid-restore): restore whatever the journal says is not running."""
    journal = store.active()
    if journal is None or journal.phase not in ("rebooting", "restoring"):
        return None
    recorder = Recorder(journal, store, audit)
    restore_phase(recorder, hypervisor, config)
    return recorder.journal


def execute(host: Host, state: StateStore, config: Config, store: JournalStore, journal: Journal,
            audit: AuditLog) -> Journal:
    """Run a planned maintenance now: the daemon at its time, or ``maintenance run-now``."""
    from hostagent.hypervisor.libvirt_backend import LibvirtHypervisor

    ctx = CheckContext.for_host(host, state, config.disks.include, config.disks.exclude)
    try:
        hypervisor = LibvirtHypervisor(config.maintenance.uri)
        preflight = run_preflight(ctx, config, lambda: hypervisor, config.maintenance.save_dir)
    except HostagentError as err:
        failed = journal.advance("preflight").advance("failed", error=str(err))
        store.save(failed)
        return failed
    command = config.maintenance.reboot_command

    def reboot() -> None:
        audit.record({"event": "maintenance", "action": "reboot", "maintenance": journal.id,
                      "subject": journal.id, "state": "rebooting", "argv": list(command)})
        host.run(command[0], list(command[1:]), name="reboot", timeout=60)

    return run_now(store, journal, hypervisor, preflight, PhaseConfig(save_dir=config.maintenance.save_dir), reboot,
                   force=journal.force, force_unbootable=journal.force_unbootable, audit=audit)
