"""hostagent.maintenance.gate: which guest starts libvirt's hook refuses, from real journals, and the
role's hook script around it (issue #34, I1: refuse new starts where the hypervisor can)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jinja2
import pytest

from hostagent.maintenance import gate
from hostagent.maintenance.journal import Journal, JournalStore
from tests.helpers import REPO

BOOTED = 1_790_000_000.0
THIS_BOOT = "6a1f0e0e-0000-4000-8000-000000000001"


def journal(phase: str, at: float = BOOTED + 60, boot_id: str | None = None) -> Journal:
    planned = Journal("0123456789ab", at + 600, "kernel update\x1b[31m", history=(("planned", at - 600),))
    path = {"planned": [], "preflight": ["preflight"], "saving": ["preflight", "saving"],
            "rebooting": ["preflight", "saving", "rebooting"],
            "restoring": ["preflight", "saving", "rebooting", "restoring"],
            "done": ["preflight", "saving", "rebooting", "restoring", "done"], "cancelled": ["cancelled"]}[phase]
    for step in path:
        planned = planned.advance(step, now=at, **({"boot_id": boot_id} if step == "rebooting" else {}))
    return planned


@pytest.mark.parametrize("phase", ["planned", "preflight", "restoring", "done", "cancelled"])
def test_only_the_saves_and_the_reboot_refuse(phase: str) -> None:
    assert gate.verdict(journal(phase, boot_id=THIS_BOOT), THIS_BOOT, BOOTED) is None


def test_saving_in_this_boot_refuses_and_one_left_from_an_earlier_boot_does_not() -> None:
    said = gate.verdict(journal("saving"), THIS_BOOT, BOOTED)
    assert said is not None
    assert said.startswith("hostagent: maintenance 0123456789ab is saving this host (kernel update")
    assert "\x1b" not in said  # the journal's reason passes the terminal's boundary (libvirt prints it)
    assert gate.verdict(journal("saving", at=BOOTED - 5), THIS_BOOT, BOOTED) is None  # the host crashed meanwhile
    assert gate.verdict(journal("saving"), THIS_BOOT, None) is None  # no boot time: unknown lets it start


def test_rebooting_refuses_in_the_boot_the_reboot_command_ran_in_only() -> None:
    assert gate.verdict(journal("rebooting", boot_id=THIS_BOOT), THIS_BOOT, BOOTED) is not None
    # at boot, before the agent moves it to restoring: libvirt's autostart goes on
    assert gate.verdict(journal("rebooting", boot_id=THIS_BOOT), "another-boot", BOOTED) is None
    assert gate.verdict(journal("rebooting", boot_id=None), THIS_BOOT, BOOTED) is None
    assert gate.verdict(journal("rebooting", boot_id=THIS_BOOT), None, BOOTED) is None


def test_boot_time_is_read_from_proc_stat_and_range_checked() -> None:
    stat = "cpu  1 2 3\nintr 5\nctxt 9\nbtime 1790000000\nprocesses 4\n"
    assert gate.boot_time(stat) == BOOTED
    assert gate.boot_time(stat.replace("1790000000", "99999999999")) is None  # after 2100
    assert gate.boot_time(stat.replace("1790000000", "-1")) is None
    assert gate.boot_time(stat.replace("1790000000", "soon")) is None
    assert gate.boot_time("cpu 1\n") is None
    assert gate.boot_time(Path("/proc/stat").read_text()) is not None  # this kernel's own


def test_decide_reads_the_store_and_lets_every_other_operation_through(tmp_path: Path) -> None:
    store = JournalStore(tmp_path / "maintenance")
    now = time.time()
    store.create(journal("planned", at=now))
    assert gate.decide(tmp_path, "web1", "prepare", "begin") == (0, None)
    store.update("0123456789ab", lambda j: j.advance("preflight").advance("saving"))
    with store.worker("0123456789ab"):  # the worker holds its maintenance while it runs
        status, said = gate.decide(tmp_path, "web1", "prepare", "begin")
    assert status == gate.REFUSED and said is not None and said.endswith(": web1 refused"), said
    # second quick review: no worker runs it (it died; the daemon gave up): the start goes on, and says why
    status, said = gate.decide(tmp_path, "web1", "prepare", "begin")
    assert status == 0 and said is not None and "no worker runs it" in said, said
    for operation, sub in (("start", "begin"), ("started", "begin"), ("stopped", "end"), ("release", "end"),
                           ("prepare", "end"), ("reconnect", "begin")):
        assert gate.decide(tmp_path, "web1", operation, sub) == (0, None)
    (tmp_path / "maintenance/0123456789ab.json").write_text("{not json")  # what cannot be read lets the start through
    status, said = gate.decide(tmp_path, "web1", "prepare", "begin")
    assert status == 0 and said is not None and "unreadable" in said and "web1 may start" in said


def hook_script(tmp_path: Path, state_dir: str) -> Path:
    """The role's template, rendered for an install whose venv is this repository's."""
    install = tmp_path / "opt"
    install.mkdir()
    (install / "venv").symlink_to(Path(sys.executable).parent.parent)
    text = jinja2.Template((REPO / "ansible/roles/hostagent/templates/libvirt-hook.j2").read_text()).render(
        ansible_managed="test", hostagent_install_dir=str(install), hostagent_state_dir=state_dir)
    script = tmp_path / "hostagent-hook"
    script.write_text(text)
    script.chmod(0o755)
    return script


def test_the_roles_hook_script_refuses_with_exit_1_and_fails_open(tmp_path: Path) -> None:
    state = tmp_path / "state"
    script = hook_script(tmp_path, str(state))
    config = tmp_path / "hostagent.toml"
    config.write_text(f'[agent]\nstate_dir = "{state}"\n')
    env = {"PATH": os.environ["PATH"], "HOSTAGENT_CONFIG": str(config)}

    def hook(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(script), *args], input="<domain/>", capture_output=True, text=True, env=env,
                              timeout=60)

    store = JournalStore(state / "maintenance")
    store.create(journal("planned", at=time.time()))
    store.update("0123456789ab", lambda j: j.advance("preflight").advance("saving"))
    with store.worker("0123456789ab"):
        refused = hook("web1", "prepare", "begin", "-")
    assert refused.returncode == 1 and "maintenance 0123456789ab is saving this host" in refused.stderr, refused
    assert '"event": "start_refused"' in (state / "audit.jsonl").read_text()
    assert hook("web1", "started", "begin", "-").returncode == 0  # never even reaches Python
    config.write_text("[agent\n")  # a broken configuration: the default state dir, and the start goes on
    broken = hook("web1", "prepare", "begin", "-")
    assert broken.returncode == 0 and "looking in /var/lib/hostagent" in broken.stderr, broken
    config.write_text(f'[agent]\nstate_dir = "{state}"\n')
    (tmp_path / "opt/venv").unlink()  # no Python at all, while saving: the start goes on
    assert hook("web1", "prepare", "begin", "-").returncode == 0
    store.update("0123456789ab", lambda j: j.advance("restoring"))
    # the common case needs no Python: no journal says saving or rebooting (there is none now to run)
    restoring = hook("web1", "prepare", "begin", "-")
    assert restoring.returncode == 0 and restoring.stderr == "", restoring


def test_the_workers_restore_beacon_lets_starts_through_and_goes_with_it(tmp_path: Path) -> None:
    store = JournalStore(tmp_path / "maintenance")
    planned = store.create(journal("planned", at=time.time()))
    store.update(planned.id, lambda j: j.advance("preflight").advance("saving"))
    worker = store.worker(planned.id)
    worker.__enter__()
    assert gate.decide(tmp_path, "web1", "prepare", "begin")[0] == gate.REFUSED
    with gate.restoring(planned.id):
        assert gate.restore_under_way(planned.id)
        assert gate.decide(tmp_path, "web1", "prepare", "begin") == (0, None)
        with gate.restoring(planned.id):  # a second one cannot raise it: nothing else changes
            assert gate.restore_under_way(planned.id)
        assert not gate.restore_under_way("ffffffffffff")  # another maintenance's is not ours
    assert not gate.restore_under_way(planned.id)
    assert gate.decide(tmp_path, "web1", "prepare", "begin")[0] == gate.REFUSED
    worker.__exit__(None, None, None)


def test_a_beacon_held_by_another_user_lets_nothing_through(tmp_path: Path) -> None:
    """Second quick review: an abstract socket has no file permissions, so any local user could bind the
    beacon's name; only one held by root counts."""
    store = JournalStore(tmp_path / "maintenance")
    planned = store.create(journal("planned", at=time.time()))
    store.update(planned.id, lambda j: j.advance("preflight").advance("saving"))
    name = gate.beacon(planned.id)
    code = (f"import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.bind({name!r})\ns.listen(8)\n"
            "print('up', flush=True)\ntime.sleep(60)\n")  # killed below; the minute bounds a test that dies first
    spoof = subprocess.Popen(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable,
                              "-I", "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert spoof.stdout is not None and spoof.stdout.readline().strip() == "up"
        assert not gate.restore_under_way(planned.id)
        with store.worker(planned.id):
            assert gate.decide(tmp_path, "web1", "prepare", "begin")[0] == gate.REFUSED
    finally:
        spoof.kill()
        spoof.wait(timeout=30)


def test_saving_is_of_the_boot_the_saves_began_in_whatever_the_clock_says() -> None:
    """Second review, finding 7: a journal left in saving by a boot that crashed refused starts in the next
    boot when that boot's clock was behind (btime before the recorded save time).  The journal now keeps
    the boot id the saves began in, and the clock decides only for a journal without it."""
    left = journal("saving").advance("restoring")  # to set boot_id on a copy of the saving journal
    saving = Journal(left.id, left.reboot_at, left.reason, "saving", left.created,
                     tuple(h for h in left.history if h[0] != "restoring"), boot_id=THIS_BOOT)
    assert gate.verdict(saving, THIS_BOOT, BOOTED) is not None
    clock_behind = BOOTED - 5 * 3600  # this boot's btime, five hours before the recorded save time
    assert gate.verdict(saving, "the-next-boot", clock_behind) is None
    assert gate.verdict(saving, None, BOOTED) is None  # unknown: the start goes on


def test_the_host_going_down_after_the_reboot_command_refuses_with_no_worker(tmp_path: Path) -> None:
    """Third review, finding 4 (I1): the worker exits once the reboot command returns, and ``systemctl
    reboot`` only queues the shutdown: with the refusal tied to a worker holding the maintenance, every
    start went through while the host went down, and the guest went down with it, unsaved.  Within
    reboot_wait of the command, a journal rebooting in this boot refuses without a worker; after it (the
    host did not go down: the daemon restores), or with a clock that cannot place the command, it does not."""
    this_boot = Path(gate.BOOT_ID).read_text().strip()
    now = time.time()
    store = JournalStore(tmp_path / "maintenance")
    store.create(journal("rebooting", at=now - 30, boot_id=this_boot))
    assert gate.decide(tmp_path, "web1", "prepare", "begin")[0] == 0  # no reboot command recorded yet
    for issued, wait, refused in ((now - 10, 900.0, True), (now - 10, 5.0, False), (now - 1000, 900.0, False),
                                  (now + 600, 900.0, False)):
        store.update("0123456789ab", lambda j, at=issued: dataclasses.replace(j, reboot_issued=at))
        status, said = gate.decide(tmp_path, "web1", "prepare", "begin", reboot_wait=wait)
        assert (status == gate.REFUSED) == refused, (issued - now, wait, said)
        assert said is not None and (said.endswith(": web1 refused") if refused else "no worker runs it" in said)


def test_going_down_is_the_reboot_commands_window_only() -> None:
    rebooting = dataclasses.replace(journal("rebooting", boot_id=THIS_BOOT), reboot_issued=BOOTED + 100)
    assert gate.going_down(rebooting, BOOTED + 100, 900)
    assert gate.going_down(rebooting, BOOTED + 1000, 900)
    assert not gate.going_down(rebooting, BOOTED + 1001, 900)
    assert not gate.going_down(rebooting, BOOTED + 99, 900)  # the clock went back: not placed
    assert not gate.going_down(dataclasses.replace(rebooting, reboot_issued=None), BOOTED + 100, 900)
    saving = dataclasses.replace(journal("saving"), reboot_issued=BOOTED + 100)
    assert not gate.going_down(saving, BOOTED + 100, 900)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mkfs.btrfs"),
                    reason="needs root and btrfs-progs (make deps installs it; CI runs as root)")
@pytest.mark.parametrize("where", ["top", "subvolume"])
def test_a_worker_holding_its_maintenance_is_seen_on_btrfs(tmp_path: Path, where: str) -> None:
    """Third review, finding 5 (I1): /proc/locks names the superblock's device, and btrfs gives each
    subvolume (the top level too) an anonymous st_dev of its own: the held worker lock was never seen, so
    the hook never refused where /var/lib is on btrfs.  The device is now also read through the lock
    file's own mount (/proc/self/fdinfo's mnt_id, then /proc/self/mountinfo)."""
    subprocess.run(["modprobe", "btrfs"], capture_output=True)
    if "btrfs" not in Path("/proc/filesystems").read_text():
        pytest.skip("this kernel has no btrfs (its module is not available)")
    image, mount = tmp_path / "btrfs.img", tmp_path / "mnt"
    with image.open("wb") as handle:
        handle.truncate(160 << 20)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    mount.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True, capture_output=True)
    try:
        state = mount
        if where == "subvolume":
            subprocess.run(["btrfs", "subvolume", "create", str(mount / "var")], check=True, capture_output=True)
            state = mount / "var"
        store = JournalStore(state / "maintenance")
        store.create(journal("saving", at=time.time(), boot_id=Path(gate.BOOT_ID).read_text().strip()))
        assert gate.worker_holds(store, "0123456789ab") is False
        with store.worker("0123456789ab"):
            assert gate.worker_holds(store, "0123456789ab") is True
            assert gate.decide(state, "web1", "prepare", "begin")[0] == gate.REFUSED
        assert gate.worker_holds(store, "0123456789ab") is False
    finally:
        subprocess.run(["umount", str(mount)], check=True, capture_output=True)
