"""Bootloader on every mirror member, over real disk images built with sfdisk, loop devices
and grub-install; plus bad input (truncated image, corrupt GPT, unreadable device)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_cli import hostagent
from tests.snapshots import HostSnapshot


def boot_findings(root: Path, *args: str) -> tuple[int, list[tuple[str, str, str]], dict[str, Any]]:
    proc = hostagent("check", "--json", "--only", "boot", "--root", str(root), *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    report = json.loads(proc.stdout)
    return proc.returncode, [(f["code"], f["subject"], f["severity"]) for f in report["findings"]], report


PARTITION = {"mbr": 1, "gpt-bios": 2, "gpt-esp": 2}

# (sda image, sdb image, firmware) -> expected boot findings
PAIRS = [
    ("mbr-grub", "mbr-grub", "bios", []),
    ("mbr-grub", "mbr-bare", "bios", [("boot.missing_on_member", "sdb", "CRITICAL")]),
    ("mbr-bare", "mbr-bare", "bios", [("boot.missing_on_member", "sda", "CRITICAL"),
                                      ("boot.missing_on_member", "sdb", "CRITICAL")]),
    ("gpt-bios-grub", "gpt-bios-grub", "bios", []),
    ("gpt-bios-grub", "gpt-bios-empty", "bios", [("boot.core_missing", "sdb", "CRITICAL")]),
    ("mbr-grub", "gpt-bios-empty", "bios", [("boot.core_missing", "sdb", "CRITICAL")]),
    ("gpt-bios-grub", "gpt-esp-loader", "bios", [("boot.missing_on_member", "sdb", "CRITICAL")]),
    ("gpt-esp-loader", "gpt-esp-loader", "efi", []),
    ("gpt-esp-loader", "gpt-esp-empty", "efi", [("boot.missing_on_member", "sdb", "CRITICAL")]),
    ("gpt-esp-loader", "gpt-bios-grub", "efi", [("boot.esp_missing", "sdb", "CRITICAL")]),
]


def layout(kind: str) -> str:
    return kind.rsplit("-", 1)[0]


@pytest.mark.parametrize(("first", "second", "firmware", "expected"), PAIRS,
                         ids=[f"{a}+{b}-{f}" for a, b, f, _ in PAIRS])
def test_mirror_over_each_pair(images: dict[str, Path], tmp_path: Path, first: str, second: str,
                               firmware: str, expected: list[tuple[str, str, str]]) -> None:
    snap = HostSnapshot(tmp_path / "snap")
    snap.boot_mirror({"sda": images[first], "sdb": images[second]}, PARTITION[layout(first)], efi=firmware == "efi")
    if firmware == "efi":  # the firmware has an entry for every ESP there is
        guids = {_esp_guid(images[kind]) for kind in (first, second) if kind.startswith("gpt-esp")}
        lines = [f"Boot000{i}* debian\tHD(1,GPT,{guid},0x800,0x10000)/File(\\EFI\\BOOT\\BOOTX64.EFI)"
                 for i, guid in enumerate(sorted(guids))]
        snap.command("efibootmgr", "efibootmgr-v.txt", "\n".join(["BootOrder: 0000", *lines]) + "\n")
    rc, found, _ = boot_findings(snap.root)
    assert found == expected
    assert rc == (2 if expected else 0)


def test_the_message_says_which_disk_survives_and_why_it_cannot_boot(images: dict[str, Path], tmp_path: Path) -> None:
    snap = HostSnapshot(tmp_path / "snap")
    snap.boot_mirror({"sda": images["mbr-grub"], "sdb": images["mbr-bare"]}, 1)
    _, _, report = boot_findings(snap.root)
    [finding] = report["findings"]
    assert finding["summary"] == "if sda fails, md0 (/) survives on sdb, but sdb cannot boot: no boot code in its MBR"
    assert finding["remedy"]["commands"] == [["grub-install", "--target=i386-pc", "/dev/sdb"]]


def test_esp_out_of_sync_and_missing_boot_entries(images: dict[str, Path], tmp_path: Path) -> None:
    changed = tmp_path / "changed.img"
    shutil.copy(images["gpt-esp-loader"], changed)
    import subprocess

    note = tmp_path / "grub.cfg"
    note.write_text("configfile /boot/grub/grub.cfg\n")
    offset = 2048 * 512
    subprocess.run(["mcopy", "-i", f"{changed}@@{offset}", str(note), "::/EFI/BOOT/grub.cfg"], check=True)
    snap = HostSnapshot(tmp_path / "snap")
    snap.boot_mirror({"sda": images["gpt-esp-loader"], "sdb": changed}, 2, efi=True, mounts=("/", "/boot"))
    sda_guid = _esp_guid(images["gpt-esp-loader"])
    entry = f"Boot0001* debian\tHD(1,GPT,{sda_guid},0x800,0x10000)/File(\\EFI\\BOOT\\BOOTX64.EFI)"
    snap.command("efibootmgr", "efibootmgr-v.txt", f"BootOrder: 0001\n{entry}\n")
    _, found, report = boot_findings(snap.root)
    assert ("boot.esp_out_of_sync", "sdb", "WARNING") in found
    out_of_sync = next(f for f in report["findings"] if f["code"] == "boot.esp_out_of_sync")
    assert "/EFI/BOOT/GRUB.CFG" in out_of_sync["summary"]
    # the remedy is plain argv (no shell); run for real, with the images' ESPs as the devices and a
    # temporary staging directory, it brings sdb's ESP back in line with sda's
    staging = str(tmp_path / "esp-copy")
    devices = {"/dev/sda1": f"{images['gpt-esp-loader']}@@{offset}", "/dev/sdb1": f"{changed}@@{offset}",
               "/run/hostagent/esp-copy": staging, "/run/hostagent/esp-copy/": f"{staging}/",
               "/run/hostagent/esp-copy/EFI": f"{staging}/EFI"}
    commands = out_of_sync["remedy"]["commands"]
    assert [c[2] if c[0] == "env" else c[0] for c in commands] == ["rm", "mkdir", "mcopy", "mdeltree", "mcopy"]
    for argv in commands:
        subprocess.run([devices.get(word, word) for word in argv], check=True, capture_output=True)
    _, found, _ = boot_findings(snap.root)
    assert "boot.esp_out_of_sync" not in [code for code, _, _ in found]
    # both images share the ESP GUID (copies), so the entry covers both; an entry list without it covers none
    snap.command("efibootmgr", "efibootmgr-v.txt", "BootOrder: 0000\nBoot0000* UEFI Shell\tFvVol(x)\n")
    _, found, report = boot_findings(snap.root)
    assert ("boot.no_boot_entry", "sda", "WARNING") in found and ("boot.no_boot_entry", "sdb", "WARNING") in found
    entry = next(f for f in report["findings"] if f["code"] == "boot.no_boot_entry")
    assert entry["remedy"]["commands"][0][:3] == ["efibootmgr", "--create", "--disk"]


def _esp_guid(image: Path) -> str:
    import struct
    import uuid

    data = image.read_bytes()[:512 * 34]
    entries_lba = struct.unpack_from("<Q", data, 512 + 72)[0]
    return str(uuid.UUID(bytes_le=data[entries_lba * 512 + 16: entries_lba * 512 + 32]))


def test_bad_input_is_unknown_naming_the_device(images: dict[str, Path], tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.img"
    truncated.write_bytes(images["mbr-grub"].read_bytes()[:300])
    corrupt = tmp_path / "corrupt.img"
    data = bytearray(images["gpt-bios-grub"].read_bytes())
    data[512 + 40] ^= 0xFF  # a byte inside the GPT header: its CRC no longer matches
    corrupt.write_bytes(bytes(data))
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()  # a directory where the device should be
    expected = {
        truncated: "/dev/sdb: truncated: only 300 bytes readable",
        corrupt: "/dev/sdb: GPT header CRC mismatch",
        unreadable: "/dev/sdb: cannot open: Is a directory",
    }
    for bad, message in expected.items():
        snap = HostSnapshot(tmp_path / f"snap-{bad.name}")
        snap.boot_mirror({"sda": images["gpt-bios-grub"], "sdb": bad}, 2)
        rc, found, report = boot_findings(snap.root)
        assert found == [("boot.unreadable", "sdb", "UNKNOWN")], bad
        assert message in report["findings"][0]["summary"]
        assert rc == 3


def test_no_boot_array_means_nothing_to_check(tmp_path: Path) -> None:
    snap = HostSnapshot(tmp_path / "snap")
    snap.write("proc/self/mountinfo", "22 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw\n")
    rc, found, _ = boot_findings(snap.root)
    assert (rc, found) == (0, [])


def test_boot_repair_is_a_dry_run_and_blockers_are_exposed(images: dict[str, Path], tmp_path: Path) -> None:
    snap = HostSnapshot(tmp_path / "snap")
    snap.boot_mirror({"sda": images["gpt-bios-grub"], "sdb": images["gpt-bios-empty"]}, 2)
    dry = hostagent("boot", "repair", "--root", str(snap.root))
    assert dry.returncode == 0
    assert "[dry run] sdb: Install GRUB on sdb\n    $ grub-install --target=i386-pc /dev/sdb" in dry.stdout
    refused = hostagent("boot", "repair", "--apply", "--root", str(snap.root))
    assert refused.returncode == 3 and "nothing can be applied to it" in refused.stderr

    from checks import boot
    from hostagent.context import CheckContext
    from hostagent.host import Host

    blocking = boot.blockers(CheckContext.for_host(Host(snap.root)))
    assert [(f.code, f.subject) for f in blocking] == [("boot.core_missing", "sdb")]


def test_boot_arrays_are_found_through_lvm_and_md_partitions(tmp_path: Path) -> None:
    from hostagent.host import Host
    from hostagent.sources.mounts import boot_arrays

    snap = HostSnapshot(tmp_path / "snap")
    snap.write("sys/devices/virtual/block/md0/md/array_state", "clean\n")
    snap.write("sys/devices/virtual/block/md1/md/array_state", "clean\n")
    snap.write("sys/devices/virtual/block/md1/md1p1/partition", "1\n")
    snap.link("sys/block/md0", "../devices/virtual/block/md0")
    snap.link("sys/block/md1", "../devices/virtual/block/md1")
    snap.link("sys/class/block/md1p1", "../../devices/virtual/block/md1/md1p1")
    snap.link("sys/devices/virtual/block/dm-0/slaves/md0", "../../md0")
    snap.link("sys/block/dm-0", "../devices/virtual/block/dm-0")
    snap.link("sys/dev/block/253:0", "../../devices/virtual/block/dm-0")
    snap.link("sys/dev/block/259:1", "../../devices/virtual/block/md1/md1p1")
    snap.write("proc/self/mountinfo",
               "21 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw\n"
               "22 21 259:1 / /boot rw,relatime shared:2 - ext4 /dev/md1p1 rw\n"
               "23 21 0:45 / /srv\\040data rw - tmpfs tmpfs rw\n")
    assert boot_arrays(Host(snap.root)) == {"md0": ["/"], "md1": ["/boot"]}


def test_another_loader_is_named_not_judged(images: dict[str, Path], tmp_path: Path) -> None:
    """boot.unknown_loader: sdb's MBR holds MS-DOS style boot code (its error strings at their usual
    place) instead of GRUB's; hostagent cannot verify what it loads, so it says so as INFO."""
    dos = tmp_path / "dos.img"
    shutil.copyfile(images["mbr-bare"], dos)
    code = (b"\xfa\x33\xc0\x8e\xd0\xbc\x00\x7c\x8b\xf4\x50\x07\x50\x1f\xfb\xfc" + bytes(0x12b)
            + b"Invalid partition table\0Error loading operating system\0Missing operating system\0")
    with dos.open("r+b") as handle:
        handle.write(code[:440])
    snap = HostSnapshot(tmp_path / "snap")
    snap.boot_mirror({"sda": images["mbr-grub"], "sdb": dos}, 1)
    rc, found, report = boot_findings(snap.root)
    assert found == [("boot.unknown_loader", "sdb", "INFO")] and rc == 0
    assert "dos-mbr" in report["findings"][0]["summary"]
