"""``hostagent disk replace`` end to end in a VM: real kernel, real mdadm, real GRUB.

Disks behind virtio-scsi: sda and sdb hold /boot (md0) and / (md1), GRUB on both; sdc is the
blank replacement, sdd a smaller one, sde one that holds a filesystem; dm ``error`` and ``flakey``
devices are the dead-on-arrival ones.  sdb dies: QEMU remaps it to an error table
(``VM.error_table``), so every I/O to it fails with EIO, and md fails its members on the next
writes.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.vm.harness import VM, boot_from_disk, serial_menu

pytestmark = pytest.mark.vm

MENU = "hostagent replaced disk boot test"
LAYOUT = "label: dos\nstart=2048, size=20MiB, type=fd\nstart=43008, type=fd\n"
GRUB_CFG = serial_menu(MENU)
STATE = "/tmp/replace-state"
DISKS = [(64, LAYOUT), (64, LAYOUT), (64, None), (48, None), (64, None)]  # sda..sde, as the docstring says
MIRRORS = ("for n in 1 2; do mdadm --create /dev/md$((n-1)) --run --level=1 --raid-devices=2 --metadata=1.2 "
           "/dev/sda$n /dev/sdb$n; done; mdadm --wait /dev/md0 /dev/md1; mkfs.ext4 -q /dev/md0 && "
           "mkfs.ext4 -q /dev/md1 && mkdir -p /boot /data && mount /dev/md0 /boot && mount /dev/md1 /data")
RESYNC_LINE = r"md\d: recover\w* \d+\.\d%, [\d.]+ MiB/s, about \d+ min \d+ s left"


@pytest.fixture(scope="module")
def vm() -> Iterator[VM]:
    machine = VM(disks=0, memory_mib=768, scsi_specs=DISKS)
    try:
        targets = machine.run("for d in /sys/block/sd*; do echo ${d##*/} $(basename $(readlink $d/device)); "
                              "done").stdout
        assert targets.split() == ["sda", "0:0:0:0", "sdb", "0:0:1:0", "sdc", "0:0:2:0", "sdd", "0:0:3:0",
                                   "sde", "0:0:4:0"], targets  # one SCSI target per disk, named in order
        machine.run(MIRRORS, timeout=180)
        for disk in ("sda", "sdb"):
            machine.run(f"grub-install --target=i386-pc /dev/{disk}", timeout=180)
        machine.run(f"cat > /boot/grub/grub.cfg <<'EOF'\n{GRUB_CFG}EOF")
        machine.run("dd if=/dev/urandom of=/data/payload bs=1M count=8 && sync && sha256sum /data/payload "
                    "> /tmp/payload.sha256")
        machine.run("mkfs.ext4 -q -F /dev/sde")  # a used disk: must not be taken without --wipe
        machine.error_table("scsi1")  # sdb dies; the writes make md notice
        machine.run("until [ $(grep -c '(F)' /proc/mdstat) = 2 ]; do dd if=/dev/zero of=/data/poke bs=4k count=16 "
                    "conv=fsync 2>/dev/null; touch /boot/poke; sync; sleep 1; done", timeout=600)
        yield machine
    finally:
        machine.close()


def phases(vm: VM, new: str = "sdc") -> list[str]:
    """The replacement phases onto ``new`` that the audit log records as finished."""
    text = vm.run(f"cat {STATE}/audit.jsonl 2>/dev/null || true").stdout
    events = [json.loads(line) for line in text.splitlines()]
    return [e["phase"] for e in events if e["event"] == "replace.phase" and e["new"] == new]


def mdstat(vm: VM) -> str:
    return vm.run("cat /proc/mdstat").stdout


def replace(vm: VM, args: str, timeout: float = 300) -> tuple[int, dict[str, Any], str]:
    result = vm.run(f"cd /tmp && python3 -m hostagent disk replace {args} --no-selftest --read-test-mib 16 "
                    f"--state-dir {STATE} --json", timeout=timeout, check=False)
    return result.rc, (json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}), result.stderr


def test_the_old_disk_is_failed_and_both_arrays_are_degraded(vm: VM) -> None:
    text = mdstat(vm)
    assert text.count("[2/1] [U_]") == 2, text
    assert "sdb1[1](F)" in text and "sdb2[1](F)" in text


def test_dry_run_prints_the_plan_and_changes_nothing(vm: VM) -> None:
    before = mdstat(vm)
    dry = vm.run(f"cd /tmp && python3 -m hostagent disk replace --old sdb --new sdc --state-dir {STATE}", check=False)
    assert dry.rc == 0, dry
    for expected in ("old disk  /dev/sdb", "serial SCSI1", "new disk  /dev/sdc", "copy from /dev/sda",
                     "/dev/md0: add /dev/sdc1 as partition 1 (replacing sdb1)", "/dev/md1: add /dev/sdc2",
                     "$ sfdisk --no-reread --wipe always /dev/sdc",
                     "$ mdadm --manage /dev/md0 --remove failed detached", "$ mdadm --manage /dev/md1 --add /dev/sdc2",
                     "then: follow the resync", "then: install the bootloader on the new disk per the boot check",
                     "dry run: nothing was changed"):
        assert expected in dry.stdout, (expected, dry.stdout)
    assert "pci" in dry.stdout  # the slot, from /dev/disk/by-path
    assert mdstat(vm) == before
    assert vm.run("ls /sys/block/sdc/ | grep -c '^sdc[0-9]' || true").stdout.strip() == "0"


def test_locate_the_dead_disk_prints_its_slot(vm: VM) -> None:
    """No ledmon and no SES enclosure in the VM: the slot from sysfs is the answer, even with --apply."""
    for flags in ("--json", "--json --apply"):
        located = json.loads(vm.hostagent(f"disk locate sdb {flags} --state-dir {STATE}").stdout)
        assert located["disk"]["name"] == "sdb" and located["disk"]["serial"] == "SCSI1", located
        assert located["steps"] == [] and located["led"].startswith("no LED control"), located
        assert any("pci" in slot for slot in located["disk"]["slots"]), located
    text = vm.hostagent(f"disk locate SCSI1 --state-dir {STATE}").stdout  # by serial
    assert text.startswith("/dev/sdb: ") and "no LED control" in text, text


def contents(vm: VM) -> str:
    """Every byte of the candidate disks, and the arrays: what "nothing was written" compares."""
    return vm.run("sha256sum /dev/sdc /dev/sdd /dev/sde; cat /proc/mdstat").stdout


def test_refusals_write_nothing(vm: VM) -> None:
    before = contents(vm)
    code, _, err = replace(vm, "--old sdb --new sdd --apply")
    assert code == 3 and "is smaller than /dev/sda" in err, err
    code, _, err = replace(vm, "--old sdb --new sde --apply")
    assert code == 3 and "/dev/sde is not blank: ext4 on /dev/sde" in err and "--wipe" in err, err
    code, _, err = replace(vm, "--old sda --new sdc --apply")
    assert code == 3 and "holds its last in-sync copy: that is not the failed disk" in err, err
    assert contents(vm) == before
    assert "TYPE=ext4" in vm.run("blkid -p -o export /dev/sde").stdout
    assert phases(vm) == []  # and no progress recorded


@pytest.mark.parametrize("table", ["0 131072 error", "0 131072 flakey /dev/sdc 0 0 1"],
                         ids=["error", "flakey"])
def test_dead_on_arrival_disk_is_rejected_at_vetting(vm: VM, table: str) -> None:
    """A dm ``error`` device, and a ``flakey`` one over the blank sdc that is in its down interval
    (up 0 s, down 1 s: every I/O fails)."""
    vm.run(f"dmsetup create doa --table '{table}'")
    try:
        before = contents(vm)
        minor = vm.run("dmsetup info -c --noheadings -o minor doa").stdout.strip()
        code, result, _ = replace(vm, f"--old sdb --new dm-{minor} --apply")
        assert code == 1, result
        assert result["vetting"]["verdict"] == "doa"
        assert result["error"].startswith("DOA: return it")
        assert any("read test: error" in line for line in result["vetting"]["evidence"])
        assert result["steps"] == []
        assert contents(vm) == before
        assert phases(vm, f"dm-{minor}") == []
    finally:
        vm.run("dmsetup remove doa")


def test_interrupted_replacement_resumes_and_the_new_disk_boots_alone(vm: VM, tmp_path: Path) -> None:
    vm.run("echo 500 > /proc/sys/dev/raid/speed_limit_max; echo 100 > /proc/sys/dev/raid/speed_limit_min")
    vm.run(f"cd /tmp && (python3 -m hostagent disk replace --old sdb --new sdc --apply --no-selftest "
           f"--read-test-mib 16 --state-dir {STATE} > /tmp/first.log 2>&1 & echo $! > /tmp/first.pid)")

    def following_the_resync() -> bool:  # partitioned, added and tuned: the command shows md's progress now
        shown = vm.run("cat /tmp/first.log").stdout
        return "tuned" in phases(vm) and re.search(RESYNC_LINE, shown) is not None and "recovery" in mdstat(vm)

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not following_the_resync():
        time.sleep(2)
    assert following_the_resync(), vm.run("cat /tmp/first.log").stdout
    vm.run("kill -9 $(cat /tmp/first.pid)")
    assert phases(vm) == ["vetted", "partitioned", "added", "tuned"]  # the audit log: what a re-run resumes from
    vm.run("echo 200000 > /proc/sys/dev/raid/speed_limit_max")

    code, result, err = replace(vm, "--old sdb --new sdc --apply", timeout=600)
    assert code == 0, (result, err)
    assert result["resumed_from"] == ["vetted", "partitioned", "added", "tuned"]
    text = mdstat(vm)
    assert text.count("[2/2] [UU]") == 2, text
    assert re.search(r"md0 : active raid1 .*sdc1\[\d\]", text) and re.search(r"md1 : active raid1 .*sdc2\[\d\]", text)
    assert vm.run("sha256sum -c /tmp/payload.sha256").rc == 0
    boot = json.loads(vm.hostagent("check --json --only boot").stdout)
    assert boot["findings"] == []  # GRUB is on sdc too
    assert not [f for f in result["final"] if f["code"].startswith(("md.", "boot."))]
    audit = vm.run(f"cat {STATE}/audit.jsonl").stdout
    assert '"event": "replace.done"' in audit and "grub-install" in audit

    vm.run("sync; umount /boot /data; mdadm --stop /dev/md0 /dev/md1")
    vm.shutdown()
    alone = tmp_path / "sdc.img"
    shutil.copy(vm.scsi_disks[2], alone)  # the new disk, alone
    assert MENU in boot_from_disk(alone, MENU)
