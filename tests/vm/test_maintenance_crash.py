"""A real ``hostagent watch`` killed with SIGKILL at every step of a maintenance, with real QEMU guests.

The daemon and its worker are killed from outside (as ``systemctl kill -s KILL`` would) when the
journal shows the step, or at a fault point that only tests turn on (``hostagent.maintenance.faults``),
then the daemon is started again.  Every run must end with every guest that ran before running
again, with the expected outcome; no guest may boot afresh (one boot mark on its console, an uptime
that only counts up) and none may be saved twice.  The same two guests live through every round.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from hostagent.maintenance import notices
from hostagent.maintenance.journal import Journal, JournalStore
from tests import guests
from tests.integration.test_alerts import sink_server
from tests.integration.test_cli import hostagent
from tests.vm.test_maintenance_guests import assert_never_rebooted

GUESTS = [("web1", 128, "alice@example.com"), ("db1", 128, "bob@example.com")]  # db1 runs QEMU's guest agent
Y2K = 946684800
NAMES = [name for name, _, _ in GUESTS]


@dataclass
class Site:
    root: Path
    consoles: Path
    smtp_port: int


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    root = Path(tempfile.mkdtemp(prefix="hc-", dir="/tmp"))  # short: QEMU's monitor sockets live under it
    guests.prepare_root(root)
    try:
        with sink_server() as (controller, _):
            yield Site(root, guests.start(root, GUESTS, agents=["db1"]), controller.port)
    finally:
        guests.destroy_all(root)
        shutil.rmtree(root, ignore_errors=True)


def wait_for(what: str, predicate: Callable[[], object], timeout: float, step: float = 0.05,
             dump: Callable[[], str] | None = None) -> None:
    """Poll until ``predicate`` holds; a timeout names what was awaited and adds ``dump()``: the state
    that explains it (the daemon's log, the journals, the guests' consoles)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            said = f"timed out after {timeout:g} s waiting for {what}"
            if dump is not None:
                try:
                    said += "\n" + dump()
                except Exception as error:  # the dump must not hide the timeout
                    said += f"\n(no state: {error!r})"
            raise AssertionError(said)
        time.sleep(step)


def tail(path: Path, size: int = 2500) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read().decode(errors="replace")
    except OSError as error:
        return f"({error})"


class Agent:
    """One host's agent: a daemon that can be killed (with its worker) and started again."""

    def __init__(self, site: Site, directory: Path, hook: Path | None = None) -> None:
        self.state, self.pidfile, self.log = directory / "state", directory / "daemon.pid", directory / "daemon.log"
        self.pauses = directory / "pauses"
        self.pauses.mkdir()
        self.config = directory / "hostagent.toml"
        self.daemon = [sys.executable, "-m", "hostagent", "--config", str(self.config), "watch", "--state-dir",
                       str(self.state)]
        reboot = [sys.executable, "-m", "tests.fake_reboot", *(["--hook", str(hook)] if hook else []),
                  str(self.pidfile), str(self.log), "--", *self.daemon]
        self.config.write_text(
            f'[maintenance]\nuri = "{guests.uri(site.root)}"\nsave_dir = "{site.root}/lib/qemu/save"\n'
            f"reboot_command = {json.dumps(reboot)}\nnotice_lead_times = [3600.0]\nmin_notice_lead = 0\n"
            f'[alerts.smtp]\nhost = "127.0.0.1"\nport = {site.smtp_port}\n'
            '[[alerts.routes]]\nto = ["ops@example.com"]\n[checks.smart]\nenabled = false\n')
        self.store = JournalStore(self.state / "maintenance")
        self.started: list[int] = []

    def start(self, pause: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTAGENT_TEST_PAUSE")}
        if pause:
            env.update(HOSTAGENT_TEST_PAUSE=pause, HOSTAGENT_TEST_PAUSE_DIR=str(self.pauses))
        with self.log.open("ab") as out:
            process = subprocess.Popen(self.daemon, stdout=out, stderr=out, cwd=guests.REPO, env=env,
                                       start_new_session=True)
        self.pidfile.write_text(f"{process.pid}\n")
        self.started.append(process.pid)

    def workers(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info["cmdline"] or []
            if "hostagent.maintenance.worker" in cmdline and str(self.state) in cmdline:
                found.append(process)
        return found

    def kill(self) -> None:
        """SIGKILL the daemon and its worker, not the guests' QEMU processes (they outlive both)."""
        victims = [psutil.Process(int(self.pidfile.read_text())), *self.workers()]
        for victim in victims:
            with contextlib.suppress(psutil.NoSuchProcess):  # a restore worker that finished meanwhile
                victim.send_signal(signal.SIGKILL)
        psutil.wait_procs(victims, timeout=30)

    def stop(self) -> None:
        for pid in set(self.started) | {int(self.pidfile.read_text())}:
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGTERM)
        wait_for("the daemons to stop", lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() !=
                                                       psutil.STATUS_ZOMBIE for p in self.started), 60, 0.2)

    def schedule(self, ahead: float) -> Journal:
        at = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ahead)).isoformat()
        scheduled = hostagent("--config", str(self.config), "maintenance", "--reboot-at", at, "--notify-owners",
                              "--reason", "crash test", "--json", "--state-dir", str(self.state))
        assert scheduled.returncode == 0, scheduled.stderr
        return self.store.load(json.loads(scheduled.stdout)["id"])

    def journal(self, journal_id: str) -> Journal:
        return self.store.load(journal_id)

    def state_of(self, consoles: Path | None = None) -> str:
        """What a failed wait needs: the daemon's log, the journals and the guests' consoles (tails)."""
        said = [f"--- the daemon's log {self.log}:", tail(self.log)]
        for path in sorted((self.state / "maintenance").glob("*.json")):
            said += [f"--- journal {path.name}:", tail(path, 2000)]
        if consoles is not None:
            for name in NAMES:
                said += [f"--- {name}'s console:", tail(consoles / f"{name}.log", 400)]
        return "\n".join(said)

    def finish(self, journal_id: str, consoles: Path, timeout: float = 300) -> Journal:
        """Wait for the maintenance to end and every guest of the module to print twice more."""
        wait_for("the maintenance to end", lambda: self.journal(journal_id).final, timeout=timeout, step=0.5,
                 dump=lambda: self.state_of(consoles))
        samples = {name: len(guests.uptimes(consoles / f"{name}.log")) for name in NAMES}
        wait_for("every guest to print after the maintenance", lambda: all(
            len(guests.uptimes(consoles / f"{n}.log")) >= samples[n] + 2 for n in NAMES), 60, 0.5,
            dump=lambda: self.state_of(consoles))
        return self.journal(journal_id)

    def paused(self, point: str) -> bool:
        return (self.pauses / point).exists()

    def audit(self) -> list[dict[str, object]]:
        path = self.state / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def guest_in(agent: Agent, journal_id: str, state: str, attempts: int = 0) -> Callable[[], bool]:
    def check() -> bool:
        try:
            records = agent.journal(journal_id).guests.values()
        except Exception:
            return False
        return any(g.state == state and g.attempts >= attempts for g in records)
    return check


# crash point -> (pause point or None, when to kill, expected final phase, outcomes allowed per guest)
CRASHES: dict[str, tuple[str | None, Callable[[Agent, str], Callable[[], object]], str, set[str | None]]] = {
    "after-notices": ("notices-sent", lambda a, j: lambda: a.paused("notices-sent"), "done", {"restored"}),
    "preflight": ("preflight", lambda a, j: lambda: a.paused("preflight"), "failed", {None}),
    "during-save": (None, lambda a, j: guest_in(a, j, "saving"), "failed", {"restored", None}),
    "before-reboot": ("before-reboot", lambda a, j: lambda: a.paused("before-reboot"), "failed", {"restored"}),
    "before-restore": ("before-restore", lambda a, j: lambda: a.paused("before-restore"), "done", {"restored"}),
    "during-restore": (None, lambda a, j: guest_in(a, j, "restoring", attempts=1), "done", {"restored"}),
}


@pytest.mark.parametrize("crash", list(CRASHES))
def test_a_daemon_killed_at_each_step_ends_with_every_guest_running(site: Site, tmp_path: Path, crash: str) -> None:
    pause, when, phase, outcomes = CRASHES[crash]
    agent = Agent(site, tmp_path)
    agent.start(pause)
    try:
        journal = agent.schedule(ahead=25)
        wait_for(f"the {crash} step", when(agent, journal.id), timeout=240,
                 dump=lambda: agent.state_of(site.consoles))
        agent.kill()
        agent.start()
        final = agent.finish(journal.id, site.consoles)
    finally:
        agent.stop()
    log = agent.log.read_text()
    assert final.phase == phase, f"{final.error}\n{log[-3000:]}"
    for name in NAMES:
        record = final.guests[name]
        assert record.outcome in outcomes, f"{name}: {record}\n{log[-3000:]}"
        assert_never_rebooted(site.consoles / f"{name}.log")  # across every round so far
    saves = [(e["subject"]) for e in agent.audit() if e.get("action") == "guest" and e.get("state") == "saving"]
    assert sorted(saves) == sorted(set(saves)), f"a guest was saved twice: {saves}"
    if crash == "before-reboot":
        assert "before the reboot command ran: not rebooted" in (final.error or "")
    if crash in ("after-notices", "before-restore", "during-restore"):
        assert [p for p, _ in final.history][-3:] == ["rebooting", "restoring", "done"]


LIBVIRT_GUESTS = Path("/usr/lib/libvirt/libvirt-guests.sh")  # Debian's own (libvirt-daemon-system)


def skew_clock(site: Site, name: str, epoch: int) -> None:
    """Set the guest's system clock (not its RTC) through its guest agent's guest-exec."""
    code = ("import sys, json, time, libvirt, libvirt_qemu\nfrom hostagent.hypervisor.libvirt_backend import "
            "LibvirtHypervisor\nd = LibvirtHypervisor(sys.argv[1])._domain(sys.argv[2])\n"
            "command = json.dumps({'execute': 'guest-exec', 'arguments': {'path': '/bin/busybox', "
            "'arg': ['date', '-s', '@' + sys.argv[3]]}})\ndeadline = time.monotonic() + 60\nwhile True:\n"
            "    try:\n        print(libvirt_qemu.qemuAgentCommand(d, command, 30, 0))\n        break\n"
            "    except libvirt.libvirtError:\n        if time.monotonic() > deadline:\n            raise\n"
            "        time.sleep(0.5)\n")
    guests.embedded(code, guests.uri(site.root), name, str(epoch))


def set_autostart(site: Site, name: str, on: bool) -> None:
    code = ("import sys\nfrom hostagent.hypervisor.libvirt_backend import LibvirtHypervisor\n"
            "LibvirtHypervisor(sys.argv[1])._domain(sys.argv[2]).setAutostart(int(sys.argv[3]))\n")
    guests.embedded(code, guests.uri(site.root), name, str(int(on)))


def test_with_libvirt_guests_on_boot_start_and_autostart_every_guest_is_restored_once(site: Site,
                                                                                     tmp_path: Path) -> None:
    """The fake reboot runs Debian's real libvirt-guests script (ON_BOOT=start, ON_SHUTDOWN=suspend) at
    shutdown and at boot, and clears libvirt's autostart mark as a boot clears /run: libvirt then
    restores web1 (autostart on) from its managed save image by itself when the restore worker opens
    the driver.  hostagent restores the rest, and records who brought each guest back."""
    etc, var = tmp_path / "etc", tmp_path / "var"
    (etc / "default").mkdir(parents=True)
    (var / "lib/libvirt").mkdir(parents=True)
    (var / "lock").mkdir(parents=True)
    (etc / "default/libvirt-guests").write_text(f'URIS="{guests.uri(site.root)}"\nON_BOOT=start\n'
                                                "ON_SHUTDOWN=suspend\nSYNC_TIME=1\n")
    script = tmp_path / "libvirt-guests.sh"
    script.write_text(LIBVIRT_GUESTS.read_text().replace('sysconfdir="/etc"', f'sysconfdir="{etc}"')
                      .replace('localstatedir="/var"', f'localstatedir="{var}"'))
    script.chmod(0o755)
    hook = tmp_path / "hook"
    hook.write_text(f"#!/bin/sh\ncase \"$1\" in\nshutdown) {script} stop ;;\n"
                    f"boot) rm -f {site.root}/run/qemu/autostarted; {script} start ;;\nesac\n")
    hook.chmod(0o755)
    set_autostart(site, "web1", True)
    skew_clock(site, "db1", Y2K)  # a clock far behind, as a restored guest's is behind by its downtime
    wait_for("db1's clock to be wrong", lambda: Y2K <= (guests.clocks(site.consoles / "db1.log") or [0])[-1]
             < Y2K + 3600, 30, 0.5)
    agent = Agent(site, tmp_path, hook)
    agent.start()
    try:
        journal = agent.schedule(ahead=20)
        final = agent.finish(journal.id, site.consoles)
    finally:
        agent.stop()
        set_autostart(site, "web1", False)
    log = agent.log.read_text()
    assert final.phase == "done", f"{final.error}\n{log[-3000:]}"
    assert "Running guests on" in log and "hook boot" in log  # the real script ran at shutdown, the hook at boot
    web1, db1 = final.guests["web1"], final.guests["db1"]
    assert (web1.outcome, web1.restored_by, web1.attempts) == ("restored", "libvirt autostart", 0), web1
    assert (db1.outcome, db1.restored_by, db1.attempts) == ("restored", "hostagent", 1), db1
    for name in NAMES:
        assert_never_rebooted(site.consoles / f"{name}.log")
    report = notices.report(final, "hv1")[1]
    assert "restored by libvirt autostart" in report
    assert db1.clock == "set", db1  # through its guest agent (hwclock -s from the emulated RTC)
    wait_for("db1's clock to be right again", lambda: abs(guests.clocks(site.consoles / "db1.log")[-1] - time.time())
             < 30, 30, 0.5)
    assert (web1.clock or "").startswith("not set: ") and "guest agent is not configured" in (web1.clock or "")
    assert report.count("clock not set: ") == 1  # the report names the guest whose clock could not be set


def run_in_child(site: Site, code: str, *args: str) -> None:
    """Act on the embed root from a child process (one process may hold it at a time)."""
    guests.embedded("import sys\nfrom hostagent.hypervisor.libvirt_backend import LibvirtHypervisor\n"
                    f"h = LibvirtHypervisor(sys.argv[1])\n{code}\n", guests.uri(site.root), *args)


# A fresh embedded driver reconnects to the running QEMUs in the background: until it has, a destroy
# can answer "domain is not running".  Retried until the guest is really down.
def stop_code(name: str, undefine: bool = False) -> str:
    return f"""import time, libvirt
deadline = time.monotonic() + 30
while h._domain({name!r}).isActive():
    try:
        h._domain({name!r}).destroy()
    except libvirt.libvirtError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
{f"h._domain({name!r}).undefineFlags(1)" if undefine else ""}
"""


def test_the_guests_are_those_running_at_the_scheduled_time(site: Site, tmp_path: Path) -> None:
    """gone1 runs when the maintenance is scheduled and is stopped by its owner before it; late1 is
    started after scheduling.  late1 is saved and restored, gone1 stays stopped."""
    guests.start(site.root, [("gone1", 128, None)])
    agent = Agent(site, tmp_path)
    agent.start()
    try:
        journal = agent.schedule(ahead=60)  # time for late1 to boot before the maintenance starts
        assert sorted(journal.guests) == ["db1", "gone1", "web1"]
        guests.start(site.root, [("late1", 128, None)])
        run_in_child(site, stop_code('gone1'))
        assert agent.journal(journal.id).phase == "planned"
        wait_for("the maintenance to end", lambda: agent.journal(journal.id).final, timeout=300, step=0.5,
                 dump=lambda: agent.state_of(site.consoles))
        final = agent.journal(journal.id)
        printed = len(guests.uptimes(site.consoles / "late1.log"))
        wait_for("late1 to print after the maintenance",
                 lambda: len(guests.uptimes(site.consoles / "late1.log")) >= printed + 2, 60, 0.5)
    finally:
        agent.stop()
    try:
        assert final.phase == "done", f"{final.error}\n{agent.log.read_text()[-3000:]}"
        late, gone = final.guests["late1"], final.guests["gone1"]
        assert (late.added, late.outcome, late.image) == (True, "restored", "managed"), late
        assert (gone.state, gone.outcome) == ("stopped", "left_stopped"), gone
        report = notices.report(final, "hv1")[1]
        assert "added at run time" in report and "stopped before the maintenance" in report
        for name in ("late1", *NAMES):
            assert_never_rebooted(site.consoles / f"{name}.log")
        assert guests.boots(site.consoles / "gone1.log") == 1  # never started again after the reboot
        run_in_child(site, "assert not h.is_running('gone1'), 'gone1 runs again'")
    finally:
        for name in ("late1", "gone1"):
            run_in_child(site, stop_code(name, undefine=True))


def test_a_hypervisor_unreachable_at_the_scheduled_time_means_no_reboot(site: Site, tmp_path: Path) -> None:
    """Another process holds the embedded driver at the scheduled time, so the worker cannot list the
    guests: no save and no reboot, whatever --force said when it was scheduled."""
    agent = Agent(site, tmp_path)
    agent.start()
    holder = None
    try:
        at = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20)).isoformat()
        scheduled = hostagent("--config", str(agent.config), "maintenance", "--reboot-at", at, "--force",
                              "--json", "--state-dir", str(agent.state))
        assert scheduled.returncode == 0, scheduled.stderr
        journal_id = json.loads(scheduled.stdout)["id"]
        # the holder keeps the embedded driver until the test kills it (its sleep is only an upper bound)
        holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom hostagent.hypervisor.libvirt_backend "
                                   "import LibvirtHypervisor\nh = LibvirtHypervisor(sys.argv[1])\nprint('held', "
                                   "flush=True)\ntime.sleep(600)\n", guests.uri(site.root)], cwd=guests.REPO,
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        first = int(agent.pidfile.read_text())
        wait_for("the maintenance to end", lambda: agent.journal(journal_id).final, timeout=180, step=0.5,
                 dump=lambda: agent.state_of(site.consoles))
        final = agent.journal(journal_id)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait(30)
        agent.stop()
    assert final.phase == "failed" and "cannot see the guests" in (final.error or ""), final
    assert "rebooting" not in [p for p, _ in final.history] and int(agent.pidfile.read_text()) == first
    assert all(g.state == "planned" and g.save_started is None for g in final.guests.values())
    for name in NAMES:
        assert_never_rebooted(site.consoles / f"{name}.log")


def test_a_guest_started_during_the_saves_is_saved_and_restored(site: Site, tmp_path: Path) -> None:
    """Issue #34, I1 on real QEMU guests: late2 is started while web1 is being saved; the final listing
    before the reboot finds it, saves it, and it is restored afterwards, never rebooted."""
    done = subprocess.run([sys.executable, "-m", "tests.vm.started_during_saves", str(site.root),
                           str(tmp_path / "state"), "late2"], cwd=guests.REPO, capture_output=True, text=True,
                          timeout=600)
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        outcome = json.loads(done.stdout.splitlines()[-1])
        final = Journal.from_json(outcome["journal"])
        assert outcome["at_reboot"] == [[]], outcome["at_reboot"]  # nothing ran when the reboot command ran
        assert final.phase == "done", final
        late = final.guests["late2"]
        assert (late.added, late.outcome, late.image) == (True, "restored", "managed"), late
        assert all(final.guests[name].outcome == "restored" for name in NAMES), final
        printed = len(guests.uptimes(site.consoles / "late2.log"))
        wait_for("late2 to print after its restore", lambda: len(guests.uptimes(site.consoles / "late2.log"))
                 >= printed + 2, 60, 0.5)
        for name in ("late2", *NAMES):
            assert_never_rebooted(site.consoles / f"{name}.log")
    finally:
        run_in_child(site, stop_code("late2", undefine=True))
