"""A model-based search for the next break of the maintenance invariants (issue #34, docs/maintenance.md).

hypothesis's ``RuleBasedStateMachine`` drives the real journal store, the real worker code
(``run.run_now``, ``run.resume_after_boot``) and the real daemon's decisions
(``MaintenanceDaemon.tick``) over libvirt's test driver.  The worker runs in a thread, and every
hypervisor call it makes outside the maintenance lock parks at a gate, so the machine's rules
land between any two of its steps:

- schedules in parallel with a cancel; a guest started or stopped; a save or restore that fails;
- the worker killed (every later call and journal write of it dies) and the daemon restarted;
- the wall clock stepped, forwards or back; the audit log or the journal's disk failing;
- a listing that omits a live domain (the backends report such a domain as one that cannot be
  saved: ``XlHypervisor.guests``, tested against ``tests/fakexl.py``).

After every step it checks I1-I6; at the reboot it checks I1 and I4 at that very moment, and at
the end it clears the faults, lets the daemon finish and checks that every guest came back.
Failures it found are kept below as ``@reproduce_failure``-free replays (``test_replayed_*``).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
import types
import uuid
from pathlib import Path
from typing import Any

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from hostagent.actions import AuditLog
from hostagent.alerts.alerter import Alerter
from hostagent.config import AlertsConfig, Config, MaintenanceConfig
from hostagent.errors import HostagentError
from hostagent.host import Host
from hostagent.hypervisor import GuestInfo, Hypervisor
from hostagent.hypervisor.libvirt_backend import LibvirtHypervisor
from hostagent.maintenance import cli, daemon, journal, notices, phases, run
from hostagent.maintenance.journal import Journal, JournalStore, JournalWriteError
from hostagent.maintenance.preflight import Preflight, plan
from hostagent.records import replace
from hostagent.state import StateStore

GUESTS = ("g1", "g2", "g3")
SPARE = ("n1",)  # defined, stopped at first: started during a maintenance
DOMAIN = """<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64'>hvm</type></os><devices/></domain>"""
QUIET = 60.0  # s to wait for the worker to park or end: milliseconds, unless it is stuck (or the machine is loaded)


class Killed(SystemExit):
    """The worker was SIGKILLed: nothing of it runs on, no except-clause catches this."""


class Clock:
    """``time`` for the maintenance modules, with a wall clock the model steps."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class Env:
    """The host: one test-driver connection (the hypervisor's truth), the state directory, the faults."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="hamodel-"))
        domains = "\n".join(DOMAIN.format(name=n) for n in GUESTS + SPARE)
        (self.tmp / "node.xml").write_text(f"<node>\n{domains}\n</node>\n")
        self.base = LibvirtHypervisor(f"test://{self.tmp / 'node.xml'}")
        for name in SPARE:
            self.base._conn.lookupByName(name).destroy()
        self.state = self.tmp / "state"
        self.root = self.tmp / "root"
        (self.root / "proc/sys/kernel/random").mkdir(parents=True)
        self.new_boot()
        self.store = JournalStore(self.state / "maintenance")
        self.save_fails: set[str] = set()
        self.restore_fails: set[str] = set()
        self.restore_failed_ever: set[str] = set()
        self.hidden: set[str] = set()
        self.audit_fails = False
        self.writes_fail = False
        self.lock = threading.Condition()
        self.parked: list[tuple[ThreadWorker, str]] = []
        self.calls: list[tuple[str, str, str]] = []  # (maintenance, call, guest) as they pass the gate
        self.violations: list[str] = []
        self.cancelled: dict[str, int] = {}  # journal id -> len(calls) when its cancel returned

    def new_boot(self) -> None:
        (self.root / "proc/sys/kernel/random/boot_id").write_text(str(uuid.uuid4()) + "\n")

    def running(self) -> list[str]:
        return sorted(d.name() for d in self.base._conn.listAllDomains() if d.isActive())

    def lock_held(self) -> bool:
        return bool(journal._held)


class GatedStore(JournalStore):
    """The worker's store: its writes die with it, and fail while the disk is full."""

    def __init__(self, directory: Path, worker: ThreadWorker) -> None:
        super().__init__(directory)
        self.worker = worker

    def _write(self, journal: Journal) -> None:
        if self.worker.killed:
            raise Killed
        if self.worker.env.writes_fail:
            raise JournalWriteError(f"{self.path(journal.id)}: No space left on device (the model's disk)")
        super()._write(journal)


class GatedAudit(AuditLog):
    def __init__(self, worker: ThreadWorker) -> None:
        super().__init__(None)
        self.worker = worker

    def record(self, event: dict[str, Any]) -> None:
        if self.worker.killed:
            raise Killed
        if self.worker.env.audit_fails:
            raise HostagentError("audit.jsonl: Input/output error (the model's audit log)")


class Gated(Hypervisor):
    """One worker's view of the hypervisor: every call that touches or lists guests parks at the gate."""

    def __init__(self, env: Env, worker: ThreadWorker) -> None:
        self.env, self.worker, self.base = env, worker, env.base

    def gate(self, call: str, name: str = "") -> None:
        if self.worker.killed:
            raise Killed
        env = self.env
        if not env.lock_held():  # inside the maintenance lock a step is atomic: nothing lands between
            with env.lock:
                entry = (self.worker, f"{call} {name}")
                env.parked.append(entry)
                env.lock.notify_all()
                while entry in env.parked and not self.worker.killed:
                    env.lock.wait(0.05)
            if self.worker.killed:
                raise Killed
        env.calls.append((self.worker.journal_id, call, name))

    def guests(self) -> list[GuestInfo]:
        self.gate("guests")
        found = self.base.guests()
        return [replace(g, unsaveable="the hypervisor's listings disagree about it") if g.name in self.env.hidden
                else g for g in found]

    def image_for(self, name: str, save_dir: str) -> str:
        return self.base.image_for(name, save_dir)

    def save(self, name: str, image: str) -> str:
        self.gate("save", name)
        if name in self.env.save_fails or name in self.env.hidden:
            self.env.save_fails.discard(name)
            raise HostagentError(f"guest {name}: save failed: injected")
        return self.base.save(name, image)

    def restore(self, name: str, image: str) -> None:
        self.gate("restore", name)
        if name in self.env.restore_fails:
            self.env.restore_fails.discard(name)
            self.env.restore_failed_ever.add(name)
            raise HostagentError(f"guest {name}: restore failed: injected")
        self.base.restore(name, image)

    def has_image(self, name: str, image: str) -> bool:
        if self.worker.killed:
            raise Killed
        return self.base.has_image(name, image)

    def discard_image(self, name: str, image: str) -> None:
        self.base.discard_image(name, image)

    def start(self, name: str) -> None:
        self.gate("start", name)
        self.base.start(name)

    def cold_boot(self, name: str, image: str | None, keep_as: str) -> str | None:
        self.gate("cold_boot", name)
        return self.base.cold_boot(name, image, keep_as)

    def shutdown(self, name: str) -> None:
        self.gate("shutdown", name)
        self.base.shutdown(name)

    def is_running(self, name: str) -> bool:
        self.gate("is_running", name)  # a step too: the policy's wait for a shutdown is one, for instance
        return self.base.is_running(name)

    def resume_paused(self, name: str) -> bool:
        return self.base.resume_paused(name)

    def sync_clock(self, name: str) -> str:
        raise HostagentError(f"guest {name}: no guest agent in the model")

    def abort(self, name: str) -> None:
        self.base.abort(name)

    def job_progress(self, name: str) -> tuple[int, int] | None:
        return None


class ThreadWorker:
    """What the daemon supervises (``maintenance.worker.Worker``'s surface), run in a thread."""

    def __init__(self, env: Env, action: str, journal_id: str, config: MaintenanceConfig) -> None:
        self.env, self.action, self.journal_id = env, action, journal_id
        self.killed = False
        self.process = types.SimpleNamespace(returncode=None)
        self.thread = threading.Thread(target=self._run, args=(config,), daemon=True)
        self.thread.start()

    def _run(self, config: MaintenanceConfig) -> None:
        env = self.env
        store = GatedStore(env.store.directory, self)
        hypervisor = Gated(env, self)
        audit = GatedAudit(self)
        try:
            if self.action == "run":
                def preflight() -> Preflight:
                    return Preflight(guests=tuple(plan(g) for g in hypervisor.guests()))

                def reboot() -> None:
                    hypervisor.gate("reboot")
                    self.env_reboot(store)

                run.run_now(store, store.load(self.journal_id), hypervisor, preflight, config, reboot,
                            boot_id=self.boot_id(), audit=audit)
            else:
                run.resume_after_boot(store, hypervisor, config, audit)
            self.process.returncode = 0
        except Killed:
            self.process.returncode = -9
        except HostagentError:
            self.process.returncode = 1

    def boot_id(self) -> str:
        return (self.env.root / "proc/sys/kernel/random/boot_id").read_text().strip()

    def env_reboot(self, store: JournalStore) -> None:
        """The reboot command: I1 and I4 are checked at this very moment, then every domain goes down."""
        env = self.env
        on_disk = env.store.load(self.journal_id)
        for name in env.running():
            record = on_disk.guests.get(name)
            if record is None or record.state != "skipped" or record.unsaved != "with_host":
                env.violations.append(f"I1: {name} runs unsaved and unrecorded at the reboot "
                                      f"({record.state if record else 'no record'})")
        if self.journal_id in env.cancelled:
            env.violations.append(f"I4: the reboot command ran after the cancel of {self.journal_id} returned")
        for domain in env.base._conn.listAllDomains():
            if domain.isActive():
                domain.destroy()
        env.new_boot()

    # the daemon's view
    def finished(self) -> bool:
        return not self.thread.is_alive()

    def overdue(self, now: float | None = None) -> bool:
        return False

    def extend_to(self, journal: Journal, config: MaintenanceConfig) -> None:
        """(The model's workers have no deadline: ``kill_worker`` is the model's overrun.)"""

    def kill(self) -> None:
        self.killed = True

    def last_words(self) -> str:
        return f"exit {self.process.returncode}"


class ModelDaemon(daemon.MaintenanceDaemon):
    """The real daemon's decisions, its workers threads of this process."""

    env: Env | None = None

    def _start(self, action: str, journal: Journal) -> None:
        assert self.env is not None
        self.worker = ThreadWorker(self.env, action, journal.id, self.config.maintenance)  # type: ignore[assignment]
        quiet(self.env, self.worker)  # type: ignore[arg-type]


def quiet(env: Env, worker: ThreadWorker | None) -> None:
    """Wait until the worker parks at its gate or ends (it never takes long; stuck means a defect)."""
    if worker is None:
        return
    deadline = time.monotonic() + QUIET
    with env.lock:
        while not any(w is worker for w, _ in env.parked) and worker.thread.is_alive():
            if time.monotonic() > deadline:
                env.violations.append(f"the {worker.action} worker neither parked nor ended within {QUIET} s")
                return
            env.lock.wait(0.02)


class MaintenanceModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.env = Env()
        self.clock = Clock()
        self.patched = [(m, m.time) for m in (journal, phases, daemon)]  # type: ignore[attr-defined]
        for module, _ in self.patched:
            module.time = self.clock  # type: ignore[attr-defined]
        self.config = Config(
            maintenance=MaintenanceConfig(save_dir=str(self.env.tmp / "save"), concurrency=1, restore_concurrency=1,
                                          shutdown_timeout=2, restore_attempts=2, reboot_wait=600,
                                          late_start_grace=3600, notice_lead_times=()),
            alerts=AlertsConfig(enabled=False))
        self.daemon = self.new_daemon()
        self.snapshot = self.journals()

    def new_daemon(self) -> ModelDaemon:
        host = Host(str(self.env.root))
        host.is_snapshot = False
        state = self.env.state
        alerter = Alerter(self.config.alerts, StateStore(state), state / "spool", "hv1", AuditLog(None))
        made = ModelDaemon(self.config, None, state, host, alerter, started=self.clock.time())
        made.env = self.env
        return made

    def journals(self) -> dict[str, Journal]:
        return {j.id: j for j in self.env.store.all()}

    @property
    def worker(self) -> ThreadWorker | None:
        return self.daemon.worker  # type: ignore[return-value]

    # -- rules: the maintenance ------------------------------------------------------------------

    @initialize(count=st.integers(1, 2))
    def first_schedule(self, count: int) -> None:
        self.schedule_in_parallel(count, False)

    @rule()
    def advance(self) -> None:
        """The worker's next step, or the daemon's next look when no worker waits: the run goes on."""
        if self.env.parked:
            self.step()
        else:
            self.tick()

    # the same rule three more times: a quarter of the steps move the run on, so that a run gets far
    # within one example and every fault lands in the middle of it, not before it or after
    advance_b = rule()(lambda self: self.advance())
    advance_c = rule()(lambda self: self.advance())
    advance_d = rule()(lambda self: self.advance())

    @rule(count=st.integers(1, 3), cancel=st.booleans())
    def schedule_in_parallel(self, count: int, cancel: bool) -> None:
        results: list[str] = []

        def create() -> None:
            try:
                self.env.store.create(Journal.new(self.clock.time(), "model", list(GUESTS)))
                results.append("created")
            except HostagentError as err:
                results.append(str(err))

        threads = [threading.Thread(target=create) for _ in range(count)]
        if cancel:
            threads.append(threading.Thread(target=self.cancel))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

    @rule()
    def cancel(self) -> None:
        try:
            answer = cli.cancel(self.config, str(self.env.state))
        except HostagentError:
            return
        self.env.cancelled[answer["id"]] = len(self.env.calls)

    @rule()
    def tick(self) -> None:
        self.daemon.tick(self.clock.time())
        quiet(self.env, self.worker)

    @rule()
    def step(self) -> None:
        """(No precondition: whether a worker waits depends on threads, and the rules hypothesis draws must
        not; a step with nothing parked does nothing.)"""
        if not self.env.parked:
            return
        with self.env.lock:
            self.env.parked.pop(0)
            self.env.lock.notify_all()
        time.sleep(0.005)
        quiet(self.env, self.worker)

    @rule(restart_daemon=st.booleans())
    def kill_worker(self, restart_daemon: bool) -> None:
        worker = self.worker
        if worker is None or worker.finished():
            return
        worker.kill()
        with self.env.lock:
            self.env.parked = [(w, c) for w, c in self.env.parked if w is not worker]
            self.env.lock.notify_all()
        worker.thread.join(QUIET)
        if restart_daemon:
            self.daemon = self.new_daemon()

    # -- rules: the environment -------------------------------------------------------------------

    @rule(name=st.sampled_from(GUESTS + SPARE))
    def start_guest(self, name: str) -> None:
        domain = self.env.base._conn.lookupByName(name)
        if not domain.isActive():
            domain.create()

    @rule(name=st.sampled_from(GUESTS + SPARE))
    def stop_guest(self, name: str) -> None:
        domain = self.env.base._conn.lookupByName(name)
        if domain.isActive():
            domain.destroy()

    @rule(name=st.sampled_from(GUESTS + SPARE), restore=st.booleans())
    def fail_next(self, name: str, restore: bool) -> None:
        (self.env.restore_fails if restore else self.env.save_fails).add(name)

    @rule(name=st.sampled_from(GUESTS + SPARE))
    def hide_from_a_listing(self, name: str) -> None:
        self.env.hidden.add(name)

    @rule(seconds=st.sampled_from([-900.0, -60.0, 30.0, 700.0, 4000.0]))
    def step_the_clock(self, seconds: float) -> None:
        self.clock.offset += seconds

    @rule(audit=st.booleans(), writes=st.booleans())
    def faults(self, audit: bool, writes: bool) -> None:
        self.env.audit_fails, self.env.writes_fail = audit, writes

    # -- the invariants ---------------------------------------------------------------------------

    @invariant()
    def no_violation(self) -> None:
        assert not self.env.violations, self.env.violations

    @invariant()
    def i2_at_most_one_active(self) -> None:
        active = [j.id for j in self.env.store.all() if not j.final]
        assert len(active) <= 1, active

    @invariant()
    def i3_every_journal_reads_and_renders(self) -> None:
        journals, unreadable = self.env.store.scan()
        assert not unreadable, unreadable
        for found in journals:
            texts = [cli.render_rows([found.row()], status=True), notices.report(found, "hv1")[1],
                     notices.after_notice(found, list(found.guests.values()), "hv1")[1]]
            for text in texts:
                assert not re.search(r"-\d+(\.\d+)? (min|s)\b", text), text
            for record in found.guests.values():
                assert record.downtime_s is None or record.downtime_s >= 0

    @invariant()
    def i4_i5_each_step_of_the_journal_is_true(self) -> None:
        now = self.journals()
        for journal_id, found in now.items():
            before = self.snapshot.get(journal_id)
            for name, record in found.guests.items():
                old = before.guests.get(name) if before else None
                if old is not None and old.state == record.state:
                    continue
                if record.state in ("running", "cold_booted") and name not in self.env.running():
                    raise AssertionError(f"I5: {name} recorded {record.state} but does not run")
                if record.state == "saving" and journal_id in self.env.cancelled:
                    raise AssertionError(f"I4: {name}'s save started after the cancel returned")
            if journal_id in self.env.cancelled:
                after_cancel = [c for c in self.env.calls[self.env.cancelled[journal_id]:] if c[0] == journal_id]
                assert not [c for c in after_cancel if c[1] == "shutdown"], after_cancel
        self.snapshot = now

    def teardown(self) -> None:
        try:
            self.settle()
        finally:
            worker = self.worker
            if worker is not None:
                worker.kill()
                with self.env.lock:
                    self.env.parked.clear()
                    self.env.lock.notify_all()
                worker.thread.join(QUIET)
            for module, original in self.patched:
                module.time = original  # type: ignore[attr-defined]
            shutil.rmtree(self.env.tmp, ignore_errors=True)

    def settle(self) -> None:
        """I6 and the way back: with the faults cleared (but a failing audit log kept), the daemon ends every
        maintenance and every guest that went down for it runs again, or is reported lost."""
        env = self.env
        env.save_fails.clear()
        env.restore_fails.clear()
        env.hidden.clear()
        env.writes_fail = False
        for _ in range(400):
            if env.parked:
                self.step()
                continue
            if env.store.active() is None and (self.worker is None or self.worker.finished()):
                break
            active = env.store.active()
            if active is not None and active.phase == "planned" and active.reboot_at > self.clock.time():
                self.clock.offset += active.reboot_at - self.clock.time() + 1  # its time comes
            if active is not None and active.phase == "rebooting" and (self.worker is None or self.worker.finished()):
                self.clock.offset += self.config.maintenance.reboot_wait + 1
            if self.daemon.restore_workers and max(self.daemon.restore_workers.values()) >= daemon.MAX_RESTORE_WORKERS:
                self.daemon = self.new_daemon()  # an operator restarts it after restore_stuck
            self.tick()
        self.no_violation()
        active = env.store.active()
        assert active is None, f"not final after settling: {active}"
        running = env.running()
        for found in env.store.all():
            event(f"a maintenance ended {found.phase}" + (" after a reboot" if "rebooting" in
                                                          [p for p, _ in found.history] else ""))
            for name, record in found.guests.items():
                if record.outcome in ("restored", "cold_booted", "restarted"):
                    continue  # checked when written (I5); the model may have stopped it since
                if record.outcome == "lost":  # only a restore that failed every attempt loses a guest
                    assert name in env.restore_failed_ever and name not in running, record
                if record.state in ("saved", "shut_down", "skipped", "saving", "restoring", "restore_failed"):
                    raise AssertionError(f"{name} left {record.state} by a final maintenance ({found.phase})")


MaintenanceModel.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None,
                                              derandomize=True, database=None)
test_maintenance_model = MaintenanceModel.TestCase
