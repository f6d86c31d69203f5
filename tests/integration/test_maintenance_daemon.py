"""The daemon's maintenance side: APScheduler's persistent wake-ups, worker supervision, and every
way a run can be interrupted (libvirt's test driver; the workers are real child processes)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostagent.actions import AuditLog
from hostagent.alerts.alerter import Alerter
from hostagent.config import Config, parse_config
from hostagent.host import Host
from hostagent.maintenance.daemon import MaintenanceDaemon
from hostagent.maintenance.journal import Journal, JournalStore
from hostagent.maintenance.run import current_boot_id, run_now
from hostagent.maintenance.worker import Worker
from hostagent.state import StateStore
from tests.integration.test_alerts import Sink, sink_server
from tests.integration.test_hypervisor import node
from tests.integration.test_maintenance_phases import seen, setup


def config_text(tmp_path: Path, port: int, extra: str = "") -> str:
    return (f'[maintenance]\nuri = "{node(tmp_path)}"\nsave_dir = "{tmp_path}"\n'
            f'reboot_command = ["sh", "-c", "touch {tmp_path / "rebooted"}"]\n{extra}'
            f'[alerts.smtp]\nhost = "127.0.0.1"\nport = {port}\n'
            '[[alerts.routes]]\nto = ["ops@example.com"]\n[checks.smart]\nenabled = false\n')


@pytest.fixture
def sink() -> Iterator[tuple[int, Sink]]:
    with sink_server() as (controller, received):
        yield controller.port, received


def daemon_for(tmp_path: Path, port: int, extra: str = "", started: float | None = None) -> MaintenanceDaemon:
    path = tmp_path / "hostagent.toml"
    path.write_text(config_text(tmp_path, port, extra))
    import tomllib

    config: Config = parse_config(tomllib.loads(path.read_text()), source=str(path))
    state = tmp_path / "state"
    alerter = Alerter(config.alerts, StateStore(state), state / "spool", "hv1", AuditLog(state))
    return MaintenanceDaemon(config, str(path), state, Host("/"), alerter, started=started or time.time())


def run_ticks(daemon: MaintenanceDaemon, until: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not until():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the daemon did not get there"
        daemon.tick()
        time.sleep(0.2)


def watch(tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hostagent", "--config", str(tmp_path / "hostagent.toml"),
                             "watch", "--state-dir", str(tmp_path / "state")], stderr=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen[str]) -> str:
    process.terminate()
    return process.communicate(timeout=30)[1]


def stored_jobs(state: Path) -> dict[str, float]:
    with sqlite3.connect(state / "schedule.sqlite") as db:
        return dict(db.execute("SELECT id, next_run_time FROM apscheduler_jobs").fetchall())


def wait_for_jobs(state: Path, count: int) -> dict[str, float]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            jobs = stored_jobs(state)
            if len(jobs) >= count:
                return jobs
        except sqlite3.OperationalError:
            pass  # the daemon has not created the table yet
        time.sleep(0.2)
    raise AssertionError("the daemon stored no maintenance jobs")


def test_wake_ups_persist_and_a_start_missed_past_the_grace_is_not_run(tmp_path: Path,
                                                                    sink: tuple[int, Sink]) -> None:
    port, received = sink
    # the daemon stores a notice's job only while it is ahead: its start (imports, SQLite) must come before
    # the 2 s lead's time, 12 - 6 s from now, on a loaded machine too
    (tmp_path / "hostagent.toml").write_text(config_text(tmp_path, port, "late_start_grace = 1.0\n"
                                                                      "notice_lead_times = [6.0, 3600.0]\n"))
    store = JournalStore(tmp_path / "state" / "maintenance")
    planned = Journal.new(time.time() + 12, "kernel", ["web1"], notify_owners=True)
    store.create(planned)
    daemon = watch(tmp_path)
    jobs = wait_for_jobs(tmp_path / "state", 2)
    assert set(jobs) == {f"{planned.id}:start", f"{planned.id}:before:6"}
    assert jobs[f"{planned.id}:start"] == pytest.approx(planned.reboot_at)
    stop(daemon)  # down across the scheduled time
    time.sleep(max(planned.reboot_at + 2.5 - time.time(), 0))
    log = stop_after(watch(tmp_path), lambda: store.load(planned.id).final)
    assert store.load(planned.id).phase == "missed" and not (tmp_path / "rebooted").exists()
    assert f"maintenance wake-up: missed {planned.id}:start" in log  # APScheduler's misfire, from its store
    subjects = [m["subject"] for m in received.messages]
    assert f"[hostagent] CRITICAL maintenance {planned.id} missed on " in " ".join(subjects)
    assert stored_jobs(tmp_path / "state") == {}  # one-shot jobs are gone; the journal keeps the truth


def stop_after(process: subprocess.Popen[str], condition: object, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.2)
    time.sleep(1)
    return stop(process)


def test_a_start_within_the_grace_runs_late_after_a_restart(tmp_path: Path, sink: tuple[int, Sink]) -> None:
    port, _ = sink
    (tmp_path / "hostagent.toml").write_text(config_text(tmp_path, port, "late_start_grace = 120.0\n"))
    store = JournalStore(tmp_path / "state" / "maintenance")
    # stopped before the time, which is 10 s ahead: the daemon's start and its first store must fit before it
    planned = Journal.new(time.time() + 10, "kernel", ["web1", "db1"], force=True)  # gpu1 cannot be saved
    store.create(planned)
    daemon = watch(tmp_path)
    wait_for_jobs(tmp_path / "state", 1)
    stop(daemon)
    time.sleep(max(planned.reboot_at + 1 - time.time(), 0))
    log = stop_after(watch(tmp_path), lambda: store.load(planned.id).phase == "rebooting")
    assert f"maintenance wake-up: {planned.id}:start" in log
    assert store.load(planned.id).phase == "rebooting" and (tmp_path / "rebooted").exists()


def test_an_overdue_worker_is_killed_and_the_guests_are_brought_back(tmp_path: Path,
                                                                   sink: tuple[int, Sink]) -> None:
    port, received = sink
    daemon = daemon_for(tmp_path, port)
    journal = Journal.new(0.0, "kernel", ["web1", "db1"]).advance("preflight").advance("saving")
    journal = journal.guest("web1", "saving", save_started=time.time())
    daemon.store.create(journal)
    hung = subprocess.Popen(["sleep", "600"], start_new_session=True)
    # started long ago: the deadline its guests get from the start has passed too (with the start left at
    # 0, the machine's boot, a machine up for less than that deadline found the worker on time)
    daemon.worker = Worker("run", journal.id, hung, deadline=time.monotonic() - 1,
                           started=time.monotonic() - 30 * 86400)
    daemon.tick()
    assert hung.poll() is not None  # killed at its deadline
    assert daemon.worker is not None and daemon.worker.action == "restore"  # and the journal says what is next
    assert any("overran its deadline in phase saving" in m["body"] for m in received.messages)
    run_ticks(daemon, lambda: daemon.store.load(journal.id).final)
    final = daemon.store.load(journal.id)
    assert final.phase == "failed" and "worker stopped while saving" in (final.error or "")
    assert {n: g.state for n, g in final.guests.items()} == {"web1": "running", "db1": "planned"}  # db1 untouched
    assert "rebooting" not in [phase for phase, _ in final.history]


def test_a_worker_lost_in_the_preflight_fails_the_maintenance_and_alerts(tmp_path: Path,
                                                                        sink: tuple[int, Sink]) -> None:
    port, received = sink
    daemon = daemon_for(tmp_path, port)
    journal = Journal.new(0.0, "kernel", ["web1"]).advance("preflight")
    daemon.store.create(journal)
    daemon.tick()
    assert daemon.store.load(journal.id).phase == "failed"
    assert any(f"maintenance {journal.id}" in m["subject"] and "CRITICAL" in m["subject"]
               for m in received.messages)


def test_after_the_reboot_command_the_same_daemon_waits_then_restores_if_no_reboot_came(
        tmp_path: Path, sink: tuple[int, Sink]) -> None:
    port, received = sink
    # the wait counts from the journal's "rebooting": the store's write and the first tick come within it
    daemon = daemon_for(tmp_path, port, "reboot_wait = 6.0\n", started=time.time() - 60)
    journal = Journal.new(0.0, "kernel", ["web1"]).advance("preflight").advance("saving")
    journal = journal.guest("web1", "saving", save_started=time.time()).guest("web1", "saved", image="managed")
    journal = journal.advance("rebooting", boot_id=current_boot_id(Host("/")))
    daemon.store.create(journal)
    daemon.tick()
    assert daemon.worker is None and daemon.store.load(journal.id).phase == "rebooting"  # shutting down: wait
    time.sleep(6.5)
    run_ticks(daemon, lambda: daemon.store.load(journal.id).final)
    final = daemon.store.load(journal.id)
    assert final.phase == "failed" and "did not reboot within 6 s" in (final.error or "")
    assert final.guests["web1"].state == "running"
    assert any("reboot_stalled" in m["body"] or "did not reboot" in m["body"] for m in received.messages)


def test_a_failing_reboot_command_restores_the_guests_at_once(tmp_path: Path) -> None:
    from hostagent.config import MaintenanceConfig

    hypervisor, _, _ = setup(tmp_path)
    store = JournalStore(tmp_path / "other")  # setup's store holds a maintenance already: one per host
    planned = Journal.new(0.0, "kernel", ["a", "b", "c"])
    store.create(planned)
    journal = run_now(store, planned, hypervisor, seen(hypervisor), MaintenanceConfig(save_dir=str(tmp_path)),
                      lambda: "the reboot command failed: systemctl reboot exited 1: Access denied")
    assert journal.phase == "failed" and "the reboot command failed" in (journal.error or "")
    assert all(hypervisor.is_running(n) for n in "abc")
    assert [phase for phase, _ in journal.history][-3:] == ["rebooting", "restoring", "failed"]


def test_the_job_store_opens_only_when_a_wake_up_is_wanted(tmp_path: Path, sink: tuple[int, Sink]) -> None:
    """SQLAlchemy (about 14 MB) stays out of an idle daemon; the first planned maintenance opens the store."""
    import datetime as dt

    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    from hostagent.maintenance.daemon import JOBSTORE

    idle = subprocess.run([sys.executable, "-c", "import sys, hostagent.agent, hostagent.maintenance.daemon; "
                                                 "print('sqlalchemy' in sys.modules)"], capture_output=True, text=True)
    assert idle.stdout.strip() == "False", idle.stderr
    port, _ = sink
    daemon = daemon_for(tmp_path, port)
    scheduler = BackgroundScheduler(timezone=dt.UTC, jobstores={"default": MemoryJobStore()})
    scheduler.start()
    try:
        daemon.reconcile(scheduler, time.time())
        assert not daemon.store_open and not (daemon.directory / "schedule.sqlite").exists()
        planned = Journal.new(time.time() + 3600, "kernel", ["web1"])
        daemon.store.create(planned)
        daemon.reconcile(scheduler, time.time())
        assert daemon.store_open
        assert [job.id for job in scheduler.get_jobs(jobstore=JOBSTORE)] == [f"{planned.id}:start"]
        assert set(stored_jobs(daemon.directory)) == {f"{planned.id}:start"}
    finally:
        scheduler.shutdown(wait=False)
