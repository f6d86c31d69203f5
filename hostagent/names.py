"""Kernel device names: only what the kernel itself produces reaches a path or a command.

Block devices are named by their drivers (``sda``, ``nvme0n1p2``, ``dm-3``, ``md127``, ``md_d0``,
``xvda1``, ``mmcblk0p1``, ``cciss!c0d0`` with ``/`` shown as ``!`` in sysfs), NVMe controllers
``nvme0``.  None of them needs more than letters, digits and ``_ . : + ! -``, nor starts with a
dot, so a name outside that set comes from a crafted snapshot or a hostile request and is refused.
"""

from __future__ import annotations

import re

from hostagent.errors import HostagentError, ParseError

KERNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+!-]{0,63}")


def is_kernel_name(name: str) -> bool:
    return KERNEL_NAME.fullmatch(name) is not None


def kernel_names(names: list[str], source: str) -> list[str]:
    """``names`` unchanged, or a ParseError naming ``source`` and the first name that is not a kernel name."""
    for name in names:
        if not is_kernel_name(name):
            raise ParseError(source, None, f"{name!r} is not a kernel device name")
    return names


def device_argument(text: str) -> str:
    """A device or array named on the command line or in a request: ``sdb``, ``/dev/sdb`` or ``md0``."""
    name = text.removeprefix("/dev/")
    if not is_kernel_name(name):
        raise HostagentError(f"{text!r} is not a device name (letters, digits and _ . : + ! - only)")
    return name


def disk_of_partition(name: str) -> str:
    """The whole disk a partition's name belongs to, by name alone: sdb1 -> sdb, nvme0n1p2 -> nvme0n1.

    A name that does not end in a digit is a whole disk already; so is one whose stem is not a disk's
    (``md0``, ``dm-1``: their digits are their number)."""
    if not name[-1:].isdigit() or name.startswith(("md", "dm-", "loop")):
        return name
    stem = name.rstrip("0123456789")
    if stem.endswith("p") and stem[-2:-1].isdigit():  # nvme0n1p2, mmcblk0p1
        return stem[:-1]
    return stem if stem and not stem[-1].isdigit() and not stem.startswith(("nvme", "mmcblk")) else name


# a mail address as every sink takes it (no display name, no spaces or line breaks): the configuration's,
# and an owner read from a guest's metadata (hypervisor.libvirt_backend) or a journal
MAIL_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
