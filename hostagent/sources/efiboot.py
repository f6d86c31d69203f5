"""``efibootmgr -v`` output: the firmware's boot entries and which ESP partition each names."""

from __future__ import annotations

import re

from hostagent.records import record

_ENTRY = re.compile(r"^Boot(?P<num>[0-9A-Fa-f]{4})(?P<active>\*?)\s+(?P<rest>.*)$")
_HD = re.compile(r"HD\((?P<part>\d+),GPT,(?P<guid>[0-9a-fA-F-]{36})", re.IGNORECASE)
_FILE = re.compile(r"File\((?P<path>[^)]*)\)")


@record(frozen=True)
class BootEntry:
    number: str
    active: bool
    label: str
    partition_guid: str | None
    loader: str | None


def parse_efibootmgr(text: str) -> tuple[list[BootEntry], list[str]]:
    """(entries, boot order) from ``efibootmgr -v``; lines it does not know are ignored."""
    entries, order = [], []
    for line in text.splitlines():
        if line.startswith("BootOrder:"):
            order = [n.strip().upper() for n in line.split(":", 1)[1].split(",") if n.strip()]
            continue
        match = _ENTRY.match(line)
        if not match:
            continue
        rest = match["rest"]
        hd, loader = _HD.search(rest), _FILE.search(rest)
        label = re.split(r"\t|\s{2,}|\s(?=HD\()|\s(?=PciRoot)", rest, maxsplit=1)[0].strip()
        entries.append(BootEntry(match["num"].upper(), bool(match["active"]), label,
                                 hd["guid"].lower() if hd else None, loader["path"] if loader else None))
    return entries, order
