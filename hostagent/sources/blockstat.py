"""Block-layer counters: /sys/class/block/<dev>/stat and inflight (Documentation/block/stat.rst)."""

from __future__ import annotations

import re

from hostagent.errors import ParseError
from hostagent.host import Host
from hostagent.records import record, replace


@record(frozen=True)
class BlockStat:
    reads: int  # field 1: read I/Os completed
    writes: int  # field 5: write I/Os completed
    in_flight: int  # field 9
    io_ticks_ms: int  # field 10: time the device had I/O in flight
    in_flight_reads: int | None = None  # from the inflight file, when read
    in_flight_writes: int | None = None
    read_ms: int = 0  # field 4: milliseconds reads took, summed over the completed reads
    write_ms: int = 0  # field 8: the same for writes

    @property
    def completed(self) -> int:
        return self.reads + self.writes

    @property
    def pending(self) -> int:
        if self.in_flight_reads is not None and self.in_flight_writes is not None:
            return self.in_flight_reads + self.in_flight_writes
        return self.in_flight


_COUNTER = re.compile(r"[0-9]{1,20}")  # unsigned 64-bit, ASCII digits


def parse_stat(text: str, source: str) -> BlockStat:
    fields = text.split()
    if len(fields) < 11 or not all(_COUNTER.fullmatch(f) for f in fields):
        raise ParseError(source, 1, f"expected at least 11 numbers, got {text.strip()!r}")
    values = [int(f) for f in fields]
    return BlockStat(values[0], values[4], values[8], values[9], read_ms=values[3], write_ms=values[7])


def parse_inflight(text: str, source: str) -> tuple[int, int]:
    fields = text.split()
    if len(fields) != 2 or not all(_COUNTER.fullmatch(f) for f in fields):
        raise ParseError(source, 1, f"expected two numbers, got {text.strip()!r}")
    return int(fields[0]), int(fields[1])


def read_blockstat(host: Host, device: str) -> BlockStat | None:
    base = f"/sys/class/block/{device}"
    text = host.read_optional(f"{base}/stat")
    if text is None:
        return None
    stat = parse_stat(text, f"{base}/stat")
    inflight = host.read_optional(f"{base}/inflight")
    if inflight is None:
        return stat
    reads, writes = parse_inflight(inflight, f"{base}/inflight")
    return replace(stat, in_flight_reads=reads, in_flight_writes=writes)
