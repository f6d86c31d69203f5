"""A read-only FAT12/16/32 reader over a byte-range reader, for looking into ESPs unmounted.

Layout per Microsoft's "FAT: General Overview of On-Disk Format" (BPB fields, FAT entry
sizes, 8.3 and long-name directory entries).  Reads only what a listing or a file needs.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from hostagent.errors import ParseError
from hostagent.records import record

Reader = Callable[[int, int], bytes]  # (offset, length) -> bytes
ATTR_DIRECTORY = 0x10
ATTR_VOLUME = 0x08
ATTR_LFN = 0x0F
MAX_FILE = 64 * 1024 * 1024
MAX_ENTRIES = 10000


@record(frozen=True)
class Entry:
    name: str
    is_dir: bool
    cluster: int
    size: int


class FatVolume:
    def __init__(self, read: Reader, source: str) -> None:
        self.read, self.source = read, source
        boot = read(0, 512)
        if len(boot) < 512 or boot[510:512] != b"\x55\xaa":
            raise ParseError(source, None, "no FAT boot sector (55 AA missing)")
        bps, spc, reserved, fats, root_entries, total16 = struct.unpack_from("<HBHBHH", boot, 11)
        (fat16_size,) = struct.unpack_from("<H", boot, 22)
        total32, fat32_size = struct.unpack_from("<II", boot, 32)
        (root_cluster,) = struct.unpack_from("<I", boot, 44)
        if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1) or fats == 0:
            raise ParseError(source, None, f"not a FAT file system (bytes/sector {bps}, sectors/cluster {spc})")
        fat_size = fat16_size or fat32_size
        total = total16 or total32
        root_sectors = (root_entries * 32 + bps - 1) // bps
        data_start = reserved + fats * fat_size + root_sectors
        clusters = (total - data_start) // spc
        if clusters < 1:
            raise ParseError(source, None, f"not a FAT file system ({total} sectors, data from sector {data_start})")
        self.clusters = clusters
        self.kind = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
        self.bps, self.cluster_bytes = bps, bps * spc
        self.fat_offset = reserved * bps
        self.root_offset = (reserved + fats * fat_size) * bps
        self.root_size = root_entries * 32
        self.data_offset = data_start * bps
        self.root_cluster = root_cluster if self.kind == 32 else 0
        self._fat_cache: dict[int, bytes] = {}

    def _fat_bytes(self, offset: int, length: int) -> bytes:
        sector = offset // self.bps
        end = (offset + length - 1) // self.bps
        data = b""
        for s in range(sector, end + 1):
            if s not in self._fat_cache:
                self._fat_cache[s] = self._read_exactly(self.fat_offset + s * self.bps, self.bps, "the FAT")
            data += self._fat_cache[s]
        start = offset - sector * self.bps
        return data[start:start + length]

    def _read_exactly(self, offset: int, length: int, what: str) -> bytes:
        data = self.read(offset, length)
        if len(data) < length:
            raise ParseError(self.source, None, f"truncated: {what} at byte {offset} is beyond the end")
        return data

    def next_cluster(self, cluster: int) -> int | None:
        if self.kind == 32:
            value = struct.unpack("<I", self._fat_bytes(cluster * 4, 4))[0] & 0x0FFFFFFF
            end = value >= 0x0FFFFFF8
        elif self.kind == 16:
            value = struct.unpack("<H", self._fat_bytes(cluster * 2, 2))[0]
            end = value >= 0xFFF8
        else:
            pair = struct.unpack("<H", self._fat_bytes(cluster * 3 // 2, 2))[0]
            value = pair >> 4 if cluster & 1 else pair & 0x0FFF
            end = value >= 0xFF8
        return None if end or value < 2 else value

    def _chain(self, cluster: int, limit_bytes: int) -> bytes:
        data, seen = b"", set()
        current: int | None = cluster
        while current is not None and len(data) < limit_bytes:
            if current in seen:
                raise ParseError(self.source, None, f"FAT cluster chain loops at cluster {current}")
            if current < 2 or current >= self.clusters + 2:
                raise ParseError(self.source, None, f"FAT cluster {current} is outside the volume's "
                                                    f"{self.clusters} clusters")
            seen.add(current)
            data += self._read_exactly(self.data_offset + (current - 2) * self.cluster_bytes, self.cluster_bytes,
                                       f"cluster {current}")
            current = self.next_cluster(current)
        return data

    def listdir(self, directory: Entry | None = None) -> list[Entry]:
        if directory is None and self.kind != 32:
            raw = self.read(self.root_offset, self.root_size)
        else:
            raw = self._chain(directory.cluster if directory else self.root_cluster, MAX_ENTRIES * 32)
        entries: list[Entry] = []
        long_name: list[bytes] = []
        for offset in range(0, len(raw) - 31, 32):
            record = raw[offset:offset + 32]
            if record[0] == 0:
                break
            if record[0] == 0xE5:
                long_name = []
                continue
            attr = record[11]
            if attr == ATTR_LFN:
                long_name.insert(0, record[1:11] + record[14:26] + record[28:32])
                continue
            if attr & ATTR_VOLUME:
                long_name = []
                continue
            if long_name:
                name = b"".join(long_name).decode("utf-16-le", errors="replace").split("\0")[0]
            else:
                base, ext = record[:8].decode("latin-1").rstrip(), record[8:11].decode("latin-1").rstrip()
                name = f"{base}.{ext}" if ext else base
            long_name = []
            if name in (".", ".."):
                continue
            (high,) = struct.unpack_from("<H", record, 20)
            low, size = struct.unpack_from("<HI", record, 26)
            cluster = (high << 16 | low) if self.kind == 32 else low
            entries.append(Entry(name, bool(attr & ATTR_DIRECTORY), cluster, size))
        return entries

    def read_file(self, entry: Entry) -> bytes:
        if entry.size > MAX_FILE:
            raise ParseError(self.source, None, f"{entry.name} is larger than {MAX_FILE} bytes")
        return self._chain(entry.cluster, entry.size)[: entry.size] if entry.size else b""

    def files(self) -> dict[str, tuple[int, str]]:
        """Every file as path -> (size, sha256), paths upper-cased (FAT is case-insensitive)."""
        found: dict[str, tuple[int, str]] = {}

        import hashlib  # loads OpenSSL: only for hosts whose ESPs are compared

        def walk(directory: Entry | None, prefix: str, depth: int) -> None:
            if depth > 8:
                return
            for entry in self.listdir(directory):
                path = f"{prefix}/{entry.name}".upper()
                if entry.is_dir:
                    walk(entry, path, depth + 1)
                elif len(found) < MAX_ENTRIES:
                    found[path] = (entry.size, hashlib.sha256(self.read_file(entry)).hexdigest())

        walk(None, "", 0)
        return found


def efi_loaders(files: dict[str, tuple[int, str]]) -> list[str]:
    """The boot loaders on an ESP: the removable-media path and each vendor's .efi files."""
    return sorted(p for p in files if p == "/EFI/BOOT/BOOTX64.EFI"
                  or (p.startswith("/EFI/") and p.endswith(".EFI") and p.count("/") == 3
                      and not p.startswith("/EFI/BOOT/")))
