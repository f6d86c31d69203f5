"""A whole maintenance with real QEMU guests (qemu:///embed, TCG): schedule, save, "reboot", restore.

The reboot is tests/fake_reboot.py: it stops the daemon and starts a new one, as a boot would.
Each guest prints its uptime every second; no guest may boot twice or count from zero again.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostagent.maintenance.journal import Journal, JournalStore
from tests import guests
from tests.integration.test_alerts import sink_server
from tests.integration.test_cli import hostagent

GUESTS = [("web1", 128, "alice@example.com"), ("web2", 128, "alice@example.com"), ("db1", 160, "bob@example.com")]


@pytest.fixture
def embed_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="ha-", dir="/tmp"))  # short: QEMU's monitor sockets live under it
    guests.prepare_root(root)
    try:
        yield root
    finally:
        guests.destroy_all(root)
        shutil.rmtree(root, ignore_errors=True)


def wait_for(what: str, predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.5)


def test_full_cycle_guests_keep_running_across_the_reboot(embed_root: Path, tmp_path: Path) -> None:
    uri = guests.uri(embed_root)
    consoles = guests.start(embed_root, GUESTS)
    state, pidfile, daemon_log = tmp_path / "state", tmp_path / "daemon.pid", tmp_path / "daemon.log"
    with sink_server() as (controller, sink):
        config = tmp_path / "hostagent.toml"
        daemon = [sys.executable, "-m", "hostagent", "--config", str(config), "watch", "--state-dir", str(state)]
        reboot = [sys.executable, "-m", "tests.fake_reboot", str(pidfile), str(daemon_log), "--", *daemon]
        config.write_text(
            f'[maintenance]\nuri = "{uri}"\nsave_dir = "{embed_root}/lib/qemu/save"\n'
            f"reboot_command = {json.dumps(reboot)}\nnotice_lead_times = [3600.0]\nmin_notice_lead = 0\n"
            f'[alerts.smtp]\nhost = "127.0.0.1"\nport = {controller.port}\n'
            '[[alerts.routes]]\nto = ["ops@example.com"]\n[checks.smart]\nenabled = false\n')
        with daemon_log.open("ab") as out:
            first = subprocess.Popen(daemon, stdout=out, stderr=out, cwd=guests.REPO, start_new_session=True)
        pidfile.write_text(f"{first.pid}\n")
        try:
            at = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=15)).isoformat()
            scheduled = hostagent("--config", str(config), "maintenance", "--reboot-at", at, "--notify-owners",
                                  "--reason", "kernel update", "--json", "--state-dir", str(state))
            assert scheduled.returncode == 0, scheduled.stderr
            plan = json.loads(scheduled.stdout)
            assert plan["owners"] == {name: owner for name, _, owner in GUESTS}
            store = JournalStore(state / "maintenance")
            wait_for("the maintenance to end", lambda: store.load(plan["id"]).final, timeout=240)
            journal = store.load(plan["id"])
            samples = {name: len(guests.uptimes(consoles / f"{name}.log")) for name, _, _ in GUESTS}
            wait_for("the guests to print after the restore", lambda: all(
                len(guests.uptimes(consoles / f"{name}.log")) >= samples[name] + 3 for name, _, _ in GUESTS), 60)
            wait_for("the report", lambda: len(sink.messages) >= 5, timeout=30)
        finally:
            for pid in {first.pid, int(pidfile.read_text())}:
                subprocess.run(["kill", "-TERM", str(pid)], check=False)
            first.wait(timeout=30)
        log = daemon_log.read_text()
        assert journal.phase == "done", f"{journal.error}\n{log}"
        assert [phase for phase, _ in journal.history] == ["planned", "preflight", "saving", "rebooting",
                                                          "restoring", "done"]
        assert int(pidfile.read_text()) != first.pid and "back after the reboot; restoring guests" in log
        assert f"maintenance wake-up: {plan['id']}:start" in log  # started on time by its APScheduler job
        for name, _, _ in GUESTS:
            record = journal.guests[name]
            assert record.state == "running" and record.image == "managed"
            assert record.downtime_s is not None and 0 < record.downtime_s < 200
            assert_never_rebooted(consoles / f"{name}.log")
        messages = {(tuple(m["to"]), m["subject"]) for m in sink.messages}
        hostname = json.loads(hostagent("--config", str(config), "status", "--json", "--state-dir",
                                        str(state)).stdout)["hostname"]
        assert any(to == ("alice@example.com",) and subject.startswith(f"Planned maintenance of {hostname}")
                   for to, subject in messages), messages
        after = [m for m in sink.messages if m["to"] == ["bob@example.com"] and "your downtime" in m["subject"]]
        assert len(after) == 1 and "db1" in after[0]["body"] and "not rebooted" in after[0]["body"]
        db1_down = journal.guests["db1"].downtime_s or 0.0
        assert f"{round(db1_down) % 60} s" in after[0]["body"].split("db1", 1)[1].splitlines()[0]
        assert ("ops@example.com",) in {to for to, _ in messages}


def assert_never_rebooted(console: Path) -> None:
    """One boot, and an uptime that only ever counts up (a reboot would print the mark again from 0 s)."""
    times = guests.uptimes(console)
    assert guests.boots(console) == 1, console.read_text()[-2000:]
    assert len(times) > 5 and times == sorted(times), f"{console.name}: uptime went backwards: {times}"


def resume_in_child(uri: str, store: JournalStore, **config: object) -> subprocess.CompletedProcess[str]:
    """``resume_after_boot`` in a new process, as after a reboot (the embed root is free again after it)."""
    code = ("import json, sys\nfrom pathlib import Path\nfrom hostagent.config import MaintenanceConfig\n"
            "from hostagent.hypervisor.libvirt_backend import LibvirtHypervisor\n"
            "from hostagent.maintenance.journal import JournalStore\n"
            "from hostagent.maintenance.run import resume_after_boot\n"
            "config = MaintenanceConfig(**json.loads(sys.argv[3]))\n"
            "print(resume_after_boot(JournalStore(Path(sys.argv[2])), LibvirtHypervisor(sys.argv[1]), config).phase)\n")
    return guests.embedded(code, uri, str(store.directory), json.dumps(config), check=False)


def test_a_guest_that_runs_on_is_not_restored_twice(embed_root: Path, tmp_path: Path) -> None:
    """The restore after a crash finds guests already running and leaves them alone."""
    uri = guests.uri(embed_root)
    consoles = guests.start(embed_root, GUESTS[:1])
    store = JournalStore(tmp_path / "maintenance")
    journal = Journal.new(0.0, "crash test", ["web1"]).advance("preflight").advance("saving")
    journal = journal.guest("web1", "saving", save_started=time.time()).guest("web1", "saved", image="managed")
    store.create(journal.advance("rebooting"))
    out = resume_in_child(uri, store)
    assert out.stdout.strip() == "done", out.stderr
    assert store.load(journal.id).guests["web1"].attempts == 0  # found running: no restore attempted
    assert guests.boots(consoles / "web1.log") == 1


def test_a_restore_that_keeps_failing_cold_boots_and_keeps_the_image(embed_root: Path, tmp_path: Path) -> None:
    uri = guests.uri(embed_root)
    consoles = guests.start(embed_root, GUESTS[:1])
    save_dir = embed_root / "lib/qemu/save"
    code = ("import sys\nfrom hostagent.hypervisor.libvirt_backend import LibvirtHypervisor\n"
            "print(LibvirtHypervisor(sys.argv[1]).save('web1', ''))\n")
    saved = guests.embedded(code, uri, check=False)
    assert saved.stdout.strip() == "managed", saved.stderr
    image = save_dir / "web1.save"
    with image.open("r+b") as handle:  # the image is damaged: every restore fails for real
        handle.truncate(64 * 1024)
    store = JournalStore(tmp_path / "maintenance")
    journal = Journal.new(0.0, "cold boot test", ["web1"]).advance("preflight").advance("saving")
    journal = journal.guest("web1", "saving", save_started=time.time()).guest("web1", "saved", image="managed")
    store.create(journal.advance("rebooting"))
    out = resume_in_child(uri, store, save_dir=str(save_dir), restore_attempts=2, cold_boot_on_failure=True)
    record = store.load(journal.id).guests["web1"]
    assert out.stdout.strip() == "done", out.stderr
    assert (record.state, record.attempts) == ("cold_booted", 2)
    kept = save_dir / f"web1.kept-{journal.id}"
    assert kept.exists() and kept.stat().st_size == 64 * 1024  # flagged and kept, never silently discarded
    assert str(kept) in (record.error or "")
    wait_for("the guest to boot again", lambda: guests.boots(consoles / "web1.log") == 2, timeout=60)
