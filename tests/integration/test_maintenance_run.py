"""A maintenance from the journal to the reboot and back, on libvirt's test driver (issue #8, in progress)."""

from __future__ import annotations

from pathlib import Path

from hostagent.config import MaintenanceConfig
from hostagent.maintenance.journal import Journal, JournalStore
from hostagent.maintenance.preflight import Preflight
from hostagent.maintenance.run import due, mark_missed, resume_after_boot, run_now
from tests.integration.test_maintenance_phases import Faulty, seen, setup


def test_due_missed_and_waiting() -> None:
    journal = Journal.new(1000.0, "r", ["a"])
    assert due(journal, 999.0, 900) == "wait"
    assert due(journal, 1500.0, 900) == "run"
    assert due(journal, 2000.0, 900) == "missed"
    assert due(journal.advance("cancelled"), 1500.0, 900) == "wait"


def test_missed_is_recorded_and_never_run(tmp_path: Path) -> None:
    store = JournalStore(tmp_path)
    journal = store.create(Journal.new(1000.0, "r", ["a"]))
    missed = mark_missed(store, journal, 5000.0)
    assert store.load(journal.id).phase == "missed" and "4000 s late" in (missed.error or "")


def test_cycle_through_a_reboot_and_an_agent_restart(tmp_path: Path) -> None:
    hypervisor, _, _ = setup(tmp_path)
    store = JournalStore(tmp_path / "run")  # only this maintenance in it
    planned = Journal.new(0.0, "kernel", ["a", "b", "c"])
    store.create(planned)
    reboots: list[str] = []
    journal = run_now(store, planned, hypervisor, seen(hypervisor), MaintenanceConfig(save_dir=str(tmp_path)),
                      lambda: reboots.append("reboot"))
    assert reboots == ["reboot"] and store.load(planned.id).phase == "rebooting"
    assert not any(hypervisor.is_running(n) for n in "abc")
    # the agent process is gone; a new one finds the journal and restores (twice is harmless)
    restored = resume_after_boot(JournalStore(store.directory), hypervisor, MaintenanceConfig())
    assert restored is not None and restored.phase == "done"
    assert all(hypervisor.is_running(n) for n in "abc")
    assert resume_after_boot(JournalStore(store.directory), hypervisor, MaintenanceConfig()) is None
    assert journal.id == restored.id


def test_preflight_failing_at_the_scheduled_time_touches_nothing(tmp_path: Path) -> None:
    hypervisor, _, _ = setup(tmp_path)
    store = JournalStore(tmp_path / "run")
    planned = Journal.new(0.0, "kernel", ["a", "b"], force=True)  # --force does not cover the boot check
    store.create(planned)
    blocked = Preflight(boot_problems=("boot.missing_on_member: sdb cannot boot",))
    journal = run_now(store, planned, hypervisor, lambda: blocked, MaintenanceConfig(), lambda: None)
    assert journal.phase == "failed" and "sdb cannot boot" in (journal.error or "")
    assert all(hypervisor.is_running(n) for n in "ab")
    assert isinstance(hypervisor, Faulty)


def test_the_daemon_runs_a_due_maintenance_and_restores_after_the_reboot(tmp_path: Path) -> None:
    import json
    import time

    from tests.integration.test_alerts import sink_server
    from tests.integration.test_cli import hostagent
    from tests.integration.test_hypervisor import node

    rebooted = tmp_path / "rebooted"
    state = tmp_path / "state"
    with sink_server() as (controller, sink):
        config = tmp_path / "hostagent.toml"
        config.write_text(f'[maintenance]\nuri = "{node(tmp_path)}"\nsave_dir = "{tmp_path}"\n'
                          f'reboot_command = ["sh", "-c", "touch {rebooted}"]\n'
                          f'[alerts.smtp]\nhost = "127.0.0.1"\nport = {controller.port}\n'
                          '[[alerts.routes]]\nto = ["ops@example.com"]\n[checks.smart]\nenabled = false\n')
        store = JournalStore(state / "maintenance")
        due_now = Journal.new(time.time() - 1, "kernel", ["web1", "db1"], force=True)  # gpu1 has a hostdev
        store.create(due_now)
        first = hostagent("--config", str(config), "watch", "--once", "--state-dir", str(state))
        assert first.returncode == 0, first.stderr
        assert rebooted.exists() and store.load(due_now.id).phase == "rebooting"
        # gpu1 (host device passthrough) cannot be saved: --force lets it be shut down and started again
        assert {n: g.state for n, g in store.load(due_now.id).guests.items()} == {
            "web1": "saved", "db1": "saved", "gpu1": "shut_down"}
        assert store.load(due_now.id).guests["gpu1"].added
        second = hostagent("--config", str(config), "watch", "--once", "--state-dir", str(state))  # after boot
        assert second.returncode == 0, second.stderr
        assert store.load(due_now.id).phase == "done"
        assert f"maintenance {due_now.id}: worker restore ended (exit 0), maintenance done" in second.stderr
        assert "web1: restored" in (state / "maintenance" / f"{due_now.id}.log").read_text()  # the worker's log
        audit = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
        steps = [(a["action"], a["subject"], a["state"]) for a in audit if a.get("event") == "maintenance"]
        assert ("guest", "web1", "saved") in steps and ("guest", "web1", "running") in steps
        assert ("phase", due_now.id, "rebooting") in steps and ("phase", due_now.id, "done") in steps

        missed = Journal.new(time.time() - 3600, "too late", ["web1"])
        store.create(missed)
        third = hostagent("--config", str(config), "watch", "--once", "--state-dir", str(state))
        assert store.load(missed.id).phase == "missed" and "<3>maintenance" in third.stderr
        hostname = json.loads(hostagent("--config", str(config), "status", "--json", "--state-dir",
                                        str(state)).stdout)["hostname"]
        assert [m["subject"] for m in sink.messages if "maintenance" in m["subject"]] == [
            f"[hostagent] maintenance {due_now.id} on {hostname}: done",
            f"[hostagent] CRITICAL maintenance {missed.id} missed on {hostname}"]
        report = next(m for m in sink.messages if "done" in m["subject"])
        assert "web1           restored" in report["body"] and "total guest downtime" in report["body"]
