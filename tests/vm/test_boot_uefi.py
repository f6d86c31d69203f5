"""The survivor must boot, on UEFI too: /boot on RAID1 over two disks that each have an ESP, GRUB
installed into the first ESP only, and no firmware boot entry for either.  The VM runs under OVMF,
so /sys/firmware/efi and the variable store are real.  ``hostagent boot repair --apply`` copies
the loader onto the empty ESP and adds the boot entries; the check then finds nothing, and OVMF,
with an empty variable store, boots the formerly bare disk alone into GRUB's menu."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm.harness import VM, boot_from_disk, serial_menu

MENU = "hostagent survivor boot test (UEFI)"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
RAID_TYPE = "A19D880F-05FC-4D3B-A006-743F0F84911E"
LAYOUT = f"label: gpt\nstart=2048, size=32MiB, type={ESP_TYPE}\nstart=, type={RAID_TYPE}\n"


@pytest.fixture(scope="module")
def uefi_vm() -> Iterator[VM]:
    # OVMF keeps a third of 512 MiB for itself until the kernel has unpacked the initramfs
    machine = VM(disks=2, disk_mib=128, disk_layout=LAYOUT, firmware="uefi", memory_mib=768)
    try:
        machine.run("mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 /dev/vda2 /dev/vdb2 "
                    "&& mdadm --wait /dev/md0; mkfs.ext4 -q /dev/md0 && mkdir -p /boot && mount /dev/md0 /boot",
                    timeout=120)
        # two fresh ESPs; GRUB goes onto the first only, at the removable-media path, with no NVRAM entry
        machine.run("mkfs.fat /dev/vda1 >/dev/null && mkfs.fat /dev/vdb1 >/dev/null && mkdir -p /boot/efi "
                    "&& mount -t vfat /dev/vda1 /boot/efi", timeout=60)
        machine.run("grub-install --target=x86_64-efi --efi-directory=/boot/efi --boot-directory=/boot "
                    "--removable --no-nvram --no-uefi-secure-boot", timeout=300)
        machine.run(f"umount /boot/efi && cat > /boot/grub/grub.cfg <<'EOF'\n{serial_menu(MENU)}EOF")
        yield machine
    finally:
        machine.close()


def boot_findings(vm: VM) -> list[dict[str, object]]:
    result = vm.hostagent("check --json --only boot")
    findings: list[dict[str, object]] = json.loads(result.stdout)["findings"]
    return findings


def test_the_firmware_is_uefi_and_the_bare_esp_is_named(uefi_vm: VM) -> None:
    assert uefi_vm.run("test -d /sys/firmware/efi && echo uefi").stdout.strip() == "uefi"
    found = {(f["code"], f["subject"], f["severity"]) for f in boot_findings(uefi_vm)}
    assert ("boot.missing_on_member", "vdb", "CRITICAL") in found, found
    # OVMF made its own entries for the disks, none of them naming an ESP's partition GUID
    assert {("boot.no_boot_entry", "vda", "WARNING"), ("boot.no_boot_entry", "vdb", "WARNING")} <= found, found
    bare = next(f for f in boot_findings(uefi_vm) if f["code"] == "boot.missing_on_member")
    assert bare["summary"] == ("if vda fails, md0 (/boot) survives on vdb, "
                               "but vdb cannot boot: its ESP /dev/vdb1 holds no EFI loader")


def test_uefi_repair_applies_for_real_and_the_bare_disk_then_boots_alone(uefi_vm: VM, tmp_path: Path) -> None:
    before = uefi_vm.run("efibootmgr -v").stdout
    dry = uefi_vm.hostagent("boot repair --state-dir /tmp/state")
    assert dry.rc == 0 and "dry run" in dry.stdout, dry
    assert "$ env MTOOLS_SKIP_CHECK=1 mcopy -s -o -i /dev/vda1 ::/EFI /run/hostagent/esp-copy/" in dry.stdout, \
        dry.stdout
    assert "$ efibootmgr --create --disk /dev/vdb --part 1" in dry.stdout, dry.stdout
    assert "EFI" not in uefi_vm.run("mdir -i /dev/vdb1 ::/", check=False).stdout  # the dry run changed nothing
    assert uefi_vm.run("efibootmgr -v").stdout == before

    applied = uefi_vm.hostagent("boot repair --apply --json --state-dir /tmp/state", timeout=300)
    assert applied.rc == 0, applied
    outcome = json.loads(applied.stdout)
    assert outcome["applied"] is True and all(s["returncode"] == 0 for s in outcome["steps"]), outcome
    assert outcome["remaining"] == []
    assert boot_findings(uefi_vm) == []
    # what was written: the loader on the second ESP, and an entry in the firmware's variables for each ESP
    assert "BOOTX64  EFI" in uefi_vm.run("mdir -i /dev/vdb1 ::/EFI/BOOT").stdout
    entries = uefi_vm.run("efibootmgr -v").stdout
    assert "hostagent vda" in entries and "hostagent vdb" in entries, entries
    audit = uefi_vm.run("cat /tmp/state/audit.jsonl").stdout
    assert audit.count('"event": "done"') == len(outcome["steps"]), audit

    uefi_vm.run("sync; umount /boot; mdadm --stop /dev/md0")
    uefi_vm.shutdown()
    survivor = tmp_path / "vdb.img"
    shutil.copy(uefi_vm.disks[1], survivor)  # the formerly bare disk, alone, with empty firmware variables
    console = boot_from_disk(survivor, MENU, timeout=240, firmware="uefi")
    assert MENU in console
