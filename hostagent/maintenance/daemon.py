"""The daemon's side of maintenance: wake on time, start and supervise workers, send notices.

The journal is the truth.  APScheduler's SQLAlchemyJobStore (sqlite in the state directory)
holds one-shot jobs that wake the daemon at the scheduled time and at each notice lead time;
they survive a restart, and a start missed beyond ``late_start_grace`` fires APScheduler's
missed event.  Either way the daemon then reads the journal and decides (``run.due``), so a job
lost or handed out twice changes nothing.  A tick every few seconds also reconciles the jobs
with the journals and supervises the worker.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import queue
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hostagent.alerts.alerter import Alerter
from hostagent.config import Config
from hostagent.errors import HostagentError
from hostagent.host import Host
from hostagent.maintenance import faults, notices
from hostagent.maintenance.journal import Journal, JournalStore, PhaseMoved
from hostagent.maintenance.run import current_boot_id, due, mark_missed
from hostagent.maintenance.worker import Worker
from hostagent.model import Finding, Severity
from hostagent.records import field, record
from hostagent.rpc import shown

log = logging.getLogger("hostagent")
JOBSTORE = "maintenance"
WAKEUPS: queue.SimpleQueue[str] = queue.SimpleQueue()
MAX_RESTORE_WORKERS = 3
PRUNE_EVERY = 3600.0


def wake(reason: str) -> None:
    """The target of every maintenance job (stored by reference: ``hostagent.maintenance.daemon:wake``)."""
    WAKEUPS.put(reason)


SCHEDULE_FILE = "schedule.sqlite"


def has_stored_jobs(directory: Path) -> bool:
    """Whether the job store on disk holds any wake-up (read with the stdlib: SQLAlchemy costs the daemon
    about 14 MB, so it is loaded only while a maintenance is planned)."""
    path = directory / SCHEDULE_FILE
    if not path.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
            return bool(db.execute("SELECT count(*) FROM apscheduler_jobs").fetchone()[0])
    except sqlite3.Error:
        return True  # let APScheduler open it and say what is wrong


def jobstore(directory: Path) -> Any:
    try:
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    except ImportError:
        raise HostagentError("hostagent watch keeps the maintenance schedule with SQLAlchemy: "
                             "install hostagent[agent]") from None

    return SQLAlchemyJobStore(url=f"sqlite:///{directory / SCHEDULE_FILE}")


@record
class MaintenanceDaemon:
    config: Config
    config_path: str | None
    directory: Path
    host: Host
    alerter: Alerter
    started: float = field(default_factory=time.time)
    worker: Worker | None = None
    restore_workers: Counter[str] = field(default_factory=Counter)
    _orphan: str | None = None
    store_open: bool = False  # the persistent job store is added to the scheduler on first need
    pruned_at: float | None = None  # when old journals were last pruned (monotonic)

    @property
    def store(self) -> JournalStore:
        return JournalStore(self.directory / "maintenance")

    # -- the job store ---------------------------------------------------------------------

    def wanted_jobs(self, now: float) -> dict[str, tuple[float, float | None]]:
        """Job id -> (run time, misfire grace) for every planned maintenance."""
        wanted: dict[str, tuple[float, float | None]] = {}
        for journal in self.store.all():
            if journal.phase != "planned":
                continue
            if journal.reboot_at > now:
                wanted[f"{journal.id}:start"] = (journal.reboot_at, self.config.maintenance.late_start_grace)
            if journal.notify_owners:
                for lead in self.config.maintenance.notice_lead_times:
                    if journal.reboot_at - lead > now:
                        wanted[f"{journal.id}:before:{lead:g}"] = (journal.reboot_at - lead, None)
        return wanted

    def reconcile(self, scheduler: Any, now: float) -> None:
        from apscheduler.triggers.date import DateTrigger

        wanted = self.wanted_jobs(now)
        if not self.store_open:
            if not wanted:
                return
            self.open_store(scheduler)
        present = {job.id: job for job in scheduler.get_jobs(jobstore=JOBSTORE)}
        for job_id, job in present.items():
            if job_id not in wanted:
                job.remove()
        for job_id, (at, grace) in wanted.items():
            job = present.get(job_id)
            if job is not None and job.next_run_time is not None and abs(job.next_run_time.timestamp() - at) < 1:
                continue
            scheduler.add_job(f"{__name__}:wake", DateTrigger(run_date=dt.datetime.fromtimestamp(at, dt.UTC)),
                              args=[job_id], id=job_id, jobstore=JOBSTORE, replace_existing=True,
                              misfire_grace_time=None if grace is None else max(int(grace), 1), coalesce=True)

    def open_store(self, scheduler: Any) -> None:
        """Add the persistent job store (its due and missed jobs are handed out as it is added)."""
        scheduler.add_jobstore(jobstore(self.directory), JOBSTORE)
        self.store_open = True

    # -- the tick ---------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """One look at the journals and the worker; whatever fails is logged and alerted, and the next tick
        comes all the same."""
        try:
            self._tick(time.time() if now is None else now)
        except Exception as err:  # the daemon's maintenance loop must not die
            log.exception("maintenance tick failed")
            try:
                self._alert(Finding("maintenance.tick_failed", "maintenance", "maintenance", Severity.CRITICAL,
                                    f"the maintenance tick failed: {type(err).__name__}: {err}"))
            except Exception:  # the alert path itself is broken (a full disk): the log above must do
                log.exception("maintenance tick failed, and so did its alert")

    def _tick(self, now: float) -> None:
        """Supervise the worker; otherwise do what the journal says is next."""
        if self.worker is not None and not self._supervise():
            return
        for entry in self.store.quarantine():
            log.error("maintenance journal %s", entry.reason)
            self._alert(Finding("maintenance.journal_unreadable", "maintenance", entry.path.name, Severity.CRITICAL,
                                entry.reason))
        self._reports()
        self._prune()
        journal = self.store.active()
        if journal is None or self.host.is_snapshot:
            return
        if journal.phase != "planned" and self.store.worker_running(journal.id):
            if self._orphan != journal.id:  # a worker that a daemon before this one started: let it finish
                log.warning("maintenance %s: a worker from before this daemon is still running (%s)", journal.id,
                            journal.phase)
                self._orphan = journal.id
            return
        if journal.phase == "planned":
            self._planned(journal, now)
        elif journal.phase == "preflight":  # no worker runs it any more
            with contextlib.suppress(PhaseMoved):
                failed = self.store.update(journal.id, lambda current: current.advance(
                    "failed", error="the maintenance worker stopped during the preflight: not rebooted"))
                self._announce("maintenance.failed", failed)
        elif journal.phase in ("saving", "restoring"):
            self._start_restore(journal)
        elif journal.phase == "rebooting":
            self._rebooting(journal, now)

    def _supervise(self) -> bool:
        """True when no worker runs any more."""
        worker = self.worker
        assert worker is not None
        if worker.finished():
            self.worker = None
            journal = self.store.load(worker.journal_id)
            code = worker.process.returncode
            log.warning("maintenance %s: worker %s ended (exit %s), maintenance %s%s", journal.id, worker.action,
                        code, journal.phase, f": {journal.error}" if journal.error else "")
            if journal.phase == "failed":
                self._announce("maintenance.failed", journal)
            elif code != 0:
                self._announce("maintenance.worker_failed", journal,
                               f"the {worker.action} worker failed (exit {code}) in phase {journal.phase}: "
                               f"{worker.last_words()}{self._space_note()}")
            return True
        with contextlib.suppress(HostagentError):  # guests added since it started get their time too
            worker.extend_to(self.store.load(worker.journal_id), self.config.maintenance)
        if worker.overdue():
            worker.kill()
            self.worker = None
            journal = self.store.load(worker.journal_id)
            log.error("maintenance %s: worker %s overran its deadline in phase %s: killed", journal.id,
                      worker.action, journal.phase)
            self._announce("maintenance.worker_killed", journal,
                           f"the {worker.action} worker overran its deadline in phase {journal.phase} and was "
                           "killed; the daemon resumes from the journal")
            return True
        return False

    def _space_note(self) -> str:
        """Why a worker may have failed without a word: the journals' file system is full."""
        try:
            stat = os.statvfs(self.store.directory)
        except OSError as err:
            return f"; {self.store.directory}: {err.strerror or err}"
        free = stat.f_bavail * stat.f_frsize
        if free < 1 << 20:
            return (f"; the file system of {self.store.directory} is full ({free} bytes free): the journal cannot "
                    "be written, so nothing is rebooted until there is room")
        return ""

    def _planned(self, journal: Journal, now: float) -> None:
        keys = notices.due_before(journal, now, self.config.maintenance.notice_lead_times)
        if keys:
            hostname = self.host.hostname()
            letters = [(owner, notices.before_notice(journal, guests, hostname, now))
                       for owner, guests in notices.by_owner(journal).items()]
            if self._mail_owners(journal, letters, "maintenance.notice") < len(letters) or not letters:
                # sent: queued for at least one owner (each fails alone); none queued is tried next tick
                journal = self.store.update(journal.id, lambda current: current.mark_sent(*keys))
                log.info("maintenance %s: owners notified (%s)", journal.id, ", ".join(keys))
            faults.point("notices-sent")
        verdict = due(journal, now, self.config.maintenance.late_start_grace)
        if verdict == "missed":
            try:
                missed = mark_missed(self.store, journal, now)
            except PhaseMoved:
                return  # cancelled meanwhile
            log.error("maintenance %s missed: %s", journal.id, missed.error)
            self._announce("maintenance.missed", missed)
        elif verdict == "run":
            log.warning("maintenance %s: starting", journal.id)
            self._start("run", journal)

    def _rebooting(self, journal: Journal, now: float) -> None:
        entered = journal.entered("rebooting") or 0.0
        boot_id = current_boot_id(self.host)
        known = bool(journal.boot_id and boot_id)
        rebooted = known and boot_id != journal.boot_id
        if known and not rebooted and journal.reboot_issued is None and self.started > entered:
            error = "the agent stopped after saving the guests, before the reboot command ran: not rebooted"
            log.error("maintenance %s: %s; restoring guests", journal.id, error)
            restoring = self.store.update(journal.id, lambda current: current.advance("restoring", error=error))
            self._start_restore(restoring)
        elif rebooted or self.started > entered:
            log.warning("maintenance %s: back after the reboot; restoring guests", journal.id)
            self._start_restore(journal)
        elif now - entered > self.config.maintenance.reboot_wait:
            error = f"the host did not reboot within {self.config.maintenance.reboot_wait:g} s of the reboot command"
            restoring = self.store.update(journal.id, lambda current: current.advance(
                "restoring", error=error + "; guests restored without a reboot"))
            self._announce("maintenance.reboot_stalled", restoring, error)
            self._start_restore(restoring)

    def _prune(self) -> None:
        """Final journals past ``retention_days`` go, once an hour, so the scans stay flat."""
        if self.pruned_at is not None and time.monotonic() - self.pruned_at < PRUNE_EVERY:
            return
        self.pruned_at = time.monotonic()
        removed = self.store.prune(self.config.maintenance.retention_days * 86400)
        if removed:
            log.info("maintenance journals pruned (older than %g days): %s", self.config.maintenance.retention_days,
                     ", ".join(removed))

    def _start_restore(self, journal: Journal) -> None:
        self.restore_workers[journal.id] += 1
        attempt = self.restore_workers[journal.id]
        if attempt > MAX_RESTORE_WORKERS:
            if attempt == MAX_RESTORE_WORKERS + 1:
                self._announce("maintenance.restore_stuck", journal,
                               f"{MAX_RESTORE_WORKERS} restore workers did not finish; guests may be down: "
                               "see hostagent maintenance status")
            return
        self._start("restore", journal)

    def _start(self, action: str, journal: Journal) -> None:
        self.worker = Worker.start(action, journal, str(self.directory), self.config, self.config_path,
                                   self.directory / "maintenance" / f"{journal.id}.log")

    # -- notices and reports ---------------------------------------------------------------

    def _reports(self) -> None:
        """After a maintenance ends: the operator's report and the owners' after-notices, once.  Each
        journal, and each owner's notice, fails alone: one that cannot be mailed is logged and alerted,
        and neither stops the others nor the tick (the restore of a later maintenance comes after this)."""
        for journal in self.store.all():
            if not journal.final or notices.REPORT in journal.sent:
                continue
            try:
                self._report(journal)
            except Exception as err:  # one journal's report never stops the tick
                log.error("maintenance %s: the report could not be sent: %s: %s", journal.id, type(err).__name__,
                          shown(str(err)))
                self._alert(Finding("maintenance.report_failed", "maintenance", f"maintenance {journal.id}",
                                    Severity.WARNING, f"the report of maintenance {journal.id} could not be sent: "
                                                      f"{type(err).__name__}: {shown(str(err))}"))

    def _mail_owners(self, journal: Journal, letters: list[tuple[str, tuple[str, str]]], kind: str) -> int:
        """One notice per owner, each on its own: an address no mail can go to is logged and skipped.
        Returns how many could not be queued."""
        failed = 0
        for owner, (subject, text) in letters:
            try:
                self.alerter.mail(subject, text, [owner], kind)
            except (HostagentError, ValueError) as err:
                failed += 1
                log.error("maintenance %s: no %s to %s: %s", journal.id, kind, shown(owner), shown(str(err)))
        return failed

    def _report(self, journal: Journal) -> None:
        hostname = self.host.hostname()
        if journal.entered("saving") is None:  # nothing touched: owners told of it hear it is off
            if any(key.startswith("before:") for key in journal.sent):
                self._mail_owners(journal, [(owner, notices.called_off(journal, guests, hostname)) for owner, guests
                                            in notices.by_owner(journal, announced_only=True).items()],
                                  "maintenance.called_off")
            if journal.entered("preflight") is not None and self.config.alerts.enabled:
                subject, text = notices.report(journal, hostname)
                self.alerter.mail(subject, text, self.alerter.operators(), "maintenance.report")
            self.store.update(journal.id, lambda current: current.mark_sent(notices.REPORT))
            return
        if self.config.alerts.enabled and notices.AFTER not in journal.sent:
            subject, text = notices.report(journal, hostname)
            self.alerter.mail(subject, text, self.alerter.operators(), "maintenance.report")
        if journal.notify_owners and notices.AFTER not in journal.sent:
            self._mail_owners(journal, [(owner, notices.after_notice(journal, guests, hostname)) for owner, guests
                                        in notices.by_owner(journal).items()], "maintenance.after")
        self.store.update(journal.id, lambda current: current.mark_sent(notices.REPORT, notices.AFTER))
        lost = [n for n, g in journal.guests.items() if g.outcome == "lost"]
        if lost:
            self._alert(Finding("maintenance.guest_lost", "maintenance", f"maintenance {journal.id}",
                                Severity.CRITICAL, f"not running after maintenance {journal.id}: "
                                                   f"{', '.join(lost)} (see hostagent maintenance status)"))
        log.info("maintenance %s: report sent", journal.id)

    def _announce(self, code: str, journal: Journal, summary: str | None = None) -> None:
        self._alert(Finding(code, "maintenance", f"maintenance {journal.id}", Severity.CRITICAL,
                            summary or f"maintenance {journal.id} {journal.phase}: {journal.error or ''}".strip()))

    def _alert(self, finding: Finding) -> None:
        if self.config.alerts.enabled:
            self.alerter.process([finding], [])
