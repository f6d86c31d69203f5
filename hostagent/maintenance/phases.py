"""The save and restore phases of a maintenance, driven by the journal.

Every change to a guest is written to the journal before the next step, so a crash at any
point resumes from what really happened; no guest is ever left without a record, and a save
image is never discarded silently.  These run in the maintenance worker, a child process of
the daemon (``hostagent.maintenance.worker``), so a hypervisor call that hangs cannot hang the
daemon; within the worker each guest's save has its own timeout, enforced by aborting the job.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from hostagent.actions import AuditLog
from hostagent.config import MaintenanceConfig
from hostagent.errors import HostagentError
from hostagent.hypervisor import Hypervisor
from hostagent.maintenance.journal import Journal, JournalStore
from hostagent.progress import ProgressBoard, describe_transfer


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

    def advance(self, phase: str, error: str | None = None, **changes: Any) -> None:
        with self._lock:
            self.journal = self.journal.advance(phase, error=error, **changes)
            self.store.save(self.journal)
            self.audit.record({"event": "maintenance", "action": "phase", "maintenance": self.journal.id,
                               "subject": self.journal.id, "state": phase, "error": error})


def save_phase(recorder: Recorder, hypervisor: Hypervisor, config: MaintenanceConfig,
               clock: Callable[[], float] = time.time, progress: ProgressBoard | None = None) -> bool:
    """Save every planned guest in parallel; False when the maintenance must stop before the reboot.

    A save that overruns ``save_timeout`` is aborted (the guest keeps running) and fails; one that
    does not even return ``abort_grace`` s after the abort leaves its guest in an unknown state, so
    the maintenance stops before the reboot whatever ``on_save_failure`` says."""
    recorder.advance("saving")
    board = progress or ProgressBoard(tty=False, every=float("inf"))
    names = [n for n, g in recorder.journal.guests.items() if g.state == "planned"]
    transfer: dict[str, tuple[int, int] | None] = {}

    def save(name: str) -> None:
        recorder.guest(name, "saving", save_started=clock())
        threading.Thread(target=watch_job, args=(name,), daemon=True).start()
        try:
            image = hypervisor.save(name, f"{config.save_dir}/{name}.save")
            outcome: dict[str, object] = {"image": image}
        except HostagentError as err:
            outcome = {"error": str(err)}
        if recorder.journal.guests[name].state != "saving":  # already given up on: the timeout's record stays
            return
        if "image" in outcome:
            recorder.guest(name, "saved", **outcome)
        else:
            late = name in aborted
            reason = f"timed out after {config.save_timeout:g} s, job aborted ({outcome['error']})" if late \
                else outcome["error"]
            recorder.guest(name, "save_failed", error=reason)

    def watch_job(name: str) -> None:  # job stats may block while the hypervisor is busy: never in the main loop
        while recorder.journal.guests[name].state == "saving":
            transfer[name] = hypervisor.job_progress(name)
            time.sleep(1.0)

    aborted: dict[str, float] = {}
    stuck: list[str] = []
    pool = ThreadPoolExecutor(max_workers=max(config.concurrency, 1))
    futures = {pool.submit(save, name): name for name in names}
    while True:
        running = [f for f in futures if not f.done() and futures[f] not in stuck]
        if not running:
            break
        wait(running, timeout=1.0)
        now = clock()
        for future in running:
            name = futures[future]
            record = recorder.journal.guests[name]
            if future.done() or record.state != "saving" or record.save_started is None:
                continue
            elapsed = now - record.save_started
            done, total = transfer.get(name) or (None, None)
            board.update(name, "saving " + describe_transfer(done, total, elapsed))
            if elapsed > config.save_timeout and name not in aborted:
                aborted[name] = now
                threading.Thread(target=_quietly, args=(hypervisor.abort, name), daemon=True).start()
            elif name in aborted and now - aborted[name] > config.abort_grace:
                stuck.append(name)
                recorder.guest(name, "save_failed", error=f"save did not finish within {config.save_timeout:g} s "
                                                          f"and did not stop {config.abort_grace:g} s after the "
                                                          "abort: state unknown")
    pool.shutdown(wait=False)  # a stuck call stays behind in its thread; the worker process exits anyway
    proceed = _apply_failure_policy(recorder, hypervisor, config, stuck, clock)
    for name in names:
        record = recorder.journal.guests[name]
        board.update(name, record.state + (f": {record.error}" if record.error else ""), final=True)
    return proceed


def _apply_failure_policy(recorder: Recorder, hypervisor: Hypervisor, config: MaintenanceConfig, stuck: list[str],
                          clock: Callable[[], float]) -> bool:
    """``on_save_failure`` for the guests that could not be saved; False: stop before the reboot."""
    failed = [n for n, g in recorder.journal.guests.items() if g.state == "save_failed"]
    if not failed:
        return True
    if config.on_save_failure == "abort" or stuck:
        why = "could not be saved" if not stuck else f"left in an unknown state ({', '.join(stuck)} stuck)"
        recorder.advance("restoring", error=f"aborted before the reboot: {', '.join(failed)} {why}")
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


def restore_workers(config: MaintenanceConfig) -> int:
    """Restores are CPU-bound (the guest's memory is loaded and its devices set up): beyond one per CPU,
    parallel restores only finish later together, and every guest waits for the slowest."""
    if config.restore_concurrency > 0:
        return config.restore_concurrency
    return max(1, min(config.concurrency, os.cpu_count() or 1))


def _quietly(call: Callable[[str], None], name: str) -> None:
    with contextlib.suppress(HostagentError):  # nothing to abort any more: the save ended on its own
        call(name)


def restore_phase(recorder: Recorder, hypervisor: Hypervisor, config: MaintenanceConfig,
                  clock: Callable[[], float] = time.time, aborted: bool = False,
                  progress: ProgressBoard | None = None) -> None:
    """Bring every guest back, priority first; idempotent after a crash or a second boot.

    ``aborted``: the maintenance stopped before the reboot; it ends failed once guests run again."""
    if recorder.journal.phase != "restoring":
        recorder.advance("restoring")
    board = progress or ProgressBoard(tty=False, every=float("inf"))
    pending = [n for n, g in recorder.journal.guests.items() if g.state not in ("running", "cold_booted", "planned")]
    first = [n for n in config.restore_priority if n in pending]
    rest = [n for n in pending if n not in first]

    def restore(name: str) -> None:
        record = recorder.journal.guests[name]
        if hypervisor.is_running(name):  # restored before a crash, or never stopped
            if record.state != "restoring":
                recorder.guest(name, "restoring")
            recorder.guest(name, "running", running_again=record.running_again or clock())
            board.update(name, "running", final=True)
            return
        for attempt in range(1, config.restore_attempts + 1):
            board.update(name, f"restoring (attempt {attempt})")
            recorder.guest(name, "restoring", attempts=recorder.journal.guests[name].attempts + 1)
            try:
                if record.image and hypervisor.has_image(name, record.image):
                    hypervisor.restore(name, record.image)
                else:
                    hypervisor.start(name)
                if hypervisor.is_running(name):
                    recorder.guest(name, "running", running_again=clock(), error=None)
                    board.update(name, "running", final=True)
                    return
            except HostagentError as err:
                recorder.guest(name, "restore_failed", error=f"attempt {attempt}: {err}")
        if config.cold_boot_on_failure:
            try:
                kept = hypervisor.cold_boot(name, record.image, f"{config.save_dir}/{name}.kept-{recorder.journal.id}")
                recorder.guest(name, "cold_booted", running_again=clock(),
                               error=f"{recorder.journal.guests[name].error}; cold booted, save image kept at {kept}")
            except HostagentError as err:
                recorder.guest(name, "restore_failed", error=f"cold boot: {err}; save image kept")
        final = recorder.journal.guests[name]
        board.update(name, f"{final.state}: {final.error}", final=True)

    for name in first:
        restore(name)
    with ThreadPoolExecutor(max_workers=restore_workers(config)) as pool:
        list(pool.map(restore, rest))
    lost = [n for n, g in recorder.journal.guests.items() if g.state not in ("running", "cold_booted", "planned")]
    if lost:
        recorder.advance("failed", error=f"not running after restore: {', '.join(lost)} (images kept)")
    else:
        recorder.advance("failed" if aborted else "done")
