"""Dead and crawling members on the kernel's real SCSI stack, ended by ``hostagent watch`` at
its default settings, with no data lost.

The SCSI disk is the kernel's own ``scsi_debug``: a real sd disk behind the real SCSI
mid-layer and error handler, with no emulator in the way.
- dead: every command is dropped (``opts=4 every_nth=1``), so the command timer, the error
  handler's abort and retry, and ``device/state`` = offline and ``device/delete`` run for real;
- crawling: a dm-delay over the SCSI disk answers every I/O correctly after 20 s, under the
  SCSI command timeout, so the kernel never sees an error.
The ladder's other device steps run here on real devices too: ``device/delete`` of an sd disk,
and an NVMe controller's reset and its PCI function's removal (QEMU's NVMe cannot be hung for
them: docs/hung-disks.md).
Times are measured by ``make bench-hung`` (docs/benchmarks.md); here only the outcome counts.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.vm.conftest import MdHelper, md_session
from tests.vm.harness import VM
from tests.vm.test_md_scenarios import wait_for

DEADLINE = 180  # a generous bound for a noisy TCG guest; the kernel alone needs about 184 s on a dead disk
SCSI_DEBUG = "/sys/bus/pseudo/drivers/scsi_debug"
CRAWL_MS = 20000


@pytest.fixture(scope="module")
def scsi_vm() -> Iterator[VM]:
    machine = VM(disks=2)
    try:
        yield machine
    finally:
        machine.close()


@contextlib.contextmanager
def scsi_debug_disk(vm: VM) -> Iterator[str]:
    """A fresh 64 MiB scsi_debug disk; its name (sda: the VM has no other SCSI disk).  On the
    way out the disk answers again and every dm-delay drops its delay, and the writes still
    crawling are waited for, so that the arrays and the module can go."""
    vm.run("if grep -q '^scsi_debug ' /proc/modules; then rmmod scsi_debug; fi; "
           "insmod /lib/modules/scsi_debug.ko dev_size_mb=64")
    try:
        yield scsi_debug_name(vm)
    finally:
        vm.run(f"echo 0 > {SCSI_DEBUG}/every_nth; echo 0 > {SCSI_DEBUG}/opts; "
               "for m in $(dmsetup ls --target delay 2>/dev/null | grep -v 'No devices' | cut -f1); do "
               "t=$(dmsetup table $m | sed 's/ [0-9]*$/ 0/'); dmsetup load $m --table \"$t\" && dmsetup resume $m; "
               "done; n=0; while ps | grep -q '[d]d if=' && [ $n -lt 600 ]; do sleep 0.2; n=$((n+1)); done",
               check=False, timeout=180)


def scsi_debug_name(vm: VM) -> str:
    vm.run(f"until ls {SCSI_DEBUG}/adapter0/host*/target*/*/block/ >/dev/null 2>&1; do sleep 0.1; done", timeout=60)
    return vm.run(f"ls {SCSI_DEBUG}/adapter0/host*/target*/*/block/").stdout.split()[0]


def start_watch(md: MdHelper) -> None:
    """``hostagent watch`` with no configuration file: every setting at its default."""
    md.vm.run("rm -f /etc/hostagent/hostagent.toml; python3 -m hostagent watch --state-dir /tmp/state "
              ">/dev/null 2>/tmp/watch.err & echo $! > /tmp/agent.pid")
    wait_for(lambda: md.done("/tmp/state/status.json"), "the daemon's first cycle", 120)


def write_file(md: MdHelper, source: str, offset_kib: int, background: str | None = None) -> None:
    """Write /tmp/<source> to md0 at ``offset_kib``, direct and synced; in the background, the
    uptime at which the write returned goes to ``background``."""
    dd = f"dd if=/tmp/{source} of=/dev/md0 bs=4k seek={offset_kib // 4} oflag=direct conv=fsync,notrunc 2>/dev/null"
    if background:
        md.vm.run(f"({dd}; cat /proc/uptime > {background}) >/dev/null 2>&1 &")
    else:
        md.vm.run(dd)


def random_files(md: MdHelper, **sizes_kib: int) -> None:
    for name, kib in sizes_kib.items():
        md.vm.run(f"dd if=/dev/urandom of=/tmp/{name} bs=4k count={kib // 4} 2>/dev/null")


def assert_no_data_lost(md: MdHelper, regions: dict[str, int]) -> None:
    """Each file reads back from md0 where it was written, and a full check finds no mismatch."""
    for name, offset_kib in regions.items():
        sums = md.vm.run(f"size=$(stat -c %s /tmp/{name}); sha256sum < /tmp/{name} | cut -d' ' -f1; "
                         f"dd if=/dev/md0 bs=4k skip={offset_kib // 4} count=$((size / 4096)) iflag=direct 2>/dev/null "
                         "| sha256sum | cut -d' ' -f1").stdout.split()
        assert sums[0] == sums[1], f"/tmp/{name} at {offset_kib} KiB differs"
    md.vm.run("echo check > /sys/block/md0/md/sync_action")
    wait_for(lambda: md.vm.run("cat /sys/block/md0/md/sync_action").stdout.strip() == "idle", "the check", DEADLINE)
    assert md.vm.run("cat /sys/block/md0/md/mismatch_cnt").stdout.strip() == "0"


def audit_steps(md: MdHelper) -> dict[tuple[str, ...], dict[str, Any]]:
    return {tuple(a["argv"]): a for a in md.audit() if a["event"] == "done"}


def forced_out(md: MdHelper) -> list[str]:
    """The daemon's log lines about forcing a member out (the finding itself is gone from the
    report once the member is failed: a faulty member is no longer watched)."""
    return [line for line in md.vm.run("cat /tmp/watch.err").stdout.splitlines() if "forcing it out" in line]


def wait_for_resync(md: MdHelper) -> None:
    wait_for(lambda: "[UU]" in md.mdstat() and "recovery" not in md.mdstat(), "the resync to finish", DEADLINE)


def test_dead_scsi_member_is_taken_offline_before_its_first_command_timeout(scsi_vm: VM) -> None:
    with md_session(scsi_vm) as md, scsi_debug_disk(scsi_vm) as sd:
        md.vm.run("mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 --assume-clean "
                  f"--bitmap=internal /dev/vda /dev/{sd}")
        random_files(md, a=512, c=4, b=512)
        write_file(md, "a", 0)
        start_watch(md)
        md.vm.run(f"echo 4 > {SCSI_DEBUG}/opts; echo 1 > {SCSI_DEBUG}/every_nth")  # no command is ever answered
        write_file(md, "c", 1024, background="/tmp/w1")
        wait_for(lambda: md.done("/tmp/w1"), "the blocked write to return", DEADLINE)
        [line] = forced_out(md)
        assert f"md0/{sd}: forcing it out: {sd} in md0 is hung: no I/O has completed for 2" in line
        steps = audit_steps(md)
        assert steps[("mdadm", "--manage", "/dev/md0", "--fail", f"/dev/{sd}")]["returncode"] == 0
        assert steps[("sysfs-write", f"/sys/block/{sd}/device/state", "offline")]["returncode"] == 0
        # offline before the dropped command's timeout: the midlayer failed it at that timeout
        # instead of retrying it, so device/delete (which waits for the command) was not needed
        assert "rejecting I/O to offline device" in md.vm.run("dmesg").stdout, md.vm.run(
            "cat /tmp/watch.err; cat /tmp/state/audit.jsonl; dmesg | tail -12").stdout
        wait_for(lambda: "was not needed" in md.vm.run("cat /tmp/watch.err").stdout, "the ladder to end", DEADLINE)
        assert not [argv for argv in audit_steps(md) if argv[1].endswith("/device/delete")]
        assert md.vm.run(f"cat /sys/block/{sd}/device/state").stdout.strip() == "offline"
        write_file(md, "b", 2048)  # the degraded period
        md.vm.run("kill $(cat /tmp/agent.pid)")
        md.vm.run(f"echo 0 > {SCSI_DEBUG}/every_nth; echo 0 > {SCSI_DEBUG}/opts; "
                  f"echo running > /sys/block/{sd}/device/state")
        md.vm.run(f"mdadm --manage /dev/md0 --remove failed 2>/dev/null; mdadm --manage /dev/md0 --re-add /dev/{sd} "
                  f"|| mdadm --manage /dev/md0 --add /dev/{sd}")
        wait_for_resync(md)
        assert_no_data_lost(md, {"a": 0, "c": 1024, "b": 2048})


def test_crawling_member_is_failed_though_every_io_completes(scsi_vm: VM) -> None:
    with md_session(scsi_vm) as md, scsi_debug_disk(scsi_vm) as sd:
        table = f"0 $(blockdev --getsz /dev/{sd}) delay /dev/{sd} 0"
        md.vm.run(f'dmsetup create crawl --table "{table} 0"')
        md.vm.run("mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 --assume-clean "
                  "--bitmap=internal /dev/vda /dev/mapper/crawl")
        member = md.kernel_name("/dev/mapper/crawl")
        random_files(md, a=512, c=4, b=512)
        write_file(md, "a", 0)
        start_watch(md)
        md.vm.run(f'dmsetup suspend crawl && dmsetup load crawl --table "{table} {CRAWL_MS}" && dmsetup resume crawl')
        write_file(md, "c", 1024, background="/tmp/w1")
        wait_for(lambda: md.done("/tmp/w1"), "the crawling write to return", DEADLINE)
        [line] = forced_out(md)
        # 20 s of dm-delay, plus what the I/O waited for behind the one before it
        assert re.search(f"md0/{member}: forcing it out: {member} in md0 is hung: each I/O takes 2[0-9] s for 2[0-9] s",
                         line), line
        steps = audit_steps(md)
        assert steps[("mdadm", "--manage", "/dev/md0", "--fail", f"/dev/{member}")]["returncode"] == 0
        assert steps[("dmsetup", "resume", "crawl")]["returncode"] == 0
        write_file(md, "b", 2048)
        md.vm.run("kill $(cat /tmp/agent.pid)")
        md.vm.run(f'dmsetup load crawl --table "{table} 0" && dmsetup resume crawl')
        md.vm.run(f"mdadm --manage /dev/md0 --remove failed 2>/dev/null; mdadm --manage /dev/md0 --re-add /dev/{member}"
                  f" || mdadm --manage /dev/md0 --add /dev/{member}")
        wait_for_resync(md)
        assert_no_data_lost(md, {"a": 0, "c": 1024, "b": 2048})


LAYER_STEPS = """
import json, sys
from hostagent.actions import AuditLog, Step, perform
from hostagent.actions.hung import ACTION, device_layer
from hostagent.host import Host
from hostagent.inventory import read_arrays
host, device, which = Host("/"), sys.argv[1], sys.argv[2]
layer = device_layer(host, device, read_arrays(host))
argvs = layer.fallback if which == "fallback" else layer.all_steps
steps = [Step(ACTION, device, "the device layer of the ladder", argv) for argv in argvs]
outcomes = perform(host, steps, apply=True, audit=AuditLog(None), timeout=30)
print(json.dumps({"steps": [list(s.argv) for s in steps], "returncodes": [o.returncode for o in outcomes]}))
"""


def run_layer_steps(vm: VM, device: str, which: str) -> dict[str, Any]:
    """Run the device layer's steps (``all``) or only its fallback through hostagent's own
    ``perform`` (a child process per step, with its timeout), as the ladder does."""
    done: dict[str, Any] = json.loads(vm.run(f"python3 -c '{LAYER_STEPS}' {device} {which}").stdout)
    return done


def test_scsi_device_delete_takes_a_failed_member_away(scsi_vm: VM) -> None:
    """The ladder's last SCSI step, run when offline alone did not end the held I/O: here on a
    failed member of a real sd disk, which goes away and leaves the array degraded, not stuck."""
    with md_session(scsi_vm) as md, scsi_debug_disk(scsi_vm) as sd:
        md.vm.run("mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 --assume-clean "
                  f"--bitmap=internal /dev/vda /dev/{sd} && mdadm --manage /dev/md0 --fail /dev/{sd}")
        done = run_layer_steps(md.vm, sd, "fallback")
        assert done == {"steps": [["sysfs-write", f"/sys/block/{sd}/device/delete", "1"]], "returncodes": [0]}
        wait_for(lambda: md.vm.run(f"test -e /sys/block/{sd}", check=False).rc != 0, f"{sd} to go away", 60)
        md.vm.run("mdadm --manage /dev/md0 --remove failed")
        assert "[2/1] [U_]" in md.mdstat()
        md.vm.run("dd if=/dev/urandom of=/dev/md0 bs=4k count=4 oflag=direct conv=fsync 2>/dev/null")


@pytest.fixture(scope="module")
def nvme_vm() -> Iterator[VM]:
    machine = VM(disks=1, nvme_disks=1)
    try:
        yield machine
    finally:
        machine.close()


def test_nvme_ladder_steps_work_on_a_real_pcie_controller(nvme_vm: VM) -> None:
    """QEMU's NVMe controller cannot be hung for the ladder (a reset with a held write froze
    the emulator, as AHCI's did; docs/hung-disks.md), but the steps themselves run here on the
    kernel's real nvme driver: a controller reset, then the PCI function's removal, which a
    PCIe controller needs because the kernel gives it no delete_controller."""
    vm = nvme_vm
    vm.run("mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 --assume-clean "
           "--bitmap=internal /dev/vda /dev/nvme0n1 && mdadm --manage /dev/md0 --fail /dev/nvme0n1")
    assert vm.run("test -e /sys/class/nvme/nvme0/delete_controller", check=False).rc != 0
    done = run_layer_steps(vm, "nvme0n1", "all")
    assert done["steps"] == [["sysfs-write", "/sys/class/nvme/nvme0/reset_controller", "1"],
                             ["sysfs-write", "/sys/class/nvme/nvme0/device/remove", "1"]]
    assert done["returncodes"] == [0, 0]
    wait_for(lambda: vm.run("test -e /sys/block/nvme0n1", check=False).rc != 0, "nvme0n1 to go away", 60)
    vm.run("mdadm --manage /dev/md0 --remove failed")
    assert "[2/1] [U_]" in vm.run("cat /proc/mdstat").stdout
