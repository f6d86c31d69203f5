"""``hostagent watch``: the daemon.  Events (kernel uevents, POLLPRI on /proc/mdstat and md sysfs)
and periodic jobs (APScheduler 3.x) request checks; one worker runs them, applies automatic
remedies, feeds the alerter, and writes the status file and the Prometheus textfile.

Only the main thread touches the checks and the state store: scheduler jobs and event
sources merely queue the names of the checks to run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import queue
import select
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import checks
from checks import hung
from hostagent.actions import AuditLog
from hostagent.alerts.alerter import Alerter
from hostagent.alerts.settings import silence
from hostagent.commands.remediate import act, expire_mitigations
from hostagent.config import Config, load_config
from hostagent.context import RECHECK, CheckContext
from hostagent.errors import ConfigError, HostagentError
from hostagent.host import Host
from hostagent.maintenance.daemon import WAKEUPS, MaintenanceDaemon, has_stored_jobs
from hostagent.model import CheckResult, Finding, Report, Severity
from hostagent.output import render_prom, write_atomic
from hostagent.records import field, record
from hostagent.rpc import DEFAULT_ALLOW, allowed_verbs
from hostagent.rpcserver import Answerer, Published, RpcServer, child_command
from hostagent.runner import innermost_frame, open_state, run_check
from hostagent.sdnotify import Notifier
from hostagent.sources.mdstat import MDSTAT_PATH
from hostagent.sources.mdsysfs import list_md_sysfs

log = logging.getLogger("hostagent")
STATUS_FILE = "status.json"
REPORT_FILE = "report.json"  # the combined report of the last results of every check: what the controller collects
MD_ATTRS = ("array_state", "degraded", "sync_action")
EVENT_CHECKS = ("md", "hung", "boot")  # what an md or block event can change
MAINTENANCE_TICK = 5.0  # s between looks at the journal and the worker, besides the scheduled wake-ups
SAMPLE_INTERVAL = 1.0  # s between looks at the hung check's counters (hung.sample)
SELF = "agent"  # the daemon's own health, reported like a check's
CYCLE_FAILED = "agent.cycle_failed"


class JournalFormatter(logging.Formatter):
    """``<N>message`` lines: journald reads the syslog priority from the prefix."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self.PRIORITY.get(record.levelno, 6)}>{record.getMessage()}"


@record
class Watcher:
    config_path: str | None
    root: str = "/"
    state_dir: str | None = None
    config: Config = field(default_factory=Config)
    results: dict[str, CheckResult] = field(default_factory=dict)
    requests: queue.SimpleQueue[str] = field(default_factory=queue.SimpleQueue)
    stopping: bool = False
    reload_requested: bool = False
    started: float = field(default_factory=time.time)
    scheduler: Any = None  # APScheduler's, once watch() made it: the next runs in the status file
    inventory: dict[str, Any] = field(default_factory=dict)
    failing: dict[str, str] = field(default_factory=dict)  # part of the daemon -> its last error, until it runs clean
    causes: dict[str, tuple[str, Any]] = field(default_factory=dict)  # part -> the cause last logged
    health_changed: bool = False
    last_error: dict[str, Any] | None = None
    notifier: Notifier = field(default_factory=Notifier)
    volatile: dict[str, Any] = field(default_factory=dict)  # the checks' per-second clocks (CheckContext.volatile)

    def setup(self) -> None:
        self.config = load_config(self.config_path)
        self.host = Host(self.root, command_timeout=self.config.agent.command_timeout)
        self.state = open_state(self.host, self.config, self.state_dir)
        directory = self.state.directory or Path("/tmp/hostagent")
        self.directory = directory
        self.audit = AuditLog.configured(self.state.directory, self.config.agent)
        self.alerter = Alerter(self.config.alerts, self.state, directory / "spool", self.host.hostname(),
                               self.audit, evidence=self.evidence)
        self.maintenance = MaintenanceDaemon(self.config, self.config_path, directory, self.host, self.alerter,
                                             started=self.started)
        self.published = Published()
        self.rpc: RpcServer | None = None

    def serve_rpc(self) -> None:
        """Answer the RPC account on agent.rpc_socket (docs/security.md); a failure is logged, the
        daemon watches on."""
        agent = self.config.agent
        if not agent.rpc_socket:
            return
        allow = allowed_verbs(",".join(agent.rpc_allow)) if agent.rpc_allow else DEFAULT_ALLOW
        answerer = Answerer(lambda: self.published, self.directory / "maintenance",
                            child_command(self.config_path, str(self.directory)), allow, self._audit_rpc,
                            self.host.hostname())
        server = RpcServer(agent.rpc_socket, agent.rpc_user, answerer)
        try:
            server.start()
        except (OSError, HostagentError) as err:
            log.error("RPC socket %s: %s; the controller cannot reach this agent",
                      agent.rpc_socket, getattr(err, "strerror", None) or err)
            return
        self.rpc = server

    def _audit_rpc(self, event: dict[str, Any]) -> None:
        try:
            self.audit.record(event)
        except HostagentError as err:
            log.error("%s", err)

    # -- what runs when ------------------------------------------------------------------

    def intervals(self) -> dict[str, float]:
        watch = self.config.watch
        return {"md": watch.md_interval, "hung": watch.hung_interval, "smart": watch.smart_interval,
                "erc": watch.erc_interval, "boot": watch.boot_interval, "net": watch.net_interval}

    def enabled(self) -> list[str]:
        return [m.NAME for m in checks.ALL if self.config.check_config(m.NAME).enabled]

    def request(self, names: Iterable[str]) -> None:
        for name in names:
            self.requests.put(name)

    def rechecks(self) -> None:
        """Request the checks whose CheckContext.recheck_by deadline has come."""
        wanted: dict[str, float] = self.volatile.get(RECHECK, {})
        due = [name for name, deadline in wanted.items() if deadline <= time.monotonic()]
        for name in due:
            del wanted[name]
        self.request(due)

    def run_pending(self) -> None:
        wanted: list[str] = []
        while True:
            try:
                name = self.requests.get_nowait()
            except queue.Empty:
                break
            if name in self.enabled() and name not in wanted:
                wanted.append(name)
        ordered = [m.NAME for m in checks.ALL if m.NAME in wanted]
        if "md" in ordered and len(ordered) > 1:  # an md event's own verdict is alerted before the slower
            self.cycle(["md"])                     # checks it also asks for (boot, hung) have run
            ordered.remove("md")
        if ordered:
            self.cycle(ordered)

    # -- guards: nothing that fails in one cycle stops the daemon ------------------------------

    def guard(self, part: str, action: Any) -> Any:
        """Run ``action``; an exception is logged, kept as the last error, and raised as an
        agent.cycle_failed finding for ``part`` until the part runs clean again."""
        try:
            result = action()
        except Exception as err:
            self.failed(part, err)
            return None
        self.succeeded(part)
        return result

    def failed(self, part: str, err: BaseException) -> None:
        text = f"{part}: {type(err).__name__}: {str(err)[:300]} (at {innermost_frame(err)})"
        # logged once per cause (the part, the error's kind and errno), not per text: a write error's text
        # names a temporary file with a random name, and a part that fails every 250 ms is logged once
        cause = (type(err).__name__, getattr(err, "errno", None))
        if self.causes.get(part) != cause:
            log.error("%s", text)
        self.causes[part] = cause
        self.failing[part] = text
        self.health_changed = True
        self.last_error = {"at": time.time(), "part": part, "error": text}

    def succeeded(self, part: str) -> None:
        self.causes.pop(part, None)
        if self.failing.pop(part, None) is not None:
            self.health_changed = True
            log.info("%s: runs again", part)

    def own_health(self) -> None:
        """One agent.cycle_failed finding per failing part of the daemon, and what keeps alert mail from
        its readers (refused recipients, corrupt or refused spool entries), alerted like any finding."""
        self.health_changed = False
        findings = tuple(Finding(CYCLE_FAILED, SELF, f"daemon/{part}", Severity.CRITICAL,
                                 f"hostagent watch: {text}",
                                 "The daemon keeps running, but this part of its work is not being done: "
                                 "see hostagent status and journalctl -u hostagent.")
                         for part, text in sorted(self.failing.items()))
        try:
            findings += tuple(self.alerter.delivery_findings(SELF))
        except OSError as err:
            self.alerter.once.error("outbox", err, f"alert spool {self.alerter.outbox.directory}: "
                                                   f"{err.strerror or err}")
        if findings:
            error = "; ".join(self.failing.values()) or None  # mail trouble alone is not the daemon failing
            self.results[SELF] = CheckResult(SELF, findings, 0.0, error, time.time())
        else:
            self.results.pop(SELF, None)
        if self.config.alerts.enabled:
            try:
                self.alerter.process(findings, [SELF])
            except Exception as err:  # the alert path itself is broken: the log and the status file still say so
                log.error("cannot alert on the daemon's own failure: %s: %s", type(err).__name__, err)

    # -- a cycle ---------------------------------------------------------------------------

    def cycle(self, names: list[str]) -> Report | None:
        """Run these checks, act, alert, and publish the combined view; never raises."""
        start = time.time()
        report = self.guard("cycle", lambda: self._run(names))
        if report is not None:
            self.succeeded("scheduled job")  # the scheduler's jobs only request cycles: one ran
        self.own_health()
        self.guard("publish", lambda: self.publish(start, names))
        if self.health_changed:
            self.own_health()
        self.notifier.alive()
        return report  # type: ignore[no-any-return]

    def sample_hung(self) -> None:
        """The hung check's look every second: when a member's clock reaches ``hung_after``, the
        check runs now, not at its next scheduled run (and its remedy with it)."""
        config: hung.Config = self.config.check_config(hung.NAME)
        if not config.enabled or not self.volatile.get("hung.members"):
            return
        ctx = self.context()
        due = hung.sample(ctx, config)
        if due:
            log.warning("%s: stalled, crawling or unanswered for %g s: running the hung check now", ", ".join(due),
                        config.hung_after)
            self.request([hung.NAME])

    def selftests(self) -> None:
        """Start the SMART self-tests the schedule made due, follow the running ones (hostagent.selftest);
        when one ends, the smart check runs, so its result reaches smart.selftest_failed at once."""
        config = self.config.check_config("smart")
        if not config.enabled or not config.selftest_schedule or self.host.is_snapshot:
            return
        from hostagent.actions.selftest import Scheduler, Smartctl, busy_reason, member_disks
        from hostagent.selftest import compile_schedule
        from hostagent.sources.blockdev import parent_disks

        arrays = self.context().inventory.arrays()
        scheduler = Scheduler(self.state, Smartctl(self.host, config.timeout), self.audit)
        tick = scheduler.tick(compile_schedule(config.selftest_schedule),
                              member_disks(arrays, lambda name: parent_disks(self.host, name)),
                              busy_reason(arrays, self.maintenance.store.active(), time.time()))
        for disk, kind in tick.started:
            log.info("self-test: %s test started on %s", kind, disk)
        for disk, why in tick.failed_to_start:
            log.warning("self-test: cannot start one on %s: %s", disk, why)
        for disk, kind, result in tick.finished:
            log.info("self-test: %s test on %s ended: %s", kind, disk, result)
        if tick.finished:
            self.request(["smart"])

    def context(self) -> CheckContext:
        ctx = CheckContext.for_host(self.host, self.state, self.config.disks.include, self.config.disks.exclude)
        ctx.volatile = self.volatile
        return ctx

    def _run(self, names: list[str]) -> Report:
        ctx = self.context()
        for module in checks.ALL:
            if module.NAME in names:
                self.results[module.NAME] = run_check(module, ctx, self.config)
                self.notifier.alive()
        self.inventory = ctx.inventory.to_json()
        report = Report(self.host.hostname(), str(self.host.root),
                        time.strftime("%Y-%m-%dT%H:%M:%S%z"), tuple(self.results[n] for n in names),
                        self.inventory)
        if self.config.watch.act and not self.host.is_snapshot:
            report = act(self.host, report, self.config, self.audit)
            self.results.update({r.name: r for r in report.results})
        elif "net" in names:
            expire_mitigations(self.host, self.config, self.audit)
        if self.config.alerts.enabled:
            # the findings of every check's last run: those of a cycle that failed before this point
            # are alerted now; only the checks that ran can resolve anything
            current = [f for name, result in self.results.items() if name != SELF for f in result.findings]
            alerts = self.alerter.process(current, names)
            for alert in alerts:
                log.warning("alert %s: %s %s %s", alert.kind, alert.record.severity, alert.record.code,
                            alert.record.subject)
        for result in report.results:
            if result.error:
                log.error("check %s failed: %s", result.name, result.error)
        return report

    def combined(self) -> Report:
        """The last result of every check, with the inventory, exactly as ``check`` reports it."""
        return Report(self.host.hostname(), str(self.host.root), time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      tuple(self.results.values()), self.inventory)

    def publish(self, start: float, names: list[str]) -> None:
        report = self.combined()
        undelivered = self.alerter.undelivered()
        ages = [u["age_s"] for u in undelivered if u["where"] in ("waiting", "memory") and u["age_s"] is not None]
        age = max(ages) if ages else None
        spool_overdue = age is not None and age > self.config.alerts.spool_max_age
        if spool_overdue:
            self.alerter.once.error("overdue", "overdue", f"alerts have waited {age or 0:.0f} s in the spool (limit "
                                                          f"{self.config.alerts.spool_max_age:.0f} s): mail is not "
                                                          "getting out")
        else:
            self.alerter.once.clear("overdue")
        status = {
            "pid": os.getpid(), "started": self.started, "hostname": report.hostname,
            "last_cycle": {"at": start, "checks": names, "duration_ms": round((time.time() - start) * 1000, 1)},
            "failing": dict(self.failing),
            "last_error": self.last_error,
            "status": report.status.name,
            "next_runs": self.next_runs(),
            "open_problems": [f.to_json() for f in report.findings],
            "alerts_open": [r.to_json() for r in self.alerter.records().values() if r.status == "open"],
            "spool": {"messages": sum(u["where"] in ("waiting", "memory") for u in undelivered), "oldest_age_s": age,
                      "overdue": spool_overdue, "undelivered": undelivered},
            "refused_recipients": [{"address": address, **refusal}
                                   for address, refusal in sorted(self.alerter.refused().items())],
            "config": self.config.source,
        }
        self.published = Published(report.to_json(), status, self._disks(names) or self.published.disks)
        if self.rpc is not None:
            self.rpc.published()
        outputs = [(self.directory / STATUS_FILE, json.dumps(status, indent=2) + "\n"),
                   (self.directory / REPORT_FILE, json.dumps(report.to_json()) + "\n")]
        if self.config.agent.prom_file:
            outputs.append((Path(self.config.agent.prom_file), render_prom(report)))
        for path, text in outputs:  # each file on its own: a full disk under one leaves the others written
            self.guard(f"writing {path}", lambda path=path, text=text: write_atomic(path, text))
        self.notifier.status(f"{report.status.name}: {len(report.findings)} finding(s); last cycle "
                             f"{', '.join(names)}" + (f"; failing: {', '.join(self.failing)}" if self.failing
                                                      else ""))

    def next_runs(self) -> dict[str, float]:
        """When each scheduled job runs next (asked once per cycle: the maintenance store is SQL)."""
        if self.scheduler is None:
            return {}
        return {job.id: job.next_run_time.timestamp() for job in self.scheduler.get_jobs()
                if job.next_run_time is not None}

    def _disks(self, names: list[str]) -> dict[str, Any] | None:
        """``disk status`` for the RPC, refreshed when the smart check ran (its own schedule)."""
        if "smart" not in names and self.published.disks is not None:
            return None
        from hostagent.diskcmd import disk_status

        ctx = CheckContext.for_host(self.host, self.state, self.config.disks.include, self.config.disks.exclude)
        try:
            return {"at": time.time(), "disks": disk_status(ctx, self.config)}
        except HostagentError as err:
            return {"at": time.time(), "disks": [], "error": str(err)}

    def evidence(self, finding: Finding) -> str:
        """Raw evidence for a mail: the array's lines of /proc/mdstat for md findings."""
        if finding.check not in ("md", "hung"):
            return ""
        text = self.host.read_optional(MDSTAT_PATH) or ""
        array = finding.subject.split("/", 1)[0]
        lines, inside = [], False
        for line in text.splitlines():
            if line.startswith(f"{array} :"):
                inside = True
            elif inside and not line.strip():
                break
            if inside:
                lines.append(line)
        return "\n".join(lines)

    # -- reload and stop -----------------------------------------------------------------

    def reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except ConfigError as err:
            log.error("SIGHUP: new configuration rejected, the old one stays in force: %s", err)
            return
        self.config = new
        self.alerter.config = new.alerts
        self.maintenance.config = new
        log.info("SIGHUP: configuration reloaded from %s", new.source)


class Events:
    """POLLPRI on /proc/mdstat and the md sysfs attributes, and kernel uevents for block devices;
    a change requests the checks it can affect."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.poller, self.sources = _open_events(watcher)
        self.layout = sorted(list_md_sysfs(watcher.host)) if not watcher.host.is_snapshot else []

    def wait(self, timeout_ms: int = 250) -> None:
        try:
            events = self.poller.poll(timeout_ms)
        except InterruptedError:
            events = []
        touched = False
        for fd, _ in events:
            source = self.sources.get(fd)
            if source is None:
                continue
            if hasattr(source, "poll"):
                device = source.poll(timeout=0)
                touched = touched or (device is not None and device.sys_name.startswith(("md", "dm-", "sd", "vd",
                                                                                        "nvme", "xvd")))
            else:
                source.seek(0)
                source.read()
                touched = True
        if not touched:
            return
        self.watcher.request(EVENT_CHECKS)
        layout = sorted(list_md_sysfs(self.watcher.host))
        if layout != self.layout:  # arrays came or went: watch their attributes too
            for handle in self.sources.values():
                if hasattr(handle, "close") and not hasattr(handle, "poll"):
                    handle.close()
            self.poller, self.sources = _open_events(self.watcher)
            self.layout = layout


def _open_events(watcher: Watcher) -> tuple[select.poll, dict[int, Any]]:
    """POLLPRI on /proc/mdstat and the md sysfs attributes, and kernel uevents for block devices."""
    poller = select.poll()
    sources: dict[int, Any] = {}
    if watcher.host.is_snapshot:
        return poller, sources
    paths = [str(watcher.host.path(MDSTAT_PATH))]
    for name in list_md_sysfs(watcher.host):
        base = watcher.host.path(f"/sys/block/{name}/md")
        paths += [str(base / attr) for attr in MD_ATTRS]
        paths += [str(base / entry / "state") for entry in os.listdir(base) if entry.startswith("dev-")]
    for path in paths:
        try:
            handle = open(path, "rb", buffering=0)  # noqa: SIM115 - kept open for polling
        except OSError:
            continue
        handle.read()
        poller.register(handle.fileno(), select.POLLPRI | select.POLLERR)
        sources[handle.fileno()] = handle
    try:
        import pyudev

        context = pyudev.Context()
        source = "udev" if os.path.exists("/run/udev/control") else "kernel"
        monitor = pyudev.Monitor.from_netlink(context, source=source)
        monitor.filter_by("block")
        monitor.start()
        poller.register(monitor.fileno(), select.POLLIN)
        sources[monitor.fileno()] = monitor
    except (ImportError, OSError) as err:
        log.warning("no uevents (%s): relying on polling", err)
    return poller, sources


def _drain(wakeups: queue.SimpleQueue[str]) -> list[str]:
    found = []
    while True:
        try:
            found.append(wakeups.get_nowait())
        except queue.Empty:
            return found


def _maintenance_once(watcher: Watcher) -> None:
    """``watch --once``: take the maintenance as far as it goes now, waiting for each worker."""
    for _ in range(4):
        watcher.maintenance.tick()
        if watcher.maintenance.worker is None:
            return
        while watcher.maintenance.worker is not None and not watcher.stopping:
            time.sleep(0.2)
            watcher.maintenance.tick()


def watch(config_path: str | None, root: str = "/", state_dir: str | None = None, once: bool = False) -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    watcher = Watcher(config_path, root, state_dir)
    watcher.setup()
    try:
        from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED
        from apscheduler.jobstores.memory import MemoryJobStore
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.interval import IntervalTrigger
    except ImportError:
        raise HostagentError("hostagent watch needs APScheduler: install hostagent[agent]") from None

    def on_signal(signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            watcher.reload_requested = True
        else:
            watcher.stopping = True

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    # Intervals need no local time zone; naming UTC keeps a host with an odd TZ from stopping the daemon.
    # Check intervals live in memory; maintenance wake-ups persist in sqlite (hostagent.maintenance.daemon).
    scheduler = BackgroundScheduler(timezone=dt.UTC, jobstores={"default": MemoryJobStore()},
                                    job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})
    scheduler.add_listener(lambda event: WAKEUPS.put(f"missed {event.job_id}"), EVENT_JOB_MISSED)
    job_errors: queue.SimpleQueue[str] = queue.SimpleQueue()
    scheduler.add_listener(lambda event: job_errors.put(f"job {event.job_id}: {event.exception!r}"), EVENT_JOB_ERROR)

    def schedule() -> None:
        scheduler.remove_all_jobs(jobstore="default")
        for name, interval in watcher.intervals().items():
            # a trigger object, not the "interval" alias: aliases need package metadata to resolve
            scheduler.add_job(watcher.request, IntervalTrigger(seconds=interval), args=[[name]], id=name)

    schedule()
    if has_stored_jobs(watcher.directory):  # wake-ups kept across a restart, missed ones included
        watcher.maintenance.open_store(scheduler)
    watcher.scheduler = scheduler
    scheduler.start()
    if not once:
        watcher.serve_rpc()
        watcher.alerter.start_courier()
    log.info("hostagent watch started (pid %d, root %s, config %s)", os.getpid(), watcher.host.root,
             watcher.config.source)
    silent = silence(watcher.config.alerts)
    if silent:
        log.warning("NOBODY IS ALERTED: %s", silent)
    watcher.notifier.ready(f"watching {watcher.host.root}")  # before the first cycle: it can take minutes
    if not once:  # checks that wait for a state to settle may ask for another look (CheckContext.recheck_by)
        watcher.volatile[RECHECK] = {}
    watcher.cycle(watcher.enabled())  # problems that exist at startup are alerted now
    watcher.guard("self-tests", watcher.selftests)
    if once:
        watcher.guard("maintenance", lambda: _maintenance_once(watcher))
        scheduler.shutdown(wait=False)
        return 0

    def maintenance() -> None:
        watcher.maintenance.reconcile(scheduler, time.time())
        watcher.maintenance.tick()

    def reload() -> None:
        watcher.reload()
        schedule()

    watcher.guard("maintenance", maintenance)
    events = Events(watcher)
    last_tick = last_sample = last_selftests = time.monotonic()
    while not watcher.stopping:
        watcher.notifier.alive()
        if watcher.reload_requested:
            watcher.reload_requested = False
            watcher.guard("reload", reload)
        watcher.guard("events", events.wait)
        if time.monotonic() - last_sample >= SAMPLE_INTERVAL:
            last_sample = time.monotonic()
            watcher.guard("hung sampler", watcher.sample_hung)
        for failure in _drain(job_errors):
            watcher.failed("scheduled job", RuntimeError(failure))
        watcher.guard("rechecks", watcher.rechecks)
        watcher.guard("checks", watcher.run_pending)
        if time.monotonic() - last_selftests >= watcher.config.checks.smart.selftest_interval:
            last_selftests = time.monotonic()
            watcher.guard("self-tests", watcher.selftests)
        woken = _drain(WAKEUPS)
        if woken or time.monotonic() - last_tick >= MAINTENANCE_TICK:
            for reason in woken:
                log.info("maintenance wake-up: %s", reason)
            watcher.guard("maintenance", maintenance)
            last_tick = time.monotonic()
        if watcher.health_changed:  # a part outside the checks failed or recovered
            watcher.own_health()
    watcher.notifier.stopping()
    watcher.alerter.stop_courier()
    scheduler.shutdown(wait=False)
    if watcher.rpc is not None:
        watcher.rpc.stop()
    log.info("hostagent watch stopped")
    return 0

