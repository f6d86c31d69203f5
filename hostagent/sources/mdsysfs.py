"""/sys/block/<md>/md/: the pure parser ``parse_md_sysfs`` and the reader ``read_md_sysfs``.

Attribute meanings follow Documentation/admin-guide/md.rst.  The reader only collects raw
text; the parser interprets it, so a snapshot directory parses exactly like the live tree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from hostagent.errors import ParseError
from hostagent.host import Host
from hostagent.names import kernel_names
from hostagent.records import record
from hostagent.sources.bounds import MAX_MEMBERS, MAX_U64
from hostagent.sources.bounds import number as bounded

ARRAY_ATTRS = (
    "level", "array_state", "raid_disks", "degraded", "sync_action", "sync_completed",
    "sync_speed", "mismatch_cnt", "metadata_version", "layout", "chunk_size",
)
MEMBER_ATTRS = ("state", "slot", "errors")
LAYOUT_MAX = (1 << 18) - 1  # raid10: near (bits 0-7), far (8-15), offset (16), far sets (17); raid5/6: < 32


@record(frozen=True)
class SysfsMember:
    device: str
    states: tuple[str, ...]
    slot: int | None
    errors: int | None


@record(frozen=True)
class SysfsArray:
    name: str
    level: str | None
    array_state: str | None
    raid_disks: int | None
    raid_disks_before_reshape: int | None
    degraded: int | None
    sync_action: str | None
    sync_completed: tuple[int, int] | str | None  # (done, total) sectors, "none" or "delayed"
    sync_speed_kbps: int | None
    mismatch_cnt: int | None
    metadata_version: str | None
    layout: int | None
    members: tuple[SysfsMember, ...]


def md_sysfs_dir(name: str) -> str:
    return f"/sys/block/{name}/md"


def list_md_sysfs(host: Host) -> list[str]:
    """Names of md devices that have an md/ directory in sysfs."""
    names = kernel_names(host.listdir("/sys/block"), "/sys/block")
    return [n for n in names if n.startswith("md") and host.exists(md_sysfs_dir(n))]


def read_md_sysfs(host: Host, name: str) -> SysfsArray | None:
    base = md_sysfs_dir(name)
    entries = kernel_names(host.listdir(base), base)
    if not entries:
        return None
    attrs = {a: text for a in ARRAY_ATTRS if a in entries and (text := host.read_optional(f"{base}/{a}")) is not None}
    members: dict[str, dict[str, str]] = {}
    for entry in entries:
        if entry.startswith("dev-"):
            member_attrs = {}
            for attr in MEMBER_ATTRS:
                text = host.read_optional(f"{base}/{entry}/{attr}")
                if text is not None:
                    member_attrs[attr] = text
            members[entry[4:]] = member_attrs
    slot_links = {}
    for entry in entries:
        if re.fullmatch(r"rd[0-9]{1,4}", entry):
            # A symlink in sysfs; snapshots that cannot keep links store the target as text.
            target = host.readlink(f"{base}/{entry}") or (host.read_optional(f"{base}/{entry}") or "").strip()
            if target:
                slot_links[int(entry[2:])] = target.rsplit("/", 1)[-1]
    return parse_md_sysfs(name, attrs, members, slot_links, source=str(host.path(base)))


def parse_md_sysfs(
    name: str,
    attrs: Mapping[str, str],
    members: Mapping[str, Mapping[str, str]],
    slot_links: Mapping[int, str],
    source: str,
) -> SysfsArray:
    """Interpret the raw attribute texts of one array (``slot_links``: rdN -> "dev-sda1")."""

    def text(attr: str) -> str | None:
        value = attrs.get(attr)
        return None if value is None else value.strip()

    def number(attr: str, high: int = MAX_U64) -> int | None:
        value = text(attr)
        if value is None or value in ("", "none"):
            return None
        return bounded(value, f"{source}/{attr}", 1, "", high)

    raid_disks, before = None, None
    raw_disks = text("raid_disks")
    if raw_disks:
        match = re.fullmatch(r"([0-9]{1,20})(?: \(([0-9]{1,20})\))?", raw_disks)
        if not match:
            raise ParseError(f"{source}/raid_disks", 1, f"expected 'N' or 'N (M)', got {raw_disks[:40]!r}")
        raid_disks = bounded(match[1], f"{source}/raid_disks", 1, "", MAX_MEMBERS)
        before = bounded(match[2], f"{source}/raid_disks", 1, "raid_disks before the reshape",
                         MAX_MEMBERS) if match[2] else None

    completed: tuple[int, int] | str | None = text("sync_completed")
    if isinstance(completed, str) and completed not in ("none", "delayed"):
        match = re.fullmatch(r"([0-9]{1,20}) / ([0-9]{1,20})", completed)
        if not match:
            raise ParseError(f"{source}/sync_completed", 1, f"expected 'N / M', got {completed[:40]!r}")
        done = bounded(match[1], f"{source}/sync_completed", 1, "sectors done")
        total = bounded(match[2], f"{source}/sync_completed", 1, "sectors in all")
        if done > total:
            raise ParseError(f"{source}/sync_completed", 1, f"{done} sectors done of {total}")
        completed = (done, total)
    slot_limit = (max(raid_disks, before or 0) if raid_disks is not None else MAX_MEMBERS) - 1

    slots: dict[str, int] = {}
    for index, target in slot_links.items():
        if index > slot_limit:
            raise ParseError(f"{source}/rd{index}", None, f"slot {index} is beyond the array's {slot_limit + 1} slots")
        if not target.startswith("dev-"):
            raise ParseError(f"{source}/rd{index}", None, f"link points to {target!r}, not a dev-* entry")
        slots[target[4:]] = index
    parsed = []
    for device in sorted(set(members) | set(slots)):
        raw = members.get(device, {})
        state_text = (raw.get("state") or "").strip()
        states = tuple(s for s in state_text.split(",") if s)
        slot_text = (raw.get("slot") or "").strip()
        slot: int | None = slots.get(device)
        if slot_text == "none":
            slot = None
        elif slot_text:
            slot = bounded(slot_text, f"{source}/dev-{device}/slot", 1, "", slot_limit)
        errors_text = (raw.get("errors") or "").strip()
        errors = bounded(errors_text, f"{source}/dev-{device}/errors", 1, "") if errors_text else None
        parsed.append(SysfsMember(device, states, slot, errors))

    degraded = number("degraded", MAX_MEMBERS if raid_disks is None else raid_disks)
    level = text("level") or None
    layout = number("layout", LAYOUT_MAX)
    if level == "raid10" and layout is not None:
        near, far = layout & 0xFF, (layout >> 8) & 0xFF
        if near < 1 or far < 1 or (raid_disks is not None and near * far > raid_disks):
            raise ParseError(f"{source}/layout", 1, f"raid10 layout {layout:#x}: {near} near and {far} far copies "
                                                    f"on {raid_disks} disks (raid10.c allows 1..raid_disks copies)")
    return SysfsArray(
        name=name,
        level=level,
        array_state=text("array_state") or None,
        raid_disks=raid_disks,
        raid_disks_before_reshape=before,
        degraded=degraded,
        sync_action=text("sync_action") or None,
        sync_completed=completed,
        sync_speed_kbps=number("sync_speed"),
        mismatch_cnt=number("mismatch_cnt"),
        metadata_version=text("metadata_version") or None,
        layout=layout,
        members=tuple(parsed),
    )
