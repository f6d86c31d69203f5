"""Block devices from sysfs: physical disks, their partitions, and the disk under any member.

``read_disks`` lists /sys/block, leaving out virtual devices (loop, ram, zram, md, dm, ...)
unless an include pattern names them.  ``parent_disks`` follows partitions and
``slaves/`` (dm, nested md) down to whole disks, so an md member maps to the disk that
holds it.  Pure helpers (``transport_from_path``) are separate from the reads.
"""

from __future__ import annotations

import fnmatch
import re

from hostagent.host import Host
from hostagent.names import kernel_names
from hostagent.records import record

VIRTUAL_PREFIXES = ("loop", "ram", "zram", "md", "dm-", "sr", "fd", "nbd", "nullb", "zd")
NO_SMART_TRANSPORTS = ("virtio", "xen", "mmc")


@record(frozen=True)
class Disk:
    name: str  # kernel name: sda, nvme0n1, vda
    transport: str  # ata, sas, scsi, nvme, usb, virtio, xen, mmc, unknown
    model: str | None
    serial: str | None
    size_bytes: int | None
    rotational: bool | None
    partitions: tuple[str, ...]

    @property
    def dev_path(self) -> str:
        return f"/dev/{self.name}"

    @property
    def identity(self) -> str:
        """What identifies the physical disk across renames: its serial, else its name."""
        return f"serial:{self.serial}" if self.serial else f"name:{self.name}"


_SEGMENT = {
    "usb": re.compile(r"/usb\d*/"),
    "nvme": re.compile(r"/nvme(?:-subsystem)?/|/nvme\d+/"),
    "ata": re.compile(r"/ata\d+/"),
    "sas": re.compile(r"/(?:end_device|expander|port)-\d+:"),
    "xen": re.compile(r"/vbd-\d+/|/xen/"),
    "mmc": re.compile(r"/mmc_host/|/mmc\d+/"),
    "scsi": re.compile(r"/host\d+/target\d+:"),
}


def transport_from_path(name: str, device_path: str) -> str:
    """The transport of a disk from the target of its /sys/block/<name> link."""
    path = device_path if device_path.endswith("/") else device_path + "/"
    for transport in ("usb", "nvme", "ata", "sas", "xen", "mmc"):
        if _SEGMENT[transport].search(path):
            return transport
    if name.startswith("vd") and "/virtio" in path:
        return "virtio"
    if name.startswith("xvd"):
        return "xen"
    if _SEGMENT["scsi"].search(path):
        return "scsi"
    if name.startswith("nvme"):
        return "nvme"
    return "unknown"


def is_virtual(name: str) -> bool:
    return name.startswith(VIRTUAL_PREFIXES)


def selected(name: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    if any(fnmatch.fnmatch(name, pattern) for pattern in exclude):
        return False
    return not is_virtual(name) or any(fnmatch.fnmatch(name, pattern) for pattern in include)


def clean_serial(raw: bytes) -> str | None:
    """A serial as sysfs gives it; VPD page 0x80 (unit serial number) has a 4-byte header first."""
    data = raw[4:] if raw[:2] == b"\x00\x80" else raw
    text = "".join(c for c in data.decode("ascii", errors="ignore") if c.isprintable()).strip()
    return text or None


def read_disks(host: Host, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> list[Disk]:
    disks = []
    for name in kernel_names(host.listdir("/sys/block"), "/sys/block"):
        if not selected(name, include, exclude):
            continue
        disks.append(read_disk(host, name))
    return disks


def _first(host: Host, paths: tuple[str, ...]) -> str | None:
    for path in paths:
        text = host.read_optional(path)
        if text is not None and text.strip():
            return text
    return None


def read_disk(host: Host, name: str) -> Disk:
    base = f"/sys/block/{name}"
    target = host.readlink(base) or ""
    model = _first(host, (f"{base}/device/model", f"{base}/device/name"))
    serial = None
    for source in (f"{base}/device/serial", f"{base}/serial", f"{base}/device/vpd_pg80"):
        try:
            serial = clean_serial(host.read_bytes(source))
        except FileNotFoundError:
            continue
        if serial:
            break
    size = (host.read_optional(f"{base}/size") or "").strip()
    rotational = (host.read_optional(f"{base}/queue/rotational") or "").strip()
    partitions = tuple(kernel_names([
        entry for entry in host.listdir(base)
        if entry.startswith(name) and host.exists(f"{base}/{entry}/partition")
    ], base))
    return Disk(
        name=name,
        transport=transport_from_path(name, target),
        model=model.strip() if model else None,
        serial=serial,
        size_bytes=int(size) * 512 if re.fullmatch(r"[0-9]{1,20}", size) else None,
        rotational={"1": True, "0": False}.get(rotational),
        partitions=partitions,
    )


def parent_disks(host: Host, name: str, _depth: int = 0) -> list[str]:
    """Whole disks under block device ``name`` (itself if it is one), through partitions and slaves."""
    if _depth > 8:
        return []
    if host.exists(f"/sys/class/block/{name}/partition"):
        link = host.readlink(f"/sys/class/block/{name}") or ""
        parts = link.rstrip("/").split("/")
        return kernel_names([parts[-2]], f"/sys/class/block/{name}") if len(parts) >= 2 else []
    slaves = kernel_names(host.listdir(f"/sys/block/{name}/slaves"), f"/sys/block/{name}/slaves")
    if slaves:
        found: list[str] = []
        for slave in slaves:
            for disk in parent_disks(host, slave, _depth + 1):
                if disk not in found:
                    found.append(disk)
        return found
    return [name]
