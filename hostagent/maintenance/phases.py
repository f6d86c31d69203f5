"""The save and restore phases of a maintenance, driven by the journal.

Every change to a guest is written to the journal before the next step, so a crash at any
point resumes from what really happened; no guest is ever left without a record, and a save
image is never discarded silently.  These run in the maintenance worker, a child process of
the daemon (``hostagent.maintenance.worker``), so a hypervisor call that hangs cannot hang the
daemon; within the worker each guest's save has its own timeout, enforced by aborting the job.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from hostagent.actions import AuditLog
from hostagent.config import MaintenanceConfig
from hostagent.errors import HostagentError
from hostagent.hypervisor import GuestInfo, Hypervisor
from hostagent.maintenance import gate
from hostagent.maintenance.journal import GuestRecord, Journal, JournalStore, JournalWriteError, PhaseMoved
from hostagent.maintenance.preflight import GuestPlan
from hostagent.progress import ProgressBoard, describe_transfer
from hostagent.records import replace


class Recorder:
    """Journal updates from the worker's threads, each a compare-and-set on the journal on disk, audited.

    When the journal cannot be written (a full disk), ``write_error`` is set, the run goes on in
    memory only as far as bringing guests back, and never reboots; ``flush`` writes the outcome
    once the disk takes it again."""

    def __init__(self, journal: Journal, store: JournalStore, audit: AuditLog | None = None) -> None:
        self.journal, self.store = journal, store
        self.audit = audit or AuditLog(None)
        self.write_error: str | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """This recorder's lock, then the host-level maintenance lock (always in this order): a check of
        the journal on disk and the step it guards are one step, which no cancel can fall between."""
        with self._lock:
            if self.write_error is not None:  # the disk is not taking writes: the run is in memory only
                yield
                return
            with self.store.locked():
                yield

    def _update(self, change: Callable[[Journal], Journal]) -> Journal:
        with self._lock:
            return self._apply(change)

    def _apply(self, change: Callable[[Journal], Journal]) -> Journal:
        """The compare-and-set itself; the caller holds ``self._lock``."""
        if self.write_error is None:
            try:
                self.journal = self.store.update(self.journal.id, change)
                return self.journal
            except PhaseMoved as moved:
                self.journal = moved.journal
                raise
            except JournalWriteError as err:
                self.write_error = str(err)
        self.journal = change(self.journal)
        return self.journal

    def while_saving(self, name: str, act: Callable[[], None], state: str, **changes: object) -> bool:
        """Invariant I4: act on a guest (a shutdown request) only while the journal on disk still says
        ``saving``, checked under the lock the act is done in; False, and nothing done, when a cancel
        (or anything else) moved it on, or when the journal cannot be written (no reboot follows)."""
        with self.critical():
            if self.write_error is not None:
                return False
            try:
                self._apply(lambda journal: _still_saving(journal, name))
            except PhaseMoved:
                return False
            act()
            self._apply(lambda journal: journal.guest(name, state, **changes))
        self._audit({"action": "guest", "subject": name, "state": state})
        return True

    def _audit(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._audit_locked(event)

    def _audit_locked(self, event: dict[str, Any]) -> None:
        """The audit record; the caller holds ``self._lock``."""
        try:
            self.audit.record({"event": "maintenance", "maintenance": self.journal.id, **event})
        except HostagentError as err:  # no step without its audit record: the run stops before the reboot
            self.write_error = self.write_error or str(err)

    def guest(self, name: str, state: str, **changes: object) -> None:
        record = self._update(lambda journal: journal.guest(name, state, **changes)).guests[name]
        self._audit({"action": "guest", "subject": name, "state": state, "outcome": record.outcome,
                     "error": record.error})

    def start_save(self, name: str, started: float) -> bool:
        """Record that a guest's save starts, only while the maintenance is still saving (a cancel stops it)."""
        if self.write_error is not None:  # no reboot will follow: no more guests go down for nothing
            return False

        def change(journal: Journal) -> Journal:
            if journal.phase != "saving":
                raise PhaseMoved(journal, f"maintenance {journal.id} is {journal.phase}: {name} not saved")
            return journal.guest(name, "saving", save_started=started)
        try:
            self._update(change)
        except PhaseMoved:
            return False
        self._audit({"action": "guest", "subject": name, "state": "saving"})
        return True

    def advance(self, phase: str, error: str | None = None, **changes: Any) -> None:
        """Raises PhaseMoved when the journal on disk has moved on (a cancel, another worker)."""
        self._update(lambda journal: journal.advance(phase, error=error, **changes))
        self._audit({"action": "phase", "subject": self.journal.id, "state": phase, "error": error})

    def reboot_issued(self) -> None:
        """The reboot command returned: the reboot is under way (not merely decided)."""
        at = time.time()
        with contextlib.suppress(HostagentError):  # the host is going down; the boot id tells the rest
            self._update(lambda journal: replace(journal, reboot_issued=at))

    def replan(self, guests: tuple[GuestPlan, ...], owners: Mapping[str, str]) -> None:
        """The guests as the hypervisor has them at the scheduled time (see ``run_time_plan``); PhaseMoved
        when a cancel came during the preflight (nothing is written)."""
        def change(journal: Journal) -> Journal:
            if journal.phase != "preflight":
                raise PhaseMoved(journal, f"maintenance {journal.id} is {journal.phase}: no run-time plan")
            return run_time_plan(journal, guests, owners)
        self._update(change)
        for name, record in self.journal.guests.items():
            if record.added or record.state in ("stopped", "save_failed"):
                self._audit({"action": "plan", "subject": name, "state": record.state, "added": record.added,
                             "error": record.error})

    def flush(self) -> None:
        """After a write error: write the journal as it is in memory, unless the one on disk is final."""
        if self.write_error is None:
            return
        def change(on_disk: Journal) -> Journal:
            return on_disk if on_disk.final else self.journal
        with contextlib.suppress(HostagentError):  # still full: the daemon's restore worker resumes from the disk
            self.store.update(self.journal.id, change)


def _still_saving(journal: Journal, name: str) -> Journal:
    if journal.phase != "saving":
        raise PhaseMoved(journal, f"maintenance {journal.id} is {journal.phase}: {name} not touched")
    return journal


def run_time_plan(journal: Journal, guests: tuple[GuestPlan, ...], owners: Mapping[str, str]) -> Journal:
    """Decide the guests at the scheduled time: every guest running now is saved (those started since
    scheduling are added), a planned guest no longer running is left stopped, and a running guest
    that cannot be saved now is a failed save (``on_save_failure`` decides)."""
    running = {g.name: g for g in guests if g.running}
    for name, record in journal.guests.items():
        if record.state == "planned" and name not in running:
            journal = journal.guest(name, "stopped", outcome="left_stopped",
                                    error="stopped before the maintenance: left stopped")
    for name, plan in running.items():
        if name not in journal.guests:
            journal = journal.with_guest(GuestRecord(name, owner=plan.owner or owners.get(name), added=True))
        if journal.guests[name].state == "planned" and plan.action != "save":
            journal = journal.guest(name, "save_failed", error=plan.action)
    return journal


def save_phase(recorder: Recorder, hypervisor: Hypervisor, config: MaintenanceConfig,
               clock: Callable[[], float] | None = None, progress: ProgressBoard | None = None) -> str | None:
    """Save every planned guest in parallel; returns why the maintenance must stop before the reboot, if it must.

    A save that overruns ``save_timeout`` is aborted (the guest keeps running) and fails; one that
    does not even return ``abort_grace`` s after the abort leaves its guest in an unknown state, so
    the maintenance stops before the reboot whatever ``on_save_failure`` says.  A cancel stops
    further saves (``Recorder.start_save``)."""
    clock = clock or time.time  # the journal's times; the timeouts run on the monotonic clock: a step of the
    # wall clock (NTP at boot, an operator's date) must neither abort every save nor switch the timeout off
    board = progress or ProgressBoard(tty=False, every=float("inf"))
    names = [n for n, g in recorder.journal.guests.items() if g.state == "planned"]
    transfer: dict[str, tuple[int, int] | None] = {}
    began: dict[str, float] = {}  # time.monotonic() at each save's start

    def save(name: str) -> None:
        began[name] = time.monotonic()
        if not recorder.start_save(name, clock()):
            began.pop(name, None)
            return
        saved = threading.Event()  # the watcher ends with the save, whatever ended it
        threading.Thread(target=watch_job, args=(name, saved), daemon=True).start()
        try:
            _save(name)
        finally:
            saved.set()

    def _save(name: str) -> None:
        try:
            image = hypervisor.save(name, hypervisor.image_for(name, config.save_dir))
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

    def watch_job(name: str, saved: threading.Event) -> None:  # job stats may block: never in the main loop
        while not saved.is_set() and recorder.journal.guests[name].state == "saving":
            transfer[name] = hypervisor.job_progress(name)
            saved.wait(1.0)

    aborted: dict[str, float] = {}
    stuck: list[str] = []
    pool = ThreadPoolExecutor(max_workers=max(config.concurrency, 1))
    futures = {pool.submit(save, name): name for name in names}
    while True:
        running = [f for f in futures if not f.done() and futures[f] not in stuck]
        if not running:
            break
        wait(running, timeout=1.0)
        now = time.monotonic()
        for future in running:
            name = futures[future]
            record = recorder.journal.guests[name]
            if future.done() or record.state != "saving" or name not in began:
                continue
            elapsed = now - began[name]
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
    for future in futures:  # an error in a save thread (the journal could not be written) is not lost
        if future.done() and future.exception() is not None and recorder.write_error is None:
            return f"saving {futures[future]}: {future.exception()}"
    stop = _apply_failure_policy(recorder, hypervisor, config, stuck, clock)
    for name in names:
        record = recorder.journal.guests[name]
        board.update(name, record.state + (f": {record.error}" if record.error else ""), final=True)
    return stop


FINAL_ROUNDS = 5


def final_listing(recorder: Recorder, hypervisor: Hypervisor, config: MaintenanceConfig,
                  clock: Callable[[], float] | None = None, progress: ProgressBoard | None = None,
                  boot_id: str | None = None, then: Callable[[], None] | None = None) -> str | None:
    """Invariant I1, enforced here and only here: immediately before the reboot, under the host-level
    lock, list every live domain from every listing the hypervisor has (``Hypervisor.guests``); any
    live domain the journal does not account for is added and saved (a newcomer, or a guest started
    again since its save or its plan), and the listing is taken again until nothing is new.  The
    listing that finds nothing new, the move to ``rebooting`` and ``then`` (the reboot command) are
    one step under the lock.  Returns why the maintenance must stop before the reboot, or None once
    it is ``rebooting`` (and ``then`` ran)."""
    clock = clock or time.time
    owners = config.owners
    for _ in range(FINAL_ROUNDS):
        with recorder.critical():
            if recorder.write_error is not None:
                return f"{recorder.write_error}: not rebooted"
            try:
                live = tuple(g for g in hypervisor.guests() if g.running)
            except HostagentError as err:
                return f"the final listing before the reboot failed: {err}; not rebooted"
            try:
                def change(current: Journal, seen: tuple[GuestInfo, ...] = live) -> Journal:
                    return account_for(current, seen, owners)
                journal = recorder._apply(change)
            except PhaseMoved as moved:
                return moved.journal.error or "cancelled"
            if not any(g.state in ("planned", "save_failed") for g in journal.guests.values()):
                try:
                    recorder._apply(lambda current: current.advance("rebooting", boot_id=boot_id))
                except PhaseMoved as moved:
                    return moved.journal.error or "cancelled"
                if recorder.write_error is not None:
                    return f"{recorder.write_error}: not rebooted"
                recorder._audit_locked({"action": "phase", "subject": recorder.journal.id, "state": "rebooting",
                                        "error": None})
                if recorder.write_error is not None:  # no reboot without its audit record (I6: restored at once)
                    return f"{recorder.write_error}: not rebooted"
                if then is not None:
                    then()
                break
        for name, record in journal.guests.items():
            if record.state in ("planned", "save_failed"):
                recorder._audit({"action": "plan", "subject": name, "state": record.state, "added": record.added,
                                 "error": record.error, "at": "final listing"})
        stop = save_phase(recorder, hypervisor, config, clock, progress)
        if stop is not None:
            return stop
    else:
        return f"guests kept starting during the saves ({FINAL_ROUNDS} listings found new ones): not rebooted"
    return None


def account_for(journal: Journal, live: tuple[GuestInfo, ...], owners: Mapping[str, str]) -> Journal:
    """The journal with every live domain accounted for (I1): one it has no record of is added; one it
    recorded saved, shut down or stopped is planned again; one that cannot be saved is a failed save
    (``on_save_failure`` decides).  A guest recorded going down with the host (``skipped``) is
    accounted for as it is.  PhaseMoved unless the maintenance is still saving."""
    if journal.phase != "saving":
        raise PhaseMoved(journal, f"maintenance {journal.id} is {journal.phase}: not rebooted")
    for guest in live:
        record = journal.guests.get(guest.name)
        if record is None:
            journal = journal.with_guest(GuestRecord(guest.name, owner=guest.owner or owners.get(guest.name),
                                                     added=True, error="started during the saves"))
        elif record.state == "stopped":  # stopped at the plan, started since: a guest like any other
            journal = journal.guest(guest.name, "planned", outcome=None, unsaved=None, image=None,
                                    error="running at the final listing (it was stopped): saved")
        elif record.state in ("saved", "shut_down"):  # started by someone else after it went down
            was = record.state.replace("_", " ")
            journal = journal.guest(guest.name, "planned", outcome=None, unsaved=None, image=None,
                                    started_again=record.started_again or record.state,
                                    down_since=record.went_down,
                                    error=f"started again by someone else after it was {was} (from its image or "
                                          "afresh: hostagent cannot tell); saved again at the final listing")
        else:
            continue
        if guest.unsaveable:
            journal = journal.guest(guest.name, "save_failed", error=guest.unsaveable)
    return journal


def _apply_failure_policy(recorder: Recorder, hypervisor: Hypervisor, config: MaintenanceConfig, stuck: list[str],
                          clock: Callable[[], float]) -> str | None:
    """``on_save_failure`` for the guests that could not be saved; returns why to stop before the reboot."""
    failed = [n for n, g in recorder.journal.guests.items() if g.state == "save_failed"]
    if not failed:
        return None
    if config.on_save_failure == "abort" or stuck:
        why = "could not be saved" if not stuck else f"left in an unknown state ({', '.join(stuck)} stuck)"
        return f"aborted before the reboot: {', '.join(failed)} {why}"
    for name in failed:  # a domain a failed save left suspended cannot act on a shutdown: its memory would go
        left = hypervisor.present(name)
        if left is not None and not hypervisor.is_running(name):
            return (f"aborted before the reboot: {name} was left {left} by its failed save; its memory would be lost "
                    "with the host")
    for name in failed:
        error = recorder.journal.guests[name].error
        if config.on_save_failure == "skip":
            if not recorder.while_saving(name, lambda: None, "skipped",
                                         error=f"{error}; not saved: it goes down with the host", unsaved="with_host"):
                return None  # cancelled: the guests that could not be saved just keep running
            continue
        try:
            if not recorder.while_saving(name, functools.partial(hypervisor.shutdown, name), "save_failed",
                                         error=f"{error}; shutting down"):
                return None  # cancelled (I4): no guest is shut down once the cancel is on disk
            deadline = time.monotonic() + config.shutdown_timeout
            while hypervisor.present(name) is not None and time.monotonic() < deadline:
                time.sleep(0.2)
            if hypervisor.present(name) is None:  # it is gone (not merely not running): true whatever came meanwhile
                recorder.guest(name, "shut_down", error=f"{error}; shut down gracefully", unsaved="shut_down")
            elif not recorder.while_saving(name, lambda: None, "skipped", unsaved="with_host",
                                           error=f"{error}; it did not shut down within "
                                                 f"{config.shutdown_timeout:g} s: it goes down with the host"):
                return None
        except HostagentError as err:
            if not recorder.while_saving(name, lambda: None, "skipped", unsaved="with_host",
                                         error=f"{error}; shutdown: {err}; it goes down with the host"):
                return None
    return None


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
                  clock: Callable[[], float] | None = None, aborted: bool = False,
                  progress: ProgressBoard | None = None, others: Mapping[str, str] | None = None,
                  host_went_down: bool | None = False) -> None:
    """Bring every guest back, priority first; idempotent after a crash or a second boot.

    Each guest ends with one outcome (``journal.OUTCOMES``).  A guest is never booted afresh while
    its save image exists.  ``aborted``: the maintenance stopped before the reboot; it ends failed
    (or cancelled) once guests run again.  ``others``: guest name (or ``*``, any guest) -> the
    service on this host that may have restored it before us (``coexist.restorers``), named in its outcome.
    ``host_went_down``: whether the host went down since the saves began (None: unknown, the boot ids
    missing).  A guest whose save never began is observed: after the host went down (or, unknown, found
    down) it is started again, outcome ``restarted``; found down while the host stayed up, someone else
    stopped it and it is left stopped; running, it kept running."""
    with gate.restoring(recorder.journal.id):  # libvirt's hook lets our starts through (I6)
        _restore_all(recorder, hypervisor, config, clock or time.time, aborted, progress, others, host_went_down)


def _restore_all(recorder: Recorder, hypervisor: Hypervisor, config: MaintenanceConfig, clock: Callable[[], float],
                 aborted: bool, progress: ProgressBoard | None, others: Mapping[str, str] | None,
                 host_went_down: bool | None) -> None:
    if recorder.journal.phase != "restoring":
        recorder.advance("restoring")
    board = progress or ProgressBoard(tty=False, every=float("inf"))
    for name, record in recorder.journal.guests.items():  # I5: never saved, so never stopped by us: observe it
        if record.state != "planned":
            continue
        running = _observed_running(hypervisor, name)
        if host_went_down or (host_went_down is None and not running):
            # it went down with the host (or, unknown, is down now): started again, or found started by another
            recorder.guest(name, "skipped", unsaved="not_begun",
                           error="its save had not begun when the maintenance was interrupted"
                                 + (" and the host went down" if host_went_down else ", and it was found down"))
        elif not running:  # the host stayed up and hostagent never touched it: someone else stopped it
            recorder.guest(name, "stopped", outcome="left_stopped",
                           error="stopped by something other than hostagent during the maintenance, before its save "
                                 "began: left stopped")
    pending = [n for n, g in recorder.journal.guests.items()
               if g.state not in ("running", "cold_booted", "planned", "stopped", "lost")]
    first = [n for n in config.restore_priority if n in pending]
    rest = [n for n in pending if n not in first]

    def restore(name: str) -> None:
        try:
            _restore_guest(recorder, hypervisor, config, name, clock, others)
        except HostagentError as err:  # one guest's surprise never stops the others
            with contextlib.suppress(HostagentError):
                recorder.guest(name, "restore_failed", error=f"restore: {err}")
        final = recorder.journal.guests[name]
        board.update(name, f"{final.outcome or final.state}" + (f": {final.error}" if final.error else ""),
                     final=True)

    for name in first:
        restore(name)
    with ThreadPoolExecutor(max_workers=restore_workers(config)) as pool:
        list(pool.map(restore, rest))
    for name, record in recorder.journal.guests.items():  # a guest whose restore raised: not running
        if record.state not in ("running", "cold_booted", "planned", "stopped", "lost"):
            recorder.guest(name, "lost", outcome="lost", error=record.error)
    lost = [n for n, g in recorder.journal.guests.items() if g.outcome == "lost"]
    if lost:
        recorder.advance("failed", error=f"not running after the maintenance: {', '.join(lost)} (images kept)")
    elif recorder.journal.cancelled:
        recorder.advance("cancelled")
    else:
        recorder.advance("failed" if aborted else "done")


def _restore_guest(recorder: Recorder, hypervisor: Hypervisor, config: MaintenanceConfig, name: str,
                   clock: Callable[[], float], others: Mapping[str, str] | None) -> None:
    record = recorder.journal.guests[name]
    image = record.image or hypervisor.image_for(name, config.save_dir)
    has_image = hypervisor.has_image(name, image)
    stale = None
    # an image no save of this guest recorded is its memory only if written since its last save began: one
    # left by an earlier maintenance, or by a first save before someone started it again (started_again),
    # predates what it has written to its disks since
    since = record.save_started if record.save_started is not None else recorder.journal.created
    if has_image and record.image is None and _written_before(image, since - MTIME_SLACK):
        has_image, stale = False, (f"the image {image} was written before its last save began (an earlier "
                                   "maintenance's, or one from before it was started again) and was not restored")
    went_down_unsaved = record.unsaved is not None
    if went_down_unsaved and record.image is None and has_image:  # I5: its save failed or never began, so a file
        has_image, stale = False, (f"{image} was left by a save that did not complete, not its memory: "  # there
                                   "not restored")  # is what that save wrote (libxl leaves it), never its memory
    cleared = None
    if record.state == "restoring" and record.attempts > 0 and has_image \
            and hypervisor.clear_interrupted_restore(name):  # I5: a half-loaded domain is never resumed
        cleared = "an interrupted restore had left it paused, half loaded: destroyed, and restored again from its image"
    left = hypervisor.present(name) if record.image is None and record.save_started is not None else None
    if left is not None and has_image:  # I5: a save that did not complete while its domain lives on
        has_image = False
        stale = f"{image} is a partial image of an interrupted save, not a memory image: not restored"
    if left is not None and not hypervisor.is_running(name):
        recorder.guest(name, "lost", outcome="lost", error="; ".join(filter(None, (
            f"its domain was left {left} by an interrupted save and does not run; hostagent cannot resume it: "
            f"destroy it (its disks are intact) and start it, or resume it with the hypervisor's tools", stale))))
        return
    resumed = hypervisor.is_running(name) and hypervisor.resume_paused(name)  # an interrupted save or restore
    # I5: looked at again after the resume: libvirt's reconnect can end an interrupted start meanwhile
    if hypervisor.is_running(name):  # restored before a crash, by another service, or never stopped
        if record.state != "restoring":
            recorder.guest(name, "restoring")
        if record.attempts > 0:
            outcome, by, note = ("restarted" if went_down_unsaved else "restored"), "hostagent", record.error
        elif record.image is not None or went_down_unsaved:
            outcome = "restarted" if went_down_unsaved else ("cold_booted" if has_image else "restored")
            by = _who(name, others)
            note = f"{by} started it before hostagent's restore" + (
                f"; its memory image is kept at {image}" if outcome == "cold_booted" else "")
        elif resumed:  # its save was interrupted while the guest was paused: it runs on from memory
            outcome, by, note = "restored", "hostagent", "its save was interrupted: resumed from pause"
        else:  # no save was recorded as complete (a worker stopped mid-save): it runs, and was never rebooted
            outcome, by, note = None, None, "running; its save was not recorded as complete"
        recorder.guest(name, "running", running_again=record.running_again or clock(), outcome=outcome,
                       restored_by=by, error=note, kept_image=image if outcome == "cold_booted" else None)
        if outcome == "restored":
            if by == "hostagent" and has_image:
                _discard(recorder, hypervisor, name, image)
            recorder.guest(name, "running", clock=_set_clock(hypervisor, name))
        return
    error = "; ".join(filter(None, (record.error, stale, cleared))) or None
    for attempt in range(1, config.restore_attempts + 1):
        if attempt > 1 and hypervisor.is_running(name):  # another service restored it between our attempts
            by = _who(name, others)
            recorder.guest(name, "running", running_again=clock(), restored_by=by,
                           outcome="restarted" if went_down_unsaved else "restored",
                           error=f"{by} started it while hostagent was restoring it ({error})")
            return
        recorder.guest(name, "restoring", attempts=recorder.journal.guests[name].attempts + 1)
        try:
            if has_image:
                hypervisor.restore(name, image)
            else:
                hypervisor.start(name)
            if hypervisor.is_running(name):
                outcome = "restored" if has_image else ("restarted" if went_down_unsaved else "cold_booted")
                if outcome == "cold_booted":
                    error = f"{stale}: booted afresh" if stale else f"its save image {image} was gone: booted afresh"
                recorder.guest(name, "running", running_again=clock(), outcome=outcome, restored_by="hostagent",
                               error=error if outcome != "restored" else None)
                if outcome == "restored":
                    _discard(recorder, hypervisor, name, image)
                    recorder.guest(name, "running", clock=_set_clock(hypervisor, name))
                return
            error = f"attempt {attempt}: not running after the {'restore' if has_image else 'start'}"
            recorder.guest(name, "restore_failed", error=error)
        except HostagentError as err:
            error = f"attempt {attempt}: {err}"
            if hypervisor.is_running(name):  # another service started it between our look and our call
                by = _who(name, others)
                recorder.guest(name, "running", running_again=clock(), restored_by=by,
                               outcome="restarted" if went_down_unsaved else "restored",
                               error=f"{by} started it while hostagent was restoring it ({error})")
                return
            recorder.guest(name, "restore_failed", error=error)
    if not (config.cold_boot_on_failure and has_image):
        recorder.guest(name, "lost", outcome="lost", error=f"{error}; " + (
            f"its memory image is kept at {image}" if has_image else "it could not be started"))
        return
    try:
        kept = hypervisor.cold_boot(name, image, f"{config.save_dir}/{name}.kept-{recorder.journal.id}")
    except HostagentError as err:
        recorder.guest(name, "lost", outcome="lost", error=f"{error}; cold boot: {err}; its memory image is kept")
        return
    if not hypervisor.is_running(name):  # I5: an outcome is written only once the hypervisor shows it
        recorder.guest(name, "lost", outcome="lost", error=f"{error}; cold boot: not running after it; its memory "
                                                          f"image is kept at {kept or image}")
        return
    recorder.guest(name, "cold_booted", running_again=clock(), outcome="cold_booted", restored_by="hostagent",
                   kept_image=kept, error=f"{error}; booted afresh, its memory image is kept at {kept}")


MTIME_SLACK = 0.1  # s: a file's times come from the kernel's coarse clock, a few ms behind time.time()


def _observed_running(hypervisor: Hypervisor, name: str) -> bool:
    """Whether the hypervisor shows ``name`` running; a domain it no longer knows (a crash took it) is not."""
    try:
        return hypervisor.is_running(name)
    except HostagentError:
        return False


def _written_before(image: str, moment: float) -> bool:
    """Whether a file image was last written before ``moment`` (a stale one)."""
    try:
        return os.stat(image).st_mtime < moment
    except OSError:  # "managed", or gone: libvirt's managed save images are never stale
        return False


def _discard(recorder: Recorder, hypervisor: Hypervisor, name: str, image: str) -> None:
    """Delete the image a guest was restored from; a failure is recorded, the guest runs on."""
    try:
        hypervisor.discard_image(name, image)
    except HostagentError as err:
        recorder.guest(name, "running", error=f"restored, but its used image stays: {err}; "
                                              "delete it before the next maintenance")


def _who(name: str, others: Mapping[str, str] | None) -> str:
    """The service that restored a guest before us, as far as this host's configuration tells."""
    found = (others or {}).get(name) or (others or {}).get("*")
    return found or "another service"


CLOCK_WAIT = 15.0  # s for a restored guest's agent to reconnect to its channel


def _set_clock(hypervisor: Hypervisor, name: str, wait: float = CLOCK_WAIT) -> str:
    """After a restore the guest's clock is behind by its downtime: set it through the guest agent,
    waiting a little for an agent that has not reconnected yet (one not configured fails at once)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return hypervisor.sync_clock(name)
        except HostagentError as err:
            if "not connected" not in str(err) or time.monotonic() > deadline:
                return f"not set: {err}"
        time.sleep(0.5)
