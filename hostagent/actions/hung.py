"""The force-fail ladder for a hung md member: what turns a hang back into a working array.

1. ``mdadm --fail`` marks the member faulty (returns at once even while it hangs).
2. If the member still holds the array's I/O (array ``write-pending``, I/O in flight, or a dm
   member, whose I/O in flight is not counted), error out the hung I/O below md:
   dm: load an ``error`` table and resume; SCSI/SATA/SAS/USB: ``device/state`` = offline, and
   only if I/O is still held long after, ``device/delete``; NVMe: reset the controller, and only
   if still held, delete it (fabrics) or remove its PCI function (PCIe).  virtio-blk and Xen
   disks offer nothing inside the guest.
3. ``mdadm --remove failed`` once the I/O has drained.
Each step runs in a child process with a timeout, is audited, and is followed by a re-read.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hostagent.actions import AuditLog, Outcome, Step, perform
from hostagent.errors import ActionRefused
from hostagent.host import Host, sysfs_write
from hostagent.inventory import MdArray, MdMember, read_arrays
from hostagent.names import is_kernel_name
from hostagent.records import record
from hostagent.sources.blockdev import parent_disks, read_disk
from hostagent.sources.blockstat import read_blockstat

SCSI_TRANSPORTS = ("ata", "sas", "scsi", "usb")
ACTION = "disk.fail"


SCSI_SETTLE_MARGIN = 5.0  # s past the device's own command timeout
SETTLE_MAX = 120.0  # s the ladder (and so the daemon's loop) waits at most before the fallback
SD_FLUSH_TIMEOUT_MULTIPLIER = 2  # drivers/scsi/sd.h: a cache flush may take twice device/timeout


@record(frozen=True)
class DeviceLayer:
    """How to error out I/O held below md.  ``steps`` always run; ``fallback`` runs only if the
    member still holds I/O ``settle`` seconds later.  A SCSI disk taken offline has its held
    command failed at that command's timeout (the midlayer rejects the retry), which for md's
    superblock cache flush is twice ``device/timeout``; ``device/delete`` while the command is
    outstanding does not end it sooner (observed on 6.1), so it is only the fallback."""

    kind: str  # dm, scsi, nvme, or none
    steps: tuple[tuple[str, ...], ...]
    note: str = ""
    fallback: tuple[tuple[str, ...], ...] = ()
    settle: float = 0.0

    @property
    def all_steps(self) -> tuple[tuple[str, ...], ...]:
        return self.steps + self.fallback


def refusals(array: MdArray, member: MdMember, hung_members: set[str]) -> list[str]:
    """Why this member must not be failed (empty: it may be)."""
    reasons = []
    if array.loses_data_without(member):
        reasons.append(f"{member.device} holds the last in-sync copy of some of {array.name}'s data")
    others = [m.device for m in array.members if m.device != member.device
              and ("faulty" in m.states or m.device in hung_members)]
    if others:
        reasons.append(f"{', '.join(others)} of {array.name} {'is' if len(others) == 1 else 'are'} also hung or "
                       "failing: that points at the controller or bus, and failing more members loses the array")
    if "rebuilding" in member.states:
        reasons.append(f"{array.name} is recovering onto {member.device}")
    return reasons


def device_layer(host: Host, member: str, arrays: list[MdArray]) -> DeviceLayer:
    """How to error out I/O hung below ``member``, or why it cannot be done here."""
    base = f"/sys/class/block/{member}"
    if member.startswith("dm-"):
        name = (host.read_optional(f"{base}/dm/name") or "").strip()
        size = (host.read_optional(f"{base}/size") or "").strip()
        if name and size.isdigit():
            return DeviceLayer("dm", (("dmsetup", "load", name, "--table", f"0 {size} error"),
                                      ("dmsetup", "resume", name)))
        return DeviceLayer("none", (), f"{member}: dm name or size unreadable")
    disks = parent_disks(host, member)
    if len(disks) != 1:
        return DeviceLayer("none", (), f"{member} does not sit on exactly one disk ({', '.join(disks) or 'none'})")
    disk = disks[0]
    for array in arrays:  # erroring out the whole disk must not take the last copy of another array
        for other in array.members:
            if other.device != member and disk in parent_disks(host, other.device) and array.loses_data_without(other):
                return DeviceLayer("none", (), f"{disk} also holds {other.device}, the last in-sync copy in "
                                                f"{array.name}; the disk is left in place")
    transport = read_disk(host, disk).transport
    if transport in SCSI_TRANSPORTS:
        timeout = (host.read_optional(f"/sys/block/{disk}/device/timeout") or "").strip()
        seconds = int(timeout) if timeout.isdigit() and int(timeout) < 3600 else 30
        settle = min(SD_FLUSH_TIMEOUT_MULTIPLIER * seconds + SCSI_SETTLE_MARGIN, SETTLE_MAX)
        return DeviceLayer("scsi", (sysfs_write(f"/sys/block/{disk}/device/state", "offline"),),
                           fallback=(sysfs_write(f"/sys/block/{disk}/device/delete", "1"),), settle=settle)
    if transport == "nvme":
        controller = (host.readlink(f"/sys/block/{disk}/device") or "").rstrip("/").rsplit("/", 1)[-1]
        if controller.startswith("nvme") and is_kernel_name(controller):
            # fabrics controllers have delete_controller; a PCIe one has none (the kernel hides it),
            # and removing its PCI function is what takes it away
            base = f"/sys/class/nvme/{controller}"
            away = f"{base}/delete_controller" if host.exists(f"{base}/delete_controller") else f"{base}/device/remove"
            return DeviceLayer("nvme", (sysfs_write(f"{base}/reset_controller", "1"),),
                               fallback=(sysfs_write(away, "1"),), settle=SCSI_SETTLE_MARGIN)
    return DeviceLayer("none", (), f"{disk} is a {transport} disk: nothing inside this host can error out its "
                                   "in-flight I/O; writes stay blocked until the device answers")


def ladder(host: Host, array: MdArray, member: MdMember, arrays: list[MdArray]) -> list[Step]:
    """The whole ladder as steps (what a dry run shows)."""
    layer = device_layer(host, member.device, arrays)
    argvs = [("mdadm", "--manage", array.dev_path, "--fail", member.dev_path), *layer.all_steps,
             ("mdadm", "--manage", array.dev_path, "--remove", "failed")]
    return [Step(ACTION, f"{array.name}/{member.device}", f"force {member.device} out of {array.name}", argv)
            for argv in argvs]


def _array_state(host: Host, array: MdArray) -> str:
    return (host.read_optional(f"/sys/block/{array.name}/md/array_state") or "").strip()


def _held(host: Host, array: MdArray, device: str, layer: DeviceLayer) -> bool:
    """Whether the failed member may still hold the array's I/O: the array waits on a write, or
    the member has I/O in flight.  A dm device counts none (bio-based), so for dm the answer is
    always yes: a crawling dm member holds md's write without the array being write-pending."""
    if layer.kind == "dm" or _array_state(host, array) == "write-pending":
        return True
    stat = read_blockstat(host, device)
    return stat is not None and stat.pending > 0


def _wait(condition: Callable[[], bool], seconds: float, sleep: Callable[[float], None]) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        sleep(0.2)


def force_fail(host: Host, array_name: str, member_name: str, *, apply: bool, audit: AuditLog, timeout: float,
               unblock_after: float, hung_members: set[str] | None = None,
               sleep: Callable[[float], None] = time.sleep) -> tuple[list[Outcome], list[str]]:
    """Run the ladder for one member with the interlocks; returns the outcomes and notes."""
    arrays = read_arrays(host)
    array = next((a for a in arrays if a.name == array_name), None)
    member = next((m for m in array.members if m.device == member_name), None) if array else None
    if array is None or member is None:
        raise ActionRefused(f"{member_name} is not a member of {array_name}")
    reasons = refusals(array, member, hung_members or set())
    if reasons:
        audit.record({"event": "refused", "action": ACTION, "subject": f"{array_name}/{member_name}",
                      "reasons": reasons})
        raise ActionRefused(f"refusing to fail {member_name} in {array_name}: " + "; ".join(reasons))
    steps = ladder(host, array, member, arrays)
    layer = device_layer(host, member.device, arrays)
    if not apply:
        return perform(host, steps, apply=False, audit=audit, timeout=timeout), [layer.note] if layer.note else []
    notes: list[str] = []
    outcomes = perform(host, steps[:1], apply=True, audit=audit, timeout=timeout)
    if not outcomes[-1].ok:
        return outcomes, notes

    def released() -> bool:
        return not _held(host, array, member.device, layer)

    if _wait(released, unblock_after, sleep):
        notes.append(f"{array.name} accepts writes after mdadm --fail")
    elif layer.steps:
        notes.append(f"{member.device} still holds {array.name}'s I/O {unblock_after:g} s after mdadm --fail: "
                     f"erroring out the {layer.kind} layer")
        first = steps[1:1 + len(layer.steps)]
        outcomes += perform(host, first, apply=True, audit=audit, timeout=timeout)
        if not outcomes[-1].ok:
            return outcomes, notes
        if layer.fallback and not _wait(released, layer.settle, sleep):
            notes.append(f"{member.device} still holds I/O {layer.settle:g} s later: taking the device away")
            fallback = steps[1 + len(layer.steps):1 + len(layer.all_steps)]
            outcomes += perform(host, fallback, apply=True, audit=audit, timeout=timeout)
            if not outcomes[-1].ok:
                return outcomes, notes
        elif layer.fallback:
            _, path, value = layer.fallback[0]
            notes.append(f"{member.device}'s held I/O was failed by the kernel; "
                         f"writing {value} to {path} was not needed")
    else:
        notes.append(layer.note)

    def drained() -> bool:
        stat = read_blockstat(host, member.device)
        return stat is None or stat.pending == 0

    if _wait(drained, unblock_after, sleep):
        outcomes += perform(host, steps[-1:], apply=True, audit=audit, timeout=timeout)
    else:
        notes.append(f"{member.device} still has I/O in flight; it stays listed as faulty until that drains")
    state = _array_state(host, array)
    notes.append(f"{array.name} array_state is now {state or 'unknown'}")
    return outcomes, notes
