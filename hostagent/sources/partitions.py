"""MBR and GPT partition tables, parsed from raw bytes (pure; no tool needed to read a disk).

GPT headers are validated (signature, header CRC32, entry-array CRC32) so a corrupt table
is reported, never trusted.  Formats: UEFI spec 2.10, section 5.
"""

from __future__ import annotations

import struct
import zlib

from hostagent.errors import ParseError
from hostagent.records import record

ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
BIOS_BOOT_GUID = "21686148-6449-6e6f-744e-656564454649"
LINUX_RAID_GUID = "a19d880f-05fc-4d3b-a006-743f0f84911e"
MBR_PROTECTIVE = 0xEE
MBR_ESP = 0xEF


@record(frozen=True)
class Partition:
    number: int
    first_lba: int
    last_lba: int
    type: str  # GPT type GUID, or "0x83" style for MBR
    unique_guid: str | None = None  # GPT partition GUID (what UEFI boot entries point at)
    name: str = ""

    @property
    def is_esp(self) -> bool:
        return self.type in (ESP_GUID, f"0x{MBR_ESP:02x}")

    @property
    def is_bios_boot(self) -> bool:
        return self.type == BIOS_BOOT_GUID


@record(frozen=True)
class PartitionTable:
    scheme: str  # "gpt", "mbr" or "none"
    partitions: tuple[Partition, ...]
    sector_size: int = 512

    def first_partition_lba(self) -> int | None:
        return min((p.first_lba for p in self.partitions), default=None)


def parse_mbr(sector0: bytes, source: str) -> list[Partition]:
    if len(sector0) < 512:
        raise ParseError(source, None, f"truncated: {len(sector0)} bytes where the 512-byte MBR should be")
    if sector0[510:512] != b"\x55\xaa":
        return []
    partitions = []
    for index in range(4):
        entry = sector0[446 + 16 * index: 462 + 16 * index]
        kind = entry[4]
        first, count = struct.unpack_from("<II", entry, 8)
        if kind and count:
            partitions.append(Partition(index + 1, first, first + count - 1, f"0x{kind:02x}"))
    return partitions


def _guid(raw: bytes) -> str:
    """A GPT GUID in its text form: the first three fields are little-endian (uuid's ``bytes_le``)."""
    first, second, third = struct.unpack_from("<IHH", raw)
    return f"{first:08x}-{second:04x}-{third:04x}-{raw[8:10].hex()}-{raw[10:16].hex()}"


def parse_gpt_header(header: bytes, source: str) -> tuple[int, int, int, int]:
    """(entries LBA, entry count, entry size, entries CRC32) from a validated GPT header."""
    if len(header) < 92:
        raise ParseError(source, None, "truncated GPT header")
    if header[:8] != b"EFI PART":
        raise ParseError(source, None, "protective MBR but no 'EFI PART' GPT header at LBA 1")
    size = struct.unpack_from("<I", header, 12)[0]
    if not 92 <= size <= len(header):
        raise ParseError(source, None, f"GPT header size {size} is invalid")
    stored = struct.unpack_from("<I", header, 16)[0]
    computed = zlib.crc32(header[:16] + b"\0\0\0\0" + header[20:size]) & 0xFFFFFFFF
    if stored != computed:
        raise ParseError(source, None, f"GPT header CRC mismatch (stored {stored:08x}, computed {computed:08x})")
    entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", header, 72)
    if entry_size < 128 or entry_size & (entry_size - 1) or count > 4096 or count * entry_size > 1 << 20:
        raise ParseError(source, None, f"GPT entry array of {count} x {entry_size} bytes is invalid")
    return entries_lba, count, entry_size, entries_crc


def parse_gpt_entries(entries: bytes, count: int, entry_size: int, expected_crc: int, source: str) -> list[Partition]:
    if entry_size < 128 or entry_size & (entry_size - 1) or not 0 <= count <= 4096 or count * entry_size > 1 << 20:
        raise ParseError(source, None, f"GPT entry array of {count} x {entry_size} bytes is invalid "
                                       "(UEFI: entries of 128 x 2^n bytes)")
    if len(entries) < count * entry_size:
        raise ParseError(source, None, "truncated GPT partition entry array")
    if zlib.crc32(entries[: count * entry_size]) & 0xFFFFFFFF != expected_crc:
        raise ParseError(source, None, "GPT partition entry array CRC mismatch")
    partitions = []
    for index in range(count):
        entry = entries[index * entry_size: (index + 1) * entry_size]
        if entry[:16] == b"\0" * 16:
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        name = entry[56:128].decode("utf-16-le", errors="replace").rstrip("\0")
        partitions.append(Partition(index + 1, first, last, _guid(entry[:16]), _guid(entry[16:32]), name))
    return partitions
