"""Maintenance under faults and races (issue #19), on libvirt's test driver with real processes.

- each guest outcome reaches its owner through a real SMTP server, with its own text and downtime;
- the guests are decided at the scheduled time, and an unreachable hypervisor never reboots;
- a cancel that returned is never followed by a reboot, whenever it lands;
- unreadable journals are set aside and never block the others;
- a full state directory stops a schedule or a run cleanly.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostagent.config import MaintenanceConfig
from hostagent.maintenance import notices
from hostagent.maintenance.journal import Journal, JournalStore
from hostagent.maintenance.preflight import Preflight
from hostagent.maintenance.run import resume_after_boot, run_now
from hostagent.rpcserver import Answerer, Published
from tests.helpers import wait_for
from tests.integration.test_alerts import Sink, sink_server
from tests.integration.test_cli import hostagent
from tests.integration.test_hypervisor import DOMAIN
from tests.integration.test_maintenance_daemon import daemon_for
from tests.integration.test_maintenance_phases import Faulty, seen

OWNERS = {"web1": "alice@example.com", "web2": "bob@example.com", "web3": "carol@example.com"}


def hypervisor_with(tmp_path: Path, fail: dict[tuple[str, str], int] | None = None,
                    names: tuple[str, ...] = ("web1", "web2", "web3")) -> Faulty:
    domains = "\n".join(DOMAIN.format(name=n, memory=64, metadata="", devices="") for n in names)
    (tmp_path / "node.xml").write_text(f"<node>\n{domains}\n</node>\n")
    return Faulty(f"test://{tmp_path / 'node.xml'}", fail or {})


class FailingStart(Faulty):
    """A test-driver backend whose cold starts fail (a guest that cannot come back at all)."""

    def start(self, name: str) -> None:
        self._maybe("start", name)
        super().start(name)


@pytest.fixture
def mail() -> Iterator[tuple[int, Sink]]:
    with sink_server() as (controller, received):
        yield controller.port, received


# -- one truthful outcome per guest, in the owner's mail ------------------------------------------

OUTCOME_CASES = {
    "restored": ({}, {}, "restored: it was paused, not rebooted"),
    "cold_booted": ({}, {}, "REBOOTED: it could not be restored from its memory image, so it was started afresh"),
    "restarted-shut-down": ({("save", "web1"): 1}, {"on_save_failure": "shutdown"},
                            "REBOOTED: it could not be saved, so it was shut down cleanly and started again"),
    "restarted-with-host": ({("save", "web1"): 1}, {"on_save_failure": "skip"},
                            "REBOOTED: it could not be saved and went down with the host; started again after"),
    "left_stopped": ({}, {}, "not touched: it was stopped before the maintenance and is left stopped"),
    "lost": ({("restore", "web1"): 9, ("start", "web1"): 9}, {},
             "NOT RUNNING after the maintenance: our staff are on it"),
}


@pytest.mark.parametrize("case", sorted(OUTCOME_CASES))
def test_each_outcome_reaches_the_owner_with_its_own_text_and_downtime(tmp_path: Path, case: str,
                                                                      mail: tuple[int, Sink]) -> None:
    port, received = mail
    fail, options, text = OUTCOME_CASES[case]
    daemon = daemon_for(tmp_path, port)
    hypervisor_with(tmp_path)  # web1..web3 in the node file (over daemon_for's), then a connection that reads it
    hypervisor = FailingStart(f"test://{tmp_path / 'node.xml'}", fail)
    if case == "left_stopped":
        hypervisor._domain("web1").destroy()  # its owner stopped it after the maintenance was scheduled
    config = MaintenanceConfig(save_dir=str(tmp_path), restore_attempts=2, shutdown_timeout=5,
                               **options)  # type: ignore[arg-type]
    store = daemon.store
    journal = store.create(Journal.new(0.0, "kernel", list(OWNERS), owners=OWNERS, notify_owners=True))
    reboots: list[str] = []
    run_now(store, journal, hypervisor, seen(hypervisor), config, lambda: reboots.append("reboot") and None)
    assert reboots == ["reboot"]
    if case == "cold_booted":  # the memory image is gone (the test driver's managed save is a flag)
        hypervisor._domain("web1").managedSaveRemove(0)
    resume_after_boot(store, hypervisor, config)
    record = store.load(journal.id).guests["web1"]
    expected = case.split("-")[0]
    assert record.outcome == expected, record
    daemon.tick()
    body = wait_for(lambda: next((m["body"] for m in received.messages if m["to"] == ["alice@example.com"]), None),
                    "the owner's after-notice")
    line = next(line for line in body.splitlines() if line.startswith("web1 "))
    assert text in line
    assert notices.downtime_text(record) in line
    if expected in ("restored", "cold_booted", "restarted"):
        assert record.downtime_s is not None and record.downtime_s >= 0 and record.running_again is not None
    if expected == "left_stopped":
        assert not hypervisor.is_running("web1")  # never started after the reboot
    if expected == "lost":
        assert store.load(journal.id).phase == "failed"
        assert any("maintenance.guest_lost" in m["body"] or "not running after maintenance" in m["body"]
                   for m in received.messages if m["to"] == ["ops@example.com"])
    if expected == "cold_booted":
        assert "was gone: booted afresh" in (record.error or "")
    report = next(m for m in received.messages if m["to"] == ["ops@example.com"] and "maintenance" in m["subject"])
    assert f"web1           {expected}" in report["body"]


# -- the guests are decided at the scheduled time ----------------------------------------------------


def test_the_guests_are_read_again_at_the_scheduled_time(tmp_path: Path) -> None:
    hypervisor = hypervisor_with(tmp_path, names=("web1", "web2", "late1"))
    store = JournalStore(tmp_path / "maintenance")
    journal = store.create(Journal.new(0.0, "kernel", ["web1", "web2"]))  # late1 started after scheduling
    hypervisor._domain("web2").destroy()  # and web2's owner stopped it after scheduling
    reboots: list[str] = []
    config = MaintenanceConfig(save_dir=str(tmp_path))
    run_now(store, journal, hypervisor, seen(hypervisor), config, lambda: reboots.append("reboot") and None)
    saved = store.load(journal.id)
    assert reboots == ["reboot"]
    assert {n: g.state for n, g in saved.guests.items()} == {"web1": "saved", "web2": "stopped", "late1": "saved"}
    assert saved.guests["late1"].added and not saved.guests["web1"].added
    resume_after_boot(store, hypervisor, config)
    done = store.load(journal.id)
    assert done.phase == "done"
    assert {n: g.outcome for n, g in done.guests.items()} == {"web1": "restored", "web2": "left_stopped",
                                                              "late1": "restored"}
    assert hypervisor.is_running("late1") and not hypervisor.is_running("web2")
    listing = notices.report(done, "hv1")[1]
    assert "added at run time" in listing and "stopped before the maintenance" in listing


def test_a_hypervisor_unreachable_at_run_time_never_reboots_whatever_force_said(tmp_path: Path) -> None:
    hypervisor = hypervisor_with(tmp_path)
    store = JournalStore(tmp_path / "maintenance")
    journal = store.create(Journal.new(0.0, "kernel", list(OWNERS), force=True, force_unbootable=True))
    blind = Preflight(hypervisor_problem="hypervisor qemu:///system not reachable: Connection refused")
    reboots: list[str] = []
    result = run_now(store, journal, hypervisor, lambda: blind, MaintenanceConfig(save_dir=str(tmp_path)),
                     lambda: reboots.append("reboot") and None)
    assert reboots == [] and result.phase == "failed" and "not reachable" in (result.error or "")
    assert all(hypervisor.is_running(n) for n in OWNERS)


def test_run_now_through_the_cli_with_libvirt_down_does_not_reboot(tmp_path: Path) -> None:
    """The real worker process, with a URI that cannot be opened at the scheduled time."""
    state, rebooted = tmp_path / "state", tmp_path / "rebooted"
    config = tmp_path / "hostagent.toml"
    config.write_text(f'[maintenance]\nuri = "test://{tmp_path}/gone.xml"\nsave_dir = "{tmp_path}"\n'
                      f'reboot_command = ["touch", "{rebooted}"]\n[checks.smart]\nenabled = false\n')
    store = JournalStore(state / "maintenance")
    journal = store.create(Journal.new(time.time() + 3600, "kernel", ["web1"], force=True))
    ran = hostagent("--config", str(config), "maintenance", "run-now", "--json", "--state-dir", str(state))
    assert ran.returncode == 1, ran.stderr
    assert json.loads(ran.stdout)["phase"] == "failed" and "cannot see the guests" in json.loads(ran.stdout)["error"]
    assert not rebooted.exists() and store.load(journal.id).phase == "failed"


# -- a cancel is final -------------------------------------------------------------------------------


class Gate(Faulty):
    """Saves that wait at a gate, so a cancel can land while they run."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri, {})
        self.entered, self.release = threading.Event(), threading.Event()

    def save(self, name: str, image: str) -> str:
        self.entered.set()
        self.release.wait(30)
        return super().save(name, image)


def cancel_cli(state: Path) -> subprocess.CompletedProcess[str]:
    config = state.parent / "empty.toml"
    config.write_text("")
    return hostagent("--config", str(config), "maintenance", "cancel", "--json", "--state-dir", str(state))


def test_a_cancel_during_the_preflight_wins(tmp_path: Path) -> None:
    hypervisor = hypervisor_with(tmp_path)
    state = tmp_path / "state"
    store = JournalStore(state / "maintenance")
    journal = store.create(Journal.new(0.0, "kernel", list(OWNERS)))
    reboots: list[str] = []

    def slow_preflight() -> Preflight:  # the cancel lands while the worker runs the preflight
        cancelled = cancel_cli(state)
        assert cancelled.returncode == 0, cancelled.stderr
        assert json.loads(cancelled.stdout)["phase"] == "cancelled"
        return seen(hypervisor)()

    result = run_now(store, journal, hypervisor, slow_preflight, MaintenanceConfig(save_dir=str(tmp_path)),
                     lambda: reboots.append("reboot") and None)
    assert reboots == [] and result.phase == "cancelled" and store.load(journal.id).phase == "cancelled"
    assert all(hypervisor.is_running(n) for n in OWNERS)
    assert all(g.state == "planned" for g in store.load(journal.id).guests.values())  # nothing was touched


def test_a_cancel_during_the_saves_stops_the_reboot_and_restores_the_saved_guests(tmp_path: Path) -> None:
    hypervisor_with(tmp_path)
    hypervisor = Gate(f"test://{tmp_path / 'node.xml'}")
    state = tmp_path / "state"
    store = JournalStore(state / "maintenance")
    journal = store.create(Journal.new(0.0, "kernel", list(OWNERS)))
    reboots: list[str] = []
    config = MaintenanceConfig(save_dir=str(tmp_path), concurrency=1)  # one save at a time: the others wait
    worker = threading.Thread(target=run_now, args=(store, journal, hypervisor, seen(hypervisor), config,
                                                    lambda: reboots.append("reboot") and None))
    worker.start()
    assert hypervisor.entered.wait(30)
    cancelled = cancel_cli(state)
    hypervisor.release.set()
    worker.join(60)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "no reboot" in json.loads(cancelled.stdout)["note"]
    final = store.load(journal.id)
    assert reboots == [] and final.phase == "cancelled" and final.cancelled
    assert all(hypervisor.is_running(n) for n in OWNERS)
    saved = [n for n, g in final.guests.items() if g.save_started is not None]
    assert len(saved) == 1  # the save under way finished; no other save started after the cancel
    assert final.guests[saved[0]].outcome == "restored"
    assert "rebooting" not in [phase for phase, _ in final.history]


def test_a_cancel_once_rebooting_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = JournalStore(state / "maintenance")
    journal = Journal.new(0.0, "kernel", []).advance("preflight").advance("saving").advance("rebooting")
    store.create(journal)
    refused = cancel_cli(state)
    assert refused.returncode == 3 and "too late to cancel" in refused.stderr
    assert store.load(journal.id).phase == "rebooting"


class SlowSaves(Faulty):
    """Saves of a random length, so that cancels land in every part of the run."""

    def __init__(self, uri: str, rng: random.Random) -> None:
        super().__init__(uri, {})
        self.rng = rng

    def save(self, name: str, image: str) -> str:
        time.sleep(self.rng.uniform(0.05, 0.4))
        return super().save(name, image)


@pytest.mark.parametrize("seed", range(3))
def test_a_cancel_that_returned_is_never_followed_by_a_reboot(tmp_path: Path, seed: int) -> None:
    """Cancels from another process at random moments of real runs: the cancel and the last look before
    the reboot are compare-and-sets on one journal, so exactly one of them wins."""
    rng = random.Random(seed)
    hypervisor_with(tmp_path)
    hypervisor = SlowSaves(f"test://{tmp_path / 'node.xml'}", rng)
    state = tmp_path / "state"
    outcomes = []
    for _ in range(8):
        store = JournalStore(state / "maintenance")
        for path in store.directory.glob("*.json") if store.directory.exists() else []:
            path.unlink()
        for name in OWNERS:  # every guest running again for the next round
            if not hypervisor.is_running(name):
                hypervisor.restore(name, "managed")
        journal = store.create(Journal.new(0.0, "kernel", list(OWNERS)))
        reboots: list[str] = []
        delay = rng.uniform(0.0, 1.0)

        def late_preflight(pause: float = rng.uniform(0.0, 0.2)) -> Preflight:
            time.sleep(pause)
            return seen(hypervisor)()

        def reboot(reboots: list[str] = reboots) -> None:
            reboots.append("reboot")

        worker = threading.Thread(target=run_now, args=(
            store, journal, hypervisor, late_preflight, MaintenanceConfig(save_dir=str(tmp_path), concurrency=1),
            reboot))
        worker.start()
        time.sleep(delay)
        cancelled = cancel_cli(state)
        worker.join(60)
        final = store.load(journal.id)
        if cancelled.returncode == 0:
            assert reboots == [], final
            assert final.phase == "cancelled" and all(hypervisor.is_running(n) for n in OWNERS)
        else:
            assert "too late to cancel" in cancelled.stderr and reboots == ["reboot"]
            assert final.phase == "rebooting"
            resume_after_boot(store, hypervisor, MaintenanceConfig())
        outcomes.append(cancelled.returncode)
    print("cancel won", outcomes.count(0), "of", len(outcomes))


# -- bad or foreign journal files never block the others -------------------------------------------


def finished(reboot_at: float) -> Journal:
    return Journal.new(reboot_at, "old", ["web1"]).advance("cancelled")


def test_unreadable_journals_are_listed_set_aside_and_block_nothing(tmp_path: Path, mail: tuple[int, Sink]) -> None:
    port, received = mail
    daemon = daemon_for(tmp_path, port)
    store = daemon.store
    truncated = store.create(finished(1000.0))
    text = store.path(truncated.id).read_text()
    store.path(truncated.id).write_text(text[: len(text) // 2])  # a torn old journal
    wrong = store.create(finished(2000.0))
    store.path(wrong.id).write_text(json.dumps({**wrong.to_json(), "guests": ["web1"]}))  # the wrong shape
    planned = store.create(Journal.new(time.time() + 3600, "kernel", ["web1"]))
    state = tmp_path / "state"
    config = str(tmp_path / "hostagent.toml")
    listed = hostagent("--config", config, "maintenance", "list", "--json", "--state-dir", str(state))
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["phase"] for r in rows] == ["planned", "unreadable", "unreadable"]
    by_file = {Path(r["file"]).name: r["error"] for r in rows if r["phase"] == "unreadable"}
    assert "Unterminated string" in by_file[f"{truncated.id}.json"] or "Expecting" in by_file[f"{truncated.id}.json"]
    assert "guests: not an object" in by_file[f"{wrong.id}.json"]
    text_list = hostagent("--config", config, "maintenance", "list", "--state-dir", str(state))
    assert f"{wrong.id}.json  unreadable" in text_list.stdout and "Traceback" not in text_list.stderr
    status = hostagent("--config", config, "maintenance", "status", "--json", "--state-dir", str(state))
    assert [r["id"] for r in json.loads(status.stdout)] == [planned.id]
    # the daemon's RPC answer lists them too
    answerer = Answerer(Published, store.directory, ["/bin/false"])
    report = answerer.answer({"op": "request", "command": "maintenance status", "allow": ["maintenance status"]},
                             "pid 1 uid 0")
    assert report["ok"] is True and len(report["result"]["unreadable"]) == 2, report
    daemon.tick()  # the daemon sets both aside and alerts naming each
    assert sorted(p.name for p in store.directory.glob("*.corrupt")) == sorted(
        [f"{truncated.id}.corrupt", f"{wrong.id}.corrupt"])
    wait_for(lambda: len([m for m in received.messages if "journal" in m["body"]]) >= 2, "two journal alerts")
    bodies = "\n".join(m["body"] for m in received.messages)
    assert f"{truncated.id}.json" in bodies and f"{wrong.id}.json" in bodies
    cancelled = hostagent("--config", config, "maintenance", "cancel", "--json", "--state-dir", str(state))
    assert cancelled.returncode == 0, cancelled.stderr
    assert store.load(planned.id).phase == "cancelled"
    again = hostagent("--config", config, "maintenance", "list", "--json", "--state-dir", str(state))
    assert sorted(r["phase"] for r in json.loads(again.stdout)) == ["cancelled", "unreadable", "unreadable"]


def test_the_restore_after_a_reboot_goes_on_beside_a_corrupt_journal(tmp_path: Path) -> None:
    hypervisor = hypervisor_with(tmp_path)
    store = JournalStore(tmp_path / "maintenance")
    journal = store.create(Journal.new(0.0, "kernel", list(OWNERS)))
    (store.directory / "0123456789ab.json").write_text('{"id": "0123456789ab", "phase": ')
    run_now(store, journal, hypervisor, seen(hypervisor), MaintenanceConfig(save_dir=str(tmp_path)), lambda: None)
    assert store.load(journal.id).phase == "rebooting"
    restored = resume_after_boot(store, hypervisor, MaintenanceConfig())
    assert restored is not None and restored.phase == "done"
    assert all(hypervisor.is_running(n) for n in OWNERS)


# -- write errors: a full state directory -----------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs for the state directory: a disk that really fills up."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> None:
    """Fill the file system to the last byte."""
    with (directory / "filler").open("wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 4096)


def test_scheduling_on_a_full_disk_fails_cleanly_and_is_audited(tmp_path: Path, small_tmpfs: Path) -> None:
    state = small_tmpfs / "state"
    (state / "maintenance").mkdir(parents=True)
    (state / "audit.jsonl").write_text('{"event": "start"}\n')  # the audit log has room left in its last page
    fill(small_tmpfs)
    config = tmp_path / "hostagent.toml"
    hypervisor_with(tmp_path)
    config.write_text(f'[maintenance]\nuri = "test://{tmp_path}/node.xml"\nsave_dir = "{tmp_path}"\n'
                      '[checks.smart]\nenabled = false\n')
    scheduled = hostagent("--config", str(config), "maintenance", "--reboot-at", "2099-01-01 04:00", "--json",
                          "--state-dir", str(state))
    assert scheduled.returncode == 3, scheduled.stderr
    assert "No space left on device" in scheduled.stderr and "nothing was scheduled" in scheduled.stderr
    assert "Traceback" not in scheduled.stderr
    assert not list((state / "maintenance").glob("*.json")) and not list((state / "maintenance").glob(".*tmp"))
    audit = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["action"] == "schedule" and audit[-1]["state"] == "refused"
    assert "No space left on device" in audit[-1]["error"]


class FillsTheDisk(Faulty):
    """The state directory fills up while the guests are being saved (after the first save)."""

    def __init__(self, uri: str, directory: Path) -> None:
        super().__init__(uri, {})
        self.directory, self.saves = directory, 0

    def save(self, name: str, image: str) -> str:
        image = super().save(name, image)
        self.saves += 1
        if self.saves == 1:
            fill(self.directory)
        return image


def test_a_disk_that_fills_during_the_saves_stops_the_run_before_the_reboot(tmp_path: Path,
                                                                           small_tmpfs: Path) -> None:
    from hostagent.actions import AuditLog

    hypervisor_with(tmp_path)
    hypervisor = FillsTheDisk(f"test://{tmp_path / 'node.xml'}", small_tmpfs)
    store = JournalStore(small_tmpfs / "maintenance")
    journal = store.create(Journal.new(0.0, "kernel", list(OWNERS)))
    reboots: list[str] = []
    result = run_now(store, journal, hypervisor, seen(hypervisor),
                     MaintenanceConfig(save_dir=str(tmp_path), concurrency=1), lambda: reboots.append("x") and None,
                     audit=AuditLog(small_tmpfs))
    assert reboots == []
    assert all(hypervisor.is_running(n) for n in OWNERS)  # the guests already saved run again
    assert result.phase == "failed" and "No space left on device" in (result.error or "")
    assert [n for n, g in result.guests.items() if g.save_started is not None] == ["web1"]  # no more went down
    assert result.guests["web1"].outcome == "restored"
    assert not list(store.directory.glob(".*.tmp"))
    (small_tmpfs / "filler").unlink()  # space again: the daemon's restore worker would find the truth on disk
    after = resume_after_boot(store, hypervisor, MaintenanceConfig())
    final = store.load(journal.id)
    assert final.phase == "failed" and "rebooting" not in [p for p, _ in final.history], (after, final)
    assert all(g.outcome in ("restored", None) for g in final.guests.values())


# -- concurrent writers and readers ----------------------------------------------------------------

STRESS_WRITER = """
import sys
from pathlib import Path
from hostagent.maintenance.journal import JournalStore
store, journal_id, me, rounds = JournalStore(Path(sys.argv[1])), sys.argv[2], sys.argv[3], int(sys.argv[4])
for i in range(rounds):
    store.update(journal_id, lambda current: current.mark_sent(f"{me}:{i}"))
print("ok")
"""

STRESS_READER = """
import sys, time
from pathlib import Path
from hostagent.maintenance.journal import JournalStore
store, journal_id, stop = JournalStore(Path(sys.argv[1])), sys.argv[2], Path(sys.argv[3])
reads = 0
while not stop.exists():
    store.load(journal_id)
    store.scan()
    reads += 1
print(reads)
"""


def test_concurrent_writers_and_readers_never_see_a_torn_journal_or_lose_an_update(tmp_path: Path) -> None:
    store = JournalStore(tmp_path / "maintenance")
    journal = store.create(Journal.new(0.0, "kernel", list(OWNERS)))
    stop = tmp_path / "stop"
    rounds, writers = 400, 3
    readers = [subprocess.Popen([sys.executable, "-c", STRESS_READER, str(store.directory), journal.id, str(stop)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    started = [subprocess.Popen([sys.executable, "-c", STRESS_WRITER, str(store.directory), journal.id, f"w{n}",
                                 str(rounds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for n in range(writers)]
    results = [process.communicate(timeout=300) for process in started]
    stop.touch()
    read = [process.communicate(timeout=60) for process in readers]
    assert [(p.returncode, out.strip(), err) for p, (out, err) in zip(started, results, strict=True)] == [
        (0, "ok", "")] * writers
    assert all(p.returncode == 0 and err == "" and int(out) > 0 for p, (out, err) in zip(readers, read, strict=True))
    sent = store.load(journal.id).sent
    assert len(sent) == rounds * writers == len(set(sent))  # no update lost to a stale copy
    assert sorted(p.name for p in store.directory.iterdir()) == [f"{journal.id}.json", "maintenance.lock"]


def test_a_run_whose_journal_cannot_be_written_does_not_reboot_and_the_daemon_alerts(
        tmp_path: Path, mail: tuple[int, Sink]) -> None:
    """The journals' file system fills up before the run: the real worker process runs the maintenance
    in memory only as far as it must (no save, no reboot), exits non-zero, and the daemon alerts."""
    port, received = mail
    daemon = daemon_for(tmp_path, port)
    journals = daemon.store.directory
    journals.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(journals)], check=True)
    try:
        journal = daemon.store.create(Journal.new(time.time() - 1, "kernel", ["web1", "db1"]))
        fill(journals)
        def alerted() -> bool:
            daemon.tick()
            return any("worker failed" in m["body"] for m in received.messages)

        wait_for(alerted, "the daemon's worker_failed alert", timeout=60)
        assert not (tmp_path / "rebooted").exists()  # the reboot command never ran
        body = next(m["body"] for m in received.messages if "worker failed" in m["body"])
        assert "failed (exit 2)" in body  # it ran to its end in memory and said the disk is behind
        assert "is full" in body and "nothing is rebooted until there is room" in body
        assert daemon.store.load(journal.id).phase == "planned"  # the disk still says what it could
        assert not list(journals.glob(".*.tmp"))
    finally:
        subprocess.run(["umount", "-l", str(journals)], check=False)
