"""What boots from a disk in BIOS mode: the loader in sector 0 and, for GRUB 2, its core.img.

GRUB 2's boot.img (grub-core/boot/i386/pc/boot.S) starts with a short jump and carries the
LBA of core.img's first sector at 0x5C; that sector (diskboot.img) ends with a blocklist
{start: u64, sectors: u16, segment: u16} whose start is the next LBA and whose segment is
0x0820.  Those facts identify GRUB across versions without executing anything.
"""

from __future__ import annotations

import struct

from hostagent.records import record

GRUB2_JUMPS = (b"\xeb\x63", b"\xeb\x4c", b"\xeb\x4b", b"\xeb\x47")
KERNEL_SECTOR_OFFSET = 0x5C
CORE_SEGMENT = 0x0820


@record(frozen=True)
class BootCode:
    signature: bool  # 55 AA at 510
    loader: str | None  # "grub2", "grub-legacy", "lilo", "syslinux", "dos-mbr", "unknown", None (no code)
    core_lba: int | None = None  # GRUB 2: where boot.img looks for core.img


def identify(sector0: bytes) -> BootCode:
    signature = sector0[510:512] == b"\x55\xaa"
    code = sector0[:440]
    if not signature or not code.strip(b"\0"):
        return BootCode(signature, None)
    if code[:2] in GRUB2_JUMPS and sector0[0x180:0x184] == b"GRUB":
        return BootCode(True, "grub2", struct.unpack_from("<Q", sector0, KERNEL_SECTOR_OFFSET)[0])
    if code[:2] == b"\xeb\x48" and b"GRUB" in code:
        return BootCode(True, "grub-legacy")
    if b"LILO" in code:
        return BootCode(True, "lilo")
    if b"SYSLINUX" in code or b"ISOLINUX" in code or b"syslinux" in code:
        return BootCode(True, "syslinux")
    if b"Missing operating system" in code or b"Invalid partition table" in code:
        return BootCode(True, "dos-mbr")
    return BootCode(True, "unknown")


def grub_core_present(core_sector: bytes, core_lba: int) -> bool:
    """Whether ``core_sector`` (read at ``core_lba``) is the first sector of a GRUB 2 core.img."""
    if len(core_sector) < 512 or not core_sector.strip(b"\0"):
        return False
    start, sectors, segment = struct.unpack_from("<QHH", core_sector, 512 - 12)
    return bool(start == core_lba + 1 and sectors > 0 and segment == CORE_SEGMENT)
