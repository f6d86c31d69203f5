"""Build host snapshots for tests: sysfs disks laid out as the kernel does, mdstat, recorded commands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

PATHS = {
    "ata": "devices/pci0000:00/0000:00:1f.2/ata{n}/host{n}/target{n}:0:0/{n}:0:0:0/block/{name}",
    "usb": "devices/pci0000:00/0000:00:14.0/usb2/2-{n}/2-{n}:1.0/host{n}/target{n}:0:0/{n}:0:0:0/block/{name}",
    "sas": "devices/pci0000:00/0000:00:03.0/0000:03:00.0/host{n}/port-{n}:0/end_device-{n}:0/target{n}:0:0/"
           "{n}:0:0:0/block/{name}",
    "nvme": "devices/pci0000:00/0000:00:1d.0/0000:3d:00.{n}/nvme/nvme{n}/{name}",
    "virtio": "devices/pci0000:00/0000:00:0{n}.0/virtio{n}/block/{name}",
}


class HostSnapshot:
    def __init__(self, root: Path, hostname: str = "hv1") -> None:
        self.root = root
        self._disks = 0
        self.write("proc/sys/kernel/hostname", hostname + "\n")

    def write(self, path: str, text: str) -> Path:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    def link(self, path: str, target: str) -> None:
        where = self.root / path
        where.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, where)

    def mdstat(self, text: str) -> None:
        self.write("proc/mdstat", text)

    def disk(self, name: str, transport: str = "ata", *, model: str = "TEST DISK", serial: str | None = None,
             sectors: int = 3907029168, partitions: tuple[str, ...] = (), timeout: int | None = 30,
             rotational: bool = True) -> None:
        self._disks += 1
        path = "sys/" + PATHS[transport].format(n=self._disks, name=name)
        self.write(f"{path}/size", f"{sectors}\n")
        self.write(f"{path}/queue/rotational", "1\n" if rotational else "0\n")
        if transport == "virtio":
            self.write(f"{path}/serial", (serial or "") + "\n")
        else:
            device = str(Path(path).parent.parent)
            self.write(f"sys/{device.removeprefix('sys/')}/model", model + "\n")
            if serial:
                self.write(f"sys/{device.removeprefix('sys/')}/serial", serial + "\n")
            if timeout is not None:
                self.write(f"sys/{device.removeprefix('sys/')}/timeout", f"{timeout}\n")
            self.link(f"{path}/device", "../..")
        self.link(f"sys/block/{name}", "../" + path.removeprefix("sys/"))
        for number, part in enumerate(partitions, start=1):
            self.write(f"{path}/{part}/partition", f"{number}\n")
            self.write(f"{path}/{part}/size", f"{sectors // 2}\n")
            self.link(f"sys/class/block/{part}", "../../" + f"{path.removeprefix('sys/')}/{part}")

    def boot_mirror(self, images: dict[str, Path], member_partition: int, efi: bool = False,
                    mounts: tuple[str, ...] = ("/",)) -> None:
        """md0 (raid1) over partition N of each disk, mounted at ``mounts``, disks backed by images."""
        members = []
        for index, (disk, image) in enumerate(images.items()):
            parts = tuple(f"{disk}{n}" for n in (1, 2))
            self.disk(disk, serial=f"BOOT{index}", partitions=parts, timeout=None)
            self.link(f"dev/{disk}", str(image))
            members.append(f"{disk}{member_partition}[{index}]")
        self.mdstat(f"Personalities : [raid1]\nmd0 : active raid1 {' '.join(members)}\n"
                    f"      60000 blocks super 1.2 [{len(members)}/{len(members)}] [{'U' * len(members)}]\n\n"
                    "unused devices: <none>\n")
        self.write("sys/devices/virtual/block/md0/md/array_state", "clean\n")
        self.link("sys/block/md0", "../devices/virtual/block/md0")
        self.link("sys/dev/block/9:0", "../../devices/virtual/block/md0")
        lines = [f"{20 + i} 1 9:0 / {m} rw,relatime shared:1 - ext4 /dev/md0 rw" for i, m in enumerate(mounts)]
        self.write("proc/self/mountinfo", "\n".join(lines) + "\n")
        if efi:
            (self.root / "sys/firmware/efi").mkdir(parents=True, exist_ok=True)

    def command(self, tool: str, name: str, stdout: str, rc: int = 0) -> None:
        self.write(f"_commands/{tool}/{name}", stdout)
        if rc:
            self.write(f"_commands/{tool}/{name}.rc", f"{rc}\n")

    def scan(self, devices: list[tuple[str, str]]) -> None:
        document: dict[str, Any] = {
            "json_format_version": [1, 0],
            "smartctl": {"version": [7, 3], "exit_status": 0},
            "devices": [{"name": name, "info_name": name, "type": kind, "protocol": "ATA"} for name, kind in devices],
        }
        self.command("smartctl", "scan-open.json", json.dumps(document))

    def smart(self, disk: str, fixture: Path | str | dict[str, Any]) -> None:
        text = json.dumps(fixture) if isinstance(fixture, dict) else Path(fixture).read_text()
        self.command("smartctl", f"{disk}.json", text, rc=json.loads(text)["smartctl"]["exit_status"])


def sata_mirror(root: Path) -> HostSnapshot:
    """md0, a raid1 of sda1 and sdb1 on two SATA disks, both idle; ``member_dir(root, "sdb")``
    is where a test changes a member's ``stat`` or ``inflight``."""
    snap = HostSnapshot(root)
    snap.disk("sda", partitions=("sda1",))
    snap.disk("sdb", partitions=("sdb1",))
    snap.mdstat("Personalities : [raid1]\nmd0 : active raid1 sda1[0] sdb1[1]\n      1000 blocks super 1.2 [2/2] [UU]\n")
    for disk in ("sda", "sdb"):
        snap.write(f"{member_dir(root, disk).relative_to(root)}/stat", "100 0 800 10 50 0 400 10 0 20 20 0 0 0 0 0 0\n")
        snap.write(f"{member_dir(root, disk).relative_to(root)}/inflight", "0 0\n")
    return snap


def member_dir(root: Path, disk: str) -> Path:
    """The sysfs directory of ``<disk>1`` in :func:`sata_mirror` (sda is the first disk, sdb the second)."""
    n = ord(disk[-1]) - ord("a") + 1
    return root / PATHS["ata"].format(n=n, name=disk).replace("devices/", "sys/devices/", 1) / f"{disk}1"
