"""The outage behind the project: the surviving disk must boot. RAID1 /boot over two disks,
GRUB on one only; the agent names the other, repairs it, and QEMU boots from it alone."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm.harness import VM, boot_from_disk, serial_menu

MENU = "hostagent survivor boot test"
GRUB_CFG = serial_menu(MENU)


@pytest.fixture(scope="module")
def boot_vm() -> Iterator[VM]:
    machine = VM(disks=2, disk_layout="label: dos\nstart=2048, type=fd\n")
    try:
        machine.run("mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 /dev/vda1 /dev/vdb1 "
                    "&& mdadm --wait /dev/md0; mkfs.ext4 -q /dev/md0 && mkdir -p /boot && mount /dev/md0 /boot",
                    timeout=120)
        machine.run("grub-install --target=i386-pc /dev/vda", timeout=180)
        machine.run(f"cat > /boot/grub/grub.cfg <<'EOF'\n{GRUB_CFG}EOF")
        yield machine
    finally:
        machine.close()


def boot_findings(vm: VM) -> list[tuple[str, str, str]]:
    result = vm.hostagent("check --json --only boot")
    report = json.loads(result.stdout)
    return [(f["code"], f["subject"], f["severity"]) for f in report["findings"]]


def test_missing_grub_on_one_member_names_it(boot_vm: VM) -> None:
    assert boot_findings(boot_vm) == [("boot.missing_on_member", "vdb", "CRITICAL")]
    summary = json.loads(boot_vm.hostagent("check --json --only boot").stdout)["findings"][0]["summary"]
    assert summary == "if vda fails, md0 (/boot) survives on vdb, but vdb cannot boot: no boot code in its MBR"


def test_repair_then_the_formerly_bare_disk_boots_alone(boot_vm: VM, tmp_path: Path) -> None:
    dry = boot_vm.hostagent("boot repair --state-dir /tmp/state")
    assert "$ grub-install --target=i386-pc /dev/vdb" in dry.stdout and "dry run" in dry.stdout
    assert boot_findings(boot_vm) == [("boot.missing_on_member", "vdb", "CRITICAL")]  # nothing changed

    applied = boot_vm.hostagent("boot repair --apply --json --state-dir /tmp/state", timeout=300)
    assert applied.rc == 0, applied
    outcome = json.loads(applied.stdout)
    assert [(s["subject"], s["returncode"]) for s in outcome["steps"]] == [("vdb", 0)]
    assert outcome["remaining"] == []
    assert boot_findings(boot_vm) == []

    boot_vm.run("sync; umount /boot; mdadm --stop /dev/md0")
    boot_vm.shutdown()
    survivor = tmp_path / "vdb.img"
    shutil.copy(boot_vm.disks[1], survivor)  # the formerly bare disk, alone: vda is gone
    console = boot_from_disk(survivor, MENU)
    assert MENU in console
