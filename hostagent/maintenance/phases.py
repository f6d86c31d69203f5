"""The save and restore phases of a maintenance, driven by the journal (issue #8, in progress).

Every change to a guest is written to the journal before the next step, so a crash at any
point resumes from what really happened; no guest is ever left without a record, and a save
image is never discarded silently.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Literal

from hostagent.actions import AuditLog
from hostagent.errors import HostagentError
from hostagent.hypervisor import Hypervisor
from hostagent.maintenance.journal import Journal, JournalStore


@dataclass(frozen=True)
class PhaseConfig:
    save_dir: str = "/var/lib/hostagent/save"
    concurrency: int = 4
    save_timeout: float = 600.0
    on_save_failure: Literal["shutdown", "skip", "abort"] = "shutdown"
    shutdown_timeout: float = 120.0
    restore_priority: tuple[str, ...] = ()
    restore_attempts: int = 3
    cold_boot_on_failure: bool = False


class Recorder:
    """Serialises journal updates from worker threads; each one is saved at once and audited."""

    def __init__(self, journal: Journal, store: JournalStore, audit: AuditLog | None = None) -> None:
        self.journal, self.store = journal, store
        self.audit = audit or AuditLog(None)
        self._lock = threading.Lock()

    def guest(self, name: str, state: str, **changes: object) -> None:
        with self._lock:
            self.journal = self.journal.guest(name, state, **changes)
            self.store.save(self.journal)
            record = self.journal.guests[name]
            self.audit.record({"event": "maintenance", "action": "guest", "maintenance": self.journal.id,
                               "subject": name, "state": state, "error": record.error})

    def advance(self, phase: str, error: str | None = None) -> None:
        with self._lock:
            self.journal = self.journal.advance(phase, error=error)
            self.store.save(self.journal)
            self.audit.record({"event": "maintenance", "action": "phase", "maintenance": self.journal.id,
                               "subject": self.journal.id, "state": phase, "error": error})


def save_phase(recorder: Recorder, hypervisor: Hypervisor, config: PhaseConfig,
               clock: Callable[[], float] = time.time) -> bool:
    """Save every planned guest in parallel; False when the maintenance must stop before the reboot."""
    recorder.advance("saving")
    names = [n for n, g in recorder.journal.guests.items() if g.state == "planned"]

    def save(name: str) -> None:
        recorder.guest(name, "saving", save_started=clock())
        try:
            image = hypervisor.save(name, f"{config.save_dir}/{name}.save")
        except HostagentError as err:
            recorder.guest(name, "save_failed", error=str(err))
            return
        recorder.guest(name, "saved", image=image)

    with ThreadPoolExecutor(max_workers=max(config.concurrency, 1)) as pool:
        futures = {pool.submit(save, name): name for name in names}
        _, late = wait(futures, timeout=config.save_timeout)
        for future in late:  # still saving: recorded as failed; the call itself cannot be interrupted
            name = futures[future]
            recorder.guest(name, "save_failed", error=f"save did not finish within {config.save_timeout:g} s")
    failed = [n for n, g in recorder.journal.guests.items() if g.state == "save_failed"]
    if not failed:
        return True
    if config.on_save_failure == "abort":
        recorder.advance("restoring", error=f"aborted before the reboot: {', '.join(failed)} could not be saved")
        return False
    for name in failed:
        if config.on_save_failure == "skip":
            recorder.guest(name, "skipped")
            continue
        try:
            hypervisor.shutdown(name)
            deadline = clock() + config.shutdown_timeout
            while hypervisor.is_running(name) and clock() < deadline:
                time.sleep(0.2)
            recorder.guest(name, "shut_down" if not hypervisor.is_running(name) else "skipped",
                           error=recorder.journal.guests[name].error)
        except HostagentError as err:
            recorder.guest(name, "skipped", error=f"{recorder.journal.guests[name].error}; shutdown: {err}")
    return True


def restore_phase(recorder: Recorder, hypervisor: Hypervisor, config: PhaseConfig,
                  clock: Callable[[], float] = time.time, aborted: bool = False) -> None:
    """Bring every guest back, priority first; idempotent after a crash or a second boot.

    ``aborted``: the maintenance stopped before the reboot; it ends failed once guests run again."""
    if recorder.journal.phase != "restoring":
        recorder.advance("restoring")
    pending = [n for n, g in recorder.journal.guests.items() if g.state not in ("running", "cold_booted", "planned")]
    first = [n for n in config.restore_priority if n in pending]
    rest = [n for n in pending if n not in first]

    def restore(name: str) -> None:
        record = recorder.journal.guests[name]
        if hypervisor.is_running(name):  # restored before a crash, or never stopped
            if record.state != "restoring":
                recorder.guest(name, "restoring")
            recorder.guest(name, "running", running_again=record.running_again or clock())
            return
        for attempt in range(1, config.restore_attempts + 1):
            recorder.guest(name, "restoring", attempts=recorder.journal.guests[name].attempts + 1)
            try:
                if record.image and hypervisor.has_image(name, record.image):
                    hypervisor.restore(name, record.image)
                else:
                    hypervisor.start(name)
                if hypervisor.is_running(name):
                    recorder.guest(name, "running", running_again=clock(), error=None)
                    return
            except HostagentError as err:
                recorder.guest(name, "restore_failed", error=f"attempt {attempt}: {err}")
        if config.cold_boot_on_failure:
            try:
                hypervisor.start(name)
                recorder.guest(name, "cold_booted", running_again=clock(),
                               error=f"{recorder.journal.guests[name].error}; cold booted, save image kept "
                                     f"at {record.image}")
            except HostagentError as err:
                recorder.guest(name, "restore_failed", error=f"cold boot: {err}; save image kept at {record.image}")

    for name in first:
        restore(name)
    with ThreadPoolExecutor(max_workers=max(config.concurrency, 1)) as pool:
        list(pool.map(restore, rest))
    lost = [n for n, g in recorder.journal.guests.items() if g.state not in ("running", "cold_booted", "planned")]
    if lost:
        recorder.advance("failed", error=f"not running after restore: {', '.join(lost)} (images kept)")
    else:
        recorder.advance("failed" if aborted else "done")
