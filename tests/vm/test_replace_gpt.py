"""``hostagent disk replace`` on GPT disks with SMART: three SATA disks on QEMU's AHCI, whose
emulated drives answer SMART and run self-tests.  Two hold a BIOS boot partition, /boot (md0) and
/ (md1), GRUB on both; the third is blank.  The vetting runs the real short self-test, the table
is copied with ``sgdisk -R`` and given fresh GUIDs, and the new disk boots alone.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm.harness import VM, boot_from_disk, serial_menu

pytestmark = pytest.mark.vm

MENU = "hostagent GPT replacement boot test"
RAID = "A19D880F-05FC-4D3B-A006-743F0F84911E"
LAYOUT = ("label: gpt\n"
          "start=2048, size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=bios\n"
          f"size=20MiB, type={RAID}, name=boot\n"
          f"type={RAID}, name=root\n")
GRUB_CFG = serial_menu(MENU)
STATE = "/tmp/replace-state"


@pytest.fixture(scope="module")
def vm() -> Iterator[tuple[VM, list[str]]]:
    machine = VM(disks=0, memory_mib=768, sata_specs=[(64, LAYOUT), (64, LAYOUT), (64, None)])
    try:
        names = ["sda", "sdb", "sdc"]  # the harness names the disks in port order
        good, dying, _ = names
        machine.run(f"for n in 2 3; do mdadm --create /dev/md$((n-2)) --run --level=1 --raid-devices=2 "
                    f"--metadata=1.2 /dev/{good}$n /dev/{dying}$n; done; mdadm --wait /dev/md0 /dev/md1; "
                    "mkfs.ext4 -q /dev/md0 && mkfs.ext4 -q /dev/md1 && mkdir -p /boot /data "
                    "&& mount /dev/md0 /boot && mount /dev/md1 /data", timeout=180)
        for disk in (good, dying):
            machine.run(f"grub-install --target=i386-pc /dev/{disk}", timeout=180)
        machine.run(f"cat > /boot/grub/grub.cfg <<'EOF'\n{GRUB_CFG}EOF")
        # The second port's disk dies; the writes make md notice.  libata retries every failed
        # command through its error handler and md first logs bad blocks, so this takes a while.
        machine.error_table("sata1")
        machine.run("until [ $(grep -c '(F)' /proc/mdstat) = 2 ]; do dd if=/dev/zero of=/data/poke bs=4k count=16 "
                    "conv=fsync 2>/dev/null; touch /boot/poke; sync; sleep 1; done", timeout=600)
        yield machine, names
    finally:
        machine.close()


def test_gpt_replacement_with_a_self_test_boots_from_the_new_disk_alone(vm: tuple[VM, list[str]],
                                                                       tmp_path: Path) -> None:
    machine, (good, dying, new) = vm
    assert machine.run("cat /proc/mdstat").stdout.count("[2/1] [U_]") == 2
    run = machine.run(f"cd /tmp && python3 -m hostagent disk replace --old {dying} --new {new} --apply "
                      f"--read-test-mib 16 --state-dir {STATE} --json", timeout=600, check=False)
    assert run.rc == 0, run
    result = json.loads(run.stdout)
    vetting = result["vetting"]
    assert vetting["verdict"] == "ok" and vetting["smart"] is True, vetting
    assert vetting["evidence"][0].startswith("SMART overall health: PASSED"), vetting
    assert "short self-test: Short offline: completed without error" in vetting["evidence"], vetting
    assert "read test: 16 MiB read without error" in vetting["evidence"], vetting
    assert f"{new}: short self-test: started" in run.stderr  # the progress display
    argv = [" ".join(step["argv"]) for step in result["steps"]]
    assert f"sgdisk --replicate=/dev/{new} /dev/{good}" in argv, argv
    assert f"sgdisk --randomize-guids /dev/{new}" in argv, argv
    # QEMU's drive has no SCT ERC: the erc check's remedy raises the kernel's timeout instead
    assert f"sysfs-write /sys/block/{new}/device/timeout 180" in argv, argv
    assert machine.run(f"cat /sys/block/{new}/device/timeout").stdout.strip() == "180"

    text = machine.run("cat /proc/mdstat").stdout
    assert text.count("[2/2] [UU]") == 2, text
    for array, number in (("md0", 2), ("md1", 3)):
        assert re.search(rf"{array} : active raid1 .*{new}{number}\[\d\]", text), text
    copied, template = (machine.run(f"sfdisk --dump /dev/{disk}").stdout for disk in (new, good))

    def partitions(dump: str) -> list[str]:  # each partition's start, size, type and name
        lines = [line for line in dump.splitlines() if line.startswith("/dev/")]
        return [re.sub(r"^/dev/sd.|uuid=[-0-9A-F]+", "", line) for line in lines]

    assert len(partitions(copied)) == 3 and partitions(copied) == partitions(template)
    guids = [set(re.findall(r"uuid=([-0-9A-F]+)", dump)) | set(re.findall(r"label-id: (\S+)", dump))
             for dump in (copied, template)]
    assert len(guids[0]) == 4 and not guids[0] & guids[1], guids  # its own disk and partition GUIDs
    boot = json.loads(machine.hostagent("check --json --only boot").stdout)
    assert boot["findings"] == []

    machine.run("sync; umount /boot /data; mdadm --stop /dev/md0 /dev/md1")
    machine.shutdown()
    alone = tmp_path / "new.img"
    shutil.copy(machine.sata_disks[2], alone)
    assert MENU in boot_from_disk(alone, MENU)
