"""Running a maintenance: due or missed, preflight again, save, reboot; restore after the boot.

These functions take a hypervisor and run in the maintenance worker (``worker.py``), a child
process the daemon supervises; tests call them directly against libvirt's test driver.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Literal

from hostagent.actions import AuditLog
from hostagent.config import Config, MaintenanceConfig
from hostagent.context import CheckContext
from hostagent.errors import HostagentError
from hostagent.host import Host
from hostagent.hypervisor import Hypervisor
from hostagent.maintenance import coexist, faults
from hostagent.maintenance.journal import Journal, JournalStore, PhaseMoved
from hostagent.maintenance.phases import Recorder, final_listing, restore_phase, save_phase
from hostagent.maintenance.preflight import Preflight, run_preflight
from hostagent.progress import ProgressBoard
from hostagent.records import replace
from hostagent.state import StateStore

BOOT_ID = "/proc/sys/kernel/random/boot_id"


def due(journal: Journal, now: float, grace: float) -> Literal["wait", "run", "missed"]:
    """Whether a planned maintenance should start now; past its grace it is missed, never run late.  One
    whose owners were to be told beforehand (``notify_owners``) and were not (the daemon was down through
    every lead time, or no notice could be queued) is missed too: they were promised notice (I2)."""
    if journal.phase != "planned" or now < journal.reboot_at:
        return "wait"
    if unannounced(journal):
        return "missed"
    return "run" if now - journal.reboot_at <= grace else "missed"


def unannounced(journal: Journal) -> bool:
    """Owners to be told beforehand, and no notice before the maintenance went out."""
    return journal.notify_owners and not any(key.startswith("before:") for key in journal.sent)


def mark_missed(store: JournalStore, journal: Journal, now: float) -> Journal:
    """Planned, and past its grace or never announced: missed (refused, PhaseMoved, if it was cancelled or
    started meanwhile)."""
    late = now - journal.reboot_at
    why = ("the owners were to be told beforehand, and no notice went out before the scheduled time (was the "
           "daemon down, or the mail spool full?): not rebooted" if unannounced(journal) else
           f"the daemon was down at the scheduled time; {late:.0f} s late is past the grace: not rebooted")
    return store.update(journal.id, lambda current: current.advance("missed", now=now, error=why))


def run_now(store: JournalStore, journal: Journal, hypervisor: Hypervisor, preflight: Callable[[], Preflight],
            config: MaintenanceConfig, reboot: Callable[[], str | None], *, boot_id: str | None = None,
            audit: AuditLog | None = None, progress: ProgressBoard | None = None,
            others: Mapping[str, str] | None = None, settle: Callable[[], None] | None = None) -> Journal:
    """Preflight again, decide the guests, save them, then (a compare-and-set on the journal) ``rebooting``
    and reboot.

    ``reboot`` returns None once the reboot is under way, or why it failed (or raises); then the guests
    are restored at once and the maintenance ends failed.  ``settle`` (sync) runs before the final
    listing (``phases.final_listing``), so the listing is the last step before the reboot command.
    A cancel at any point before ``rebooting`` wins: no reboot, and the guests already saved are
    restored at once."""
    recorder = Recorder(journal, store, audit)
    try:
        recorder.advance("preflight")
        faults.point("preflight")
        try:
            checked = preflight()
        except HostagentError as err:
            recorder.advance("failed", error=f"preflight at the scheduled time: {err}")
            return recorder.journal
        if not checked.allowed(recorder.journal.force, recorder.journal.force_unbootable):
            recorder.advance("failed", error="preflight at the scheduled time: " + "; ".join(checked.lines()))
            return recorder.journal
        recorder.replan(checked.guests, config.owners)
        others = others or coexist.restorers(checked.coexistence)
        recorder.advance("saving", boot_id=boot_id)  # libvirt's hook refuses starts in this boot only
    except PhaseMoved:
        return recorder.journal  # cancelled meanwhile: nothing was touched
    stop = save_phase(recorder, hypervisor, config, progress=progress)
    if stop is None and recorder.write_error is None and settle is not None:
        settle()  # sync: its time is not a window for a guest to start unseen
    failures: list[str | None] = []

    def reboot_now() -> None:
        faults.point("before-reboot")
        try:
            failures.append(reboot())
        except Exception as err:  # I6: whatever fails here, the guests come back at once
            failures.append(f"the reboot step failed: {type(err).__name__}: {err}")

    if stop is None and recorder.write_error is None:
        # I1: the last listing, the move to rebooting and the reboot command are one step under the lock;
        # a cancel wins until then
        stop = final_listing(recorder, hypervisor, config, progress=progress, boot_id=boot_id, then=reboot_now)
    if recorder.write_error is not None and not failures:
        stop = f"{recorder.write_error}: not rebooted"
    if stop is not None:
        if recorder.journal.phase in ("saving", "rebooting"):
            with contextlib.suppress(PhaseMoved):  # a cancel put it in restoring already
                recorder.advance("restoring", error=stop)
        restore_phase(recorder, hypervisor, config, aborted=True, progress=progress, others=others)
        recorder.flush()
        return recorder.journal
    failure = failures[0] if failures else "the reboot command did not run"
    if failure is None:
        recorder.reboot_issued()
    else:
        recorder.advance("restoring", error=f"{failure}; guests restored without a reboot")
        restore_phase(recorder, hypervisor, config, aborted=True, progress=progress, others=others)
    return recorder.journal


def resume_after_boot(store: JournalStore, hypervisor: Hypervisor, config: MaintenanceConfig,
                      audit: AuditLog | None = None, progress: ProgressBoard | None = None,
                      others: Mapping[str, str] | None = None, boot_id: str | None = None) -> Journal | None:
    """After the reboot, or after a worker died mid-save or mid-restore: restore whatever is not running.
    ``boot_id``: this boot's, to tell whether the host went down since the saves began."""
    journal = store.active()
    if journal is None or journal.phase not in ("saving", "rebooting", "restoring"):
        return None
    faults.point("before-restore")
    aborted = journal.phase == "saving" or journal.error is not None
    recorder = Recorder(journal, store, audit)
    if journal.phase == "saving":
        with contextlib.suppress(PhaseMoved):
            recorder.advance("restoring", error="the maintenance worker stopped while saving: not rebooted")
    went_down = journal.boot_id != boot_id if journal.boot_id is not None and boot_id is not None else None
    restore_phase(recorder, hypervisor, config, aborted=aborted, progress=progress, others=others,
                  host_went_down=went_down)
    recorder.flush()
    return recorder.journal


def current_boot_id(host: Host) -> str | None:
    text = host.read_optional(BOOT_ID)
    return text.strip() if text else None


def execute(host: Host, state: StateStore, config: Config, store: JournalStore, journal: Journal,
            audit: AuditLog, progress: ProgressBoard | None = None) -> Journal:
    """Run a planned maintenance now: the worker at the scheduled time, or ``maintenance run-now``."""
    from hostagent.hypervisor import select

    config = replace(config, maintenance=select.resolve(config.maintenance, host))
    ctx = CheckContext.for_host(host, state, config.disks.include, config.disks.exclude)
    moved = select.changed(journal.hypervisor, config.maintenance)
    if moved:  # every planned guest would look stopped, and the host would reboot with them unsaved
        why = f"{moved}; not rebooted"
        return store.update(journal.id, lambda current: current.advance("preflight").advance("failed", error=why))
    try:
        hypervisor = select.connect(config.maintenance)
    except HostagentError as err:  # the guests cannot be seen: no reboot, whatever --force said
        why = f"cannot see the guests: {err}; not rebooted"
        return store.update(journal.id, lambda current: current.advance("preflight").advance("failed", error=why))
    command = config.maintenance.reboot_command

    def settle() -> None:
        with contextlib.suppress(HostagentError):  # the reboot command syncs too; this one shortens its wait
            host.run("sync", [], name="sync", timeout=config.maintenance.shutdown_timeout)

    def reboot() -> str | None:
        try:  # I6: a reboot without its audit record is no reboot; the guests come back at once
            audit.record({"event": "maintenance", "action": "reboot", "maintenance": journal.id,
                          "subject": journal.id, "state": "rebooting", "argv": list(command)})
        except HostagentError as err:
            return f"the audit record of the reboot could not be written ({err}): not rebooted"
        try:
            result = host.run(command[0], list(command[1:]), name="reboot", timeout=60)
        except HostagentError as err:
            return f"the reboot command failed: {err}"
        if result.returncode != 0:
            return f"the reboot command failed: {' '.join(command)} exited {result.returncode}: " \
                   f"{result.stderr.strip()[-300:]}"
        return None

    def preflight() -> Preflight:
        return run_preflight(ctx, config, lambda: hypervisor, config.maintenance.save_dir)

    return run_now(store, journal, hypervisor, preflight, config.maintenance, reboot,
                   boot_id=current_boot_id(host), audit=audit, progress=progress, settle=settle)
