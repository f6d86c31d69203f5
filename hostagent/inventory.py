"""What the host has: md arrays (merged from /proc/mdstat and sysfs), loaded lazily once.

Where both sources describe an array, sysfs is the authority; mdstat fills in what sysfs
lacks (speed and finish estimates, or everything when only mdstat was captured).
"""

from __future__ import annotations

import functools
from math import gcd
from typing import Any

from hostagent.errors import HostagentError
from hostagent.host import Host
from hostagent.records import record, replace
from hostagent.sources.blockdev import Disk, parent_disks, read_disks
from hostagent.sources.mdstat import MdstatArray, read_mdstat
from hostagent.sources.mdsysfs import SysfsArray, list_md_sysfs, read_md_sysfs

# sysfs sync_action names; mdstat's "recovery" is sysfs's "recover".
_MDSTAT_ACTION = {"recovery": "recover", "remote": "resync"}
REDUNDANT_LEVELS = ("raid1", "raid4", "raid5", "raid6", "raid10", "multipath")


@record(frozen=True)
class MdMember:
    device: str
    slot: int | None
    states: tuple[str, ...]
    errors: int | None = None

    @property
    def in_sync(self) -> bool:
        return "in_sync" in self.states and "faulty" not in self.states

    @property
    def dev_path(self) -> str:
        return "/dev/" + self.device.replace("!", "/")


@record(frozen=True)
class MdSync:
    action: str  # idle, resync, recover, check, repair, reshape, delayed, pending, frozen
    progress: float | None = None
    speed_kbps: int | None = None
    eta_s: int | None = None

    @property
    def running(self) -> bool:
        return self.action in ("resync", "recover", "check", "repair", "reshape")


@record(frozen=True)
class MdArray:
    name: str
    level: str | None
    state: str
    read_only: str | None  # "read-only", "auto-read-only" or None
    raid_disks: int | None
    degraded_disks: int
    members: tuple[MdMember, ...]
    sync: MdSync
    metadata: str | None = None
    container: str | None = None  # for a volume with external metadata: its container
    slot_map: str | None = None
    mismatch_cnt: int | None = None
    near_copies: int = 2
    far_copies: int = 1
    far_sets: bool = False
    broken: bool = False

    @property
    def dev_path(self) -> str:
        return f"/dev/{self.name}"

    @property
    def is_container(self) -> bool:
        return self.level == "container" or (
            self.metadata is not None
            and self.metadata.startswith("external:")
            and "/" not in self.metadata
        )

    @property
    def active(self) -> bool:
        return self.state not in ("inactive", "clear")

    @property
    def active_disks(self) -> int | None:
        return None if self.raid_disks is None else self.raid_disks - self.degraded_disks

    @property
    def degraded(self) -> bool:
        return self.degraded_disks > 0 or self.broken

    def missing_slots(self) -> tuple[int, ...]:
        """Slots with no in-sync member, from sysfs members or mdstat's [UU_] map."""
        if self.raid_disks is None:
            return ()
        if self.slot_map is not None:
            return tuple(i for i, c in enumerate(self.slot_map) if c != "U")
        synced = {m.slot for m in self.members if m.in_sync}
        return tuple(i for i in range(self.raid_disks) if i not in synced)

    def loses_data_without(self, member: MdMember) -> bool:
        """Whether this in-sync member holds the last copy of some of the array's data.

        This is the interlock behind "never fail the last in-sync member".
        """
        if not member.in_sync:
            return False
        if self.level in ("raid0", "linear"):
            return True
        if self.level in ("raid4", "raid5"):
            return self.degraded_disks >= 1
        if self.level == "raid6":
            return self.degraded_disks >= 2
        synced = {m.slot for m in self.members if m.in_sync and m.slot is not None}
        if member.slot is None:
            return len([m for m in self.members if m.in_sync]) <= 1
        return any(member.slot in group and not (group & synced) - {member.slot} for group in self.copy_sets())

    def copy_sets(self) -> list[frozenset[int]]:
        """Groups of slots that hold copies of the same data (raid1/multipath: one group)."""
        disks = self.raid_disks or 0
        if self.level in ("raid1", "multipath"):
            return [frozenset(range(disks))]
        if self.level != "raid10" or disks == 0:
            return []
        return raid10_copy_sets(disks, self.near_copies, self.far_copies, self.far_sets)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "level": self.level,
            "state": self.state,
            "read_only": self.read_only,
            "raid_disks": self.raid_disks,
            "active_disks": self.active_disks,
            "degraded": self.degraded,
            "degraded_disks": self.degraded_disks,
            "metadata": self.metadata,
            "container": self.container,
            "mismatch_cnt": self.mismatch_cnt,
            "members": [
                {"device": m.device, "slot": m.slot, "states": list(m.states)} for m in self.members
            ],
            "sync": {
                "action": self.sync.action,
                "progress": self.sync.progress,
                "speed_kbps": self.sync.speed_kbps,
                "eta_s": self.sync.eta_s,
            },
        }


@functools.lru_cache(maxsize=64)  # asked once per member by the interlock; the worst legal layout takes ~1 s
def raid10_copy_sets(disks: int, near: int, far: int, far_sets: bool = False) -> list[frozenset[int]]:
    """Slot groups holding the copies of one chunk, following raid10.c's __raid10_find_phys.

    Offset layouts place copies on the same devices as far layouts, so ``far`` covers both.
    """
    near, far = max(near, 1), max(far, 1)
    set_size = near * far if far_sets and disks % (near * far) == 0 else disks
    groups = set()
    period = disks // gcd(disks, near) or 1
    for chunk in range(period):
        first = (chunk * near) % disks
        slots = set()
        for n in range(near):
            dev = (first + n) % disks
            slots.add(dev)
            set_start = (dev // set_size) * set_size
            for f in range(1, far):
                slots.add(set_start + (dev - set_start + f * near) % set_size)
        groups.add(frozenset(slots))
    return sorted(groups, key=sorted)


def merge_array(name: str, stat: MdstatArray | None, sysfs: SysfsArray | None) -> MdArray:
    """One array from whatever sources describe it; sysfs wins where both speak."""
    level = _level(stat, sysfs)
    metadata = sysfs.metadata_version if sysfs and sysfs.metadata_version else None
    if metadata is None and stat is not None:
        metadata = stat.superblock or ("0.90" if stat.blocks is not None and stat.state != "inactive" else None)
    container = None
    if metadata and metadata.startswith("external:") and "/" in metadata:
        container = metadata.split(":", 1)[1].lstrip("-/").split("/")[0]

    state, read_only = _state(stat, sysfs)
    raid_disks = sysfs.raid_disks if sysfs and sysfs.raid_disks is not None else (stat.raid_disks if stat else None)
    if sysfs is not None and sysfs.degraded is not None:
        degraded = sysfs.degraded
    elif stat is not None and stat.raid_disks is not None and stat.working_disks is not None:
        degraded = stat.raid_disks - stat.working_disks
    else:
        degraded = 0

    near, far, far_sets = 2, 1, False
    if sysfs is not None and sysfs.layout is not None and level == "raid10":
        near, far = sysfs.layout & 0xFF, (sysfs.layout >> 8) & 0xFF
        far_sets = bool(sysfs.layout & (1 << 17))
    elif stat is not None and (stat.near_copies or stat.far_copies or stat.offset_copies):
        near = stat.near_copies or 1
        far = stat.far_copies or stat.offset_copies or 1

    return MdArray(
        name=name,
        level=level,
        state=state,
        read_only=read_only,
        raid_disks=raid_disks,
        degraded_disks=max(degraded, 0),
        members=_members(stat, sysfs, raid_disks),
        sync=_sync(stat, sysfs),
        metadata=metadata,
        container=container,
        slot_map=None if sysfs is not None and sysfs.members else (stat.slot_map if stat else None),
        mismatch_cnt=sysfs.mismatch_cnt if sysfs else None,
        near_copies=near,
        far_copies=far,
        far_sets=far_sets,
        broken=(sysfs is not None and sysfs.array_state == "broken") or (stat is not None and stat.state == "broken"),
    )


def _level(stat: MdstatArray | None, sysfs: SysfsArray | None) -> str | None:
    if sysfs is not None and sysfs.level:
        return sysfs.level
    if stat is None:
        return None
    if stat.personality:
        return stat.personality
    if stat.superblock and stat.superblock.startswith("external:") and "/" not in stat.superblock:
        return "container"
    return None


def _state(stat: MdstatArray | None, sysfs: SysfsArray | None) -> tuple[str, str | None]:
    if sysfs is not None and sysfs.array_state:
        state = sysfs.array_state
        read_only = {"readonly": "read-only", "read-auto": "auto-read-only"}.get(state)
        if read_only is None and stat is not None:
            read_only = stat.read_only
        return state, read_only
    if stat is None:
        return "unknown", None
    if stat.read_only:
        return stat.read_only, stat.read_only
    return stat.state, None


def _members(stat: MdstatArray | None, sysfs: SysfsArray | None, raid_disks: int | None) -> tuple[MdMember, ...]:
    from_sysfs = {m.device: m for m in sysfs.members} if sysfs else {}
    members: dict[str, MdMember] = {}
    if stat is not None:
        members.update((m.device, m) for m in _mdstat_members(stat))
    for device, sm in from_sysfs.items():
        states = sm.states
        if "spare" in states and sm.slot is not None and "faulty" not in states:
            states = tuple("rebuilding" if s == "spare" else s for s in states)
        members[device] = MdMember(device, sm.slot, states, sm.errors)
    return tuple(sorted(members.values(), key=lambda m: (m.slot is None, m.slot or 0, m.device)))


def _mdstat_members(stat: MdstatArray) -> list[MdMember]:
    """Members from mdstat's flags; in_sync is inferred from the [UU_] map and bracket numbers.

    The bracket number is the kernel's descriptor number, which equals the slot for members
    that were never re-added; a number beyond the slot count is no slot at all.
    """
    candidates = {id(m) for m in stat.members if not {"faulty", "spare", "journal"} & set(m.flags)}
    slot_map = stat.slot_map or ""
    running = stat.state != "inactive"
    all_in_sync = running and (not slot_map or len(candidates) == slot_map.count("U"))
    holes = [i for i, c in enumerate(slot_map) if c != "U"]
    rebuilding = 0
    members = []
    for member in stat.members:
        states = list(member.flags)
        slot: int | None = member.desc_nr
        if id(member) in candidates and running:
            synced = all_in_sync or (member.desc_nr < len(slot_map) and slot_map[member.desc_nr] == "U")
            states.insert(0, "in_sync" if synced else "rebuilding")
            rebuilding += not synced
        if {"faulty", "spare"} & set(member.flags) or (
            stat.raid_disks is not None and member.desc_nr >= stat.raid_disks
        ):
            slot = None
        members.append(MdMember(member.device, slot, tuple(states)))
    if rebuilding == 1 and len(holes) == 1:  # the one rebuilding member fills the one hole
        members = [replace(m, slot=holes[0]) if "rebuilding" in m.states else m for m in members]
    return members


def _sync(stat: MdstatArray | None, sysfs: SysfsArray | None) -> MdSync:
    stat_sync = stat.sync if stat else None
    waiting = stat_sync.action if stat_sync and stat_sync.action in ("delayed", "pending") else None
    if sysfs is not None and sysfs.sync_action:
        if sysfs.sync_completed == "delayed" or waiting == "delayed":
            return MdSync("delayed")
        if waiting == "pending" and sysfs.sync_action in ("idle", "frozen"):
            return MdSync("pending")
        action = sysfs.sync_action
        if action in ("idle", "frozen"):
            return MdSync(action)
        progress = eta = None
        speed = sysfs.sync_speed_kbps
        if isinstance(sysfs.sync_completed, tuple):
            done, total = sysfs.sync_completed
            progress = done / total if total else None
            if speed:
                eta = round((total - done) / 2 / speed)
        if stat_sync is not None and stat_sync.progress is not None:
            progress = stat_sync.progress if progress is None else progress
            speed = speed or stat_sync.speed_kbps
            eta = eta if eta is not None else stat_sync.finish_s
        return MdSync(action, progress, speed, eta)
    if stat_sync is None:
        return MdSync("idle")
    action = _MDSTAT_ACTION.get(stat_sync.action, stat_sync.action)
    return MdSync(action, stat_sync.progress, stat_sync.speed_kbps, stat_sync.finish_s)


def read_arrays(host: Host) -> list[MdArray]:
    """Every md array the host has: names from /proc/mdstat and from /sys/block/md*/md."""
    mdstat = read_mdstat(host)
    from_stat = {a.name: a for a in mdstat.arrays} if mdstat else {}
    names = list(from_stat)
    names += [n for n in list_md_sysfs(host) if n not in from_stat]
    arrays = []
    for name in names:
        sysfs = read_md_sysfs(host, name)
        arrays.append(merge_array(name, from_stat.get(name), sysfs))
    return arrays


@record(frozen=True)
class Membership:
    """One md member that lives on a disk."""

    array: MdArray
    member: MdMember

    @property
    def label(self) -> str:
        return f"{self.array.name}:{self.member.device}"


class Inventory:
    """Lazily loaded host inventory shared by the checks of one run."""

    def __init__(self, host: Host, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> None:
        self.host = host
        self.include = include
        self.exclude = exclude
        self._arrays: list[MdArray] | None = None
        self._arrays_error: Exception | None = None
        self._disks: list[Disk] | None = None
        self._members: dict[str, list[Membership]] | None = None

    def disks(self) -> list[Disk]:
        if self._disks is None:
            self._disks = read_disks(self.host, self.include, self.exclude)
        return self._disks

    def memberships(self, disk: str) -> list[Membership]:
        """The md members held on ``disk`` (through partitions, dm and nested md).

        When the arrays cannot be read, the md check reports that; here the disk simply
        has no known memberships, so disk checks still run.
        """
        if self._members is None:
            found: dict[str, list[Membership]] = {}
            try:
                arrays = self.arrays()
            except HostagentError:
                arrays = []
            for array in arrays:
                for member in array.members:
                    for parent in parent_disks(self.host, member.device):
                        found.setdefault(parent, []).append(Membership(array, member))
            self._members = found
        return self._members.get(disk, [])

    def arrays(self) -> list[MdArray]:
        if self._arrays_error is not None:
            raise self._arrays_error
        if self._arrays is None:
            try:
                self._arrays = read_arrays(self.host)
            except Exception as err:
                self._arrays_error = err
                raise
        return self._arrays

    def to_json(self) -> dict[str, Any]:
        loaded = self._arrays if self._arrays is not None else []
        result: dict[str, Any] = {"arrays": [a.to_json() for a in loaded]}
        if self._disks is not None:
            result["disks"] = [
                {"name": d.name, "transport": d.transport, "model": d.model, "serial": d.serial,
                 "size_bytes": d.size_bytes, "rotational": d.rotational,
                 "arrays": [m.label for m in self.memberships(d.name)] if self._arrays is not None else []}
                for d in self._disks
            ]
        return result
