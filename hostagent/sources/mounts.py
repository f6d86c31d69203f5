"""/proc/self/mountinfo (proc(5)) and the md arrays under a mount, through dm/LVM and partitions."""

from __future__ import annotations

import re

from hostagent.errors import ParseError
from hostagent.host import Host
from hostagent.names import kernel_names
from hostagent.records import record
from hostagent.sources.bounds import number as bounded

MOUNTINFO = "/proc/self/mountinfo"
BOOT_MOUNTS = ("/", "/boot", "/boot/efi")


@record(frozen=True)
class Mount:
    mount_point: str
    major: int
    minor: int
    fstype: str
    source: str


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and re.fullmatch("[0-7]{3}", field[i + 1:i + 4]):
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str, source: str = MOUNTINFO) -> list[Mount]:
    mounts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            dash = fields.index("-")
            major, minor = (bounded(x, source, number, "device number", 2**32 - 1) for x in fields[2].split(":"))
            mounts.append(Mount(_unescape(fields[4]), major, minor, fields[dash + 1], _unescape(fields[dash + 2])))
        except (ValueError, IndexError):
            raise ParseError(source, number, f"not a mountinfo line: {line!r}") from None
    return mounts


def device_name(host: Host, major: int, minor: int) -> str | None:
    """Kernel name of the block device major:minor (via /sys/dev/block)."""
    link = host.readlink(f"/sys/dev/block/{major}:{minor}")
    return link.rstrip("/").rsplit("/", 1)[-1] if link else None


def arrays_under(host: Host, name: str, _depth: int = 0) -> list[str]:
    """md arrays a block device is built on: itself, the md of a partition, or through dm slaves."""
    if _depth > 8:
        return []
    if name.startswith("md") and host.exists(f"/sys/block/{name}/md"):
        return [name]
    if host.exists(f"/sys/class/block/{name}/partition"):
        parent = (host.readlink(f"/sys/class/block/{name}") or "").rstrip("/").split("/")
        return arrays_under(host, parent[-2], _depth + 1) if len(parent) >= 2 else []
    found: list[str] = []
    for slave in kernel_names(host.listdir(f"/sys/block/{name}/slaves"), f"/sys/block/{name}/slaves"):
        for array in arrays_under(host, slave, _depth + 1):
            if array not in found:
                found.append(array)
    return found


def boot_arrays(host: Host) -> dict[str, list[str]]:
    """md array -> the boot mount points (/, /boot, /boot/efi) it backs."""
    text = host.read_optional(MOUNTINFO)
    if text is None:
        return {}
    found: dict[str, list[str]] = {}
    for mount in parse_mountinfo(text, str(host.path(MOUNTINFO))):
        if mount.mount_point not in BOOT_MOUNTS or mount.major == 0:
            continue
        name = device_name(host, mount.major, mount.minor)
        for array in arrays_under(host, name) if name else []:
            found.setdefault(array, [])
            if mount.mount_point not in found[array]:
                found[array].append(mount.mount_point)
    return found
