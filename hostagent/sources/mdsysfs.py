"""/sys/block/<md>/md/: the pure parser ``parse_md_sysfs`` and the reader ``read_md_sysfs``.

Attribute meanings follow Documentation/admin-guide/md.rst.  The reader only collects raw
text; the parser interprets it, so a snapshot directory parses exactly like the live tree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from hostagent.errors import ParseError
from hostagent.host import Host
from hostagent.names import kernel_names

ARRAY_ATTRS = (
    "level", "array_state", "raid_disks", "degraded", "sync_action", "sync_completed",
    "sync_speed", "mismatch_cnt", "metadata_version", "layout", "chunk_size",
)
MEMBER_ATTRS = ("state", "slot", "errors")


@dataclass(frozen=True)
class SysfsMember:
    device: str
    states: tuple[str, ...]
    slot: int | None
    errors: int | None


@dataclass(frozen=True)
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
        if re.fullmatch(r"rd\d+", entry):
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

    def number(attr: str, value: str | None = None) -> int | None:
        value = text(attr) if value is None else value
        if value is None or value in ("", "none"):
            return None
        try:
            return int(value)
        except ValueError:
            raise ParseError(f"{source}/{attr}", 1, f"expected a number, got {value!r}") from None

    raid_disks, before = None, None
    raw_disks = text("raid_disks")
    if raw_disks:
        match = re.fullmatch(r"(\d+)(?: \((\d+)\))?", raw_disks)
        if not match:
            raise ParseError(f"{source}/raid_disks", 1, f"expected 'N' or 'N (M)', got {raw_disks!r}")
        raid_disks = int(match[1])
        before = int(match[2]) if match[2] else None

    completed: tuple[int, int] | str | None = text("sync_completed")
    if isinstance(completed, str) and completed not in ("none", "delayed"):
        match = re.fullmatch(r"(\d+) / (\d+)", completed)
        if not match:
            raise ParseError(f"{source}/sync_completed", 1, f"expected 'N / M', got {completed!r}")
        completed = (int(match[1]), int(match[2]))

    slots: dict[str, int] = {}
    for index, target in slot_links.items():
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
            try:
                slot = int(slot_text)
            except ValueError:
                raise ParseError(
                    f"{source}/dev-{device}/slot", 1, f"expected a number or 'none', got {slot_text!r}"
                ) from None
        errors_text = (raw.get("errors") or "").strip()
        errors = int(errors_text) if errors_text.isdigit() else None
        parsed.append(SysfsMember(device, states, slot, errors))

    return SysfsArray(
        name=name,
        level=text("level") or None,
        array_state=text("array_state") or None,
        raid_disks=raid_disks,
        raid_disks_before_reshape=before,
        degraded=number("degraded"),
        sync_action=text("sync_action") or None,
        sync_completed=completed,
        sync_speed_kbps=number("sync_speed"),
        mismatch_cnt=number("mismatch_cnt"),
        metadata_version=text("metadata_version") or None,
        layout=number("layout"),
        members=tuple(parsed),
    )
