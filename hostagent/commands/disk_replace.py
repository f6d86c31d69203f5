"""``hostagent disk replace`` and ``disk locate``: the mirror-member replacement runbook as one command.

Phases, each recorded in the audit log (``replace.phase`` events of the new disk) so that a
re-run resumes where an interrupted one stopped:

1. identify: the old and the new disk by model, serial and slot (``/dev/disk/by-path``); the
   surviving member disk whose partition table is copied; refusals (a new disk that is smaller,
   in use, or holds partitions, an md superblock or a filesystem without ``--wipe``; an old
   disk whose members are still in sync).
2. vet: SMART health and a short self-test (with progress), a read test, and the CRC/link error
   counter before and after.  Verdicts: "DOA: return it" and "link errors: check the cable/slot".
3. wipe (``--wipe`` only), partition (``sfdisk --dump | sfdisk`` for MBR, ``sgdisk -R`` then
   ``sgdisk -G`` for GPT), remove the old members, ``mdadm --add`` each new partition, ERC/timeout
   per the erc check, GRUB through the boot check's repair.
4. resync: followed with speed and ETA; then every check runs again.

Everything that changes the disk runs through ``hostagent.actions.perform``: a dry run unless
applied, a child process with a timeout, and an audit record.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from checks import boot, erc
from hostagent import records
from hostagent.actions import AuditLog, Outcome, Step, perform
from hostagent.config import Config
from hostagent.context import CheckContext
from hostagent.errors import ActionRefused, HostagentError, ParseError, ProbeUnavailable
from hostagent.host import Host
from hostagent.inventory import MdArray, read_arrays
from hostagent.names import disk_of_partition
from hostagent.records import field, record
from hostagent.sources.blockdev import Disk, parent_disks, read_disk, read_disks
from hostagent.sources.smartctl import SelfTestStatus, SmartReport, parse_selftest_status, parse_smartctl

CRC_ATTRIBUTE = 199
LATER = {"tuned": "the ERC/kernel timeout of the new disk per the erc check",
         "resynced": "follow the resync of every array (speed, ETA)",
         "bootloader": "install the bootloader on the new disk per the boot check (grub-install, or the ESP copy)"}
SELFTEST_LIMIT_S = 15 * 60
MEDIA_ATTRIBUTES = {5: "reallocated sectors", 197: "pending sectors", 198: "offline uncorrectable"}


@record(frozen=True)
class DiskView:
    """What the operator needs to pull the right disk."""

    name: str
    model: str | None
    serial: str | None
    size_bytes: int | None
    slots: tuple[str, ...]  # /dev/disk/by-path names
    present: bool = True

    def describe(self) -> str:
        size = f"{self.size_bytes / 1e9:.1f} GB" if self.size_bytes else "size unknown"
        slot = ", ".join(self.slots) or "no by-path slot"
        state = "" if self.present else " (no longer visible to the kernel)"
        model, serial = self.model or "model unknown", self.serial or "unknown"
        return f"/dev/{self.name}: {model}, serial {serial}, {size}, {slot}{state}"


@record(frozen=True)
class ArrayPlan:
    array: str
    number: int  # partition number on every member disk
    template_member: str  # the surviving member: sda2
    new_member: str  # sdc2
    old_members: tuple[str, ...]  # the old disk's members still listed (faulty): sdb2


@record
class Plan:
    old: DiskView
    new: DiskView
    template: DiskView
    arrays: list[ArrayPlan]
    wipe: bool
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"old": dataclasses.asdict(self.old), "new": dataclasses.asdict(self.new),
                "template": dataclasses.asdict(self.template), "arrays": [dataclasses.asdict(a) for a in self.arrays],
                "wipe": self.wipe, "notes": self.notes}


# -- identification ------------------------------------------------------------------------


def slots(host: Host, disk: str) -> tuple[str, ...]:
    """Where a disk sits (controller, port, bay): its /dev/disk/by-path names, or without udev
    its device path in sysfs."""
    found = []
    for name in host.listdir("/dev/disk/by-path"):
        target = host.readlink(f"/dev/disk/by-path/{name}")
        if target is not None and os.path.basename(target) == disk:
            found.append(name)
    if not found:
        target = host.readlink(f"/sys/block/{disk}") or ""
        if "/devices/" in target:
            found.append("sysfs " + target.split("/devices/", 1)[1].removesuffix(f"/block/{disk}"))
    return tuple(found)


def view(host: Host, disk: Disk) -> DiskView:
    return DiskView(disk.name, disk.model, disk.serial, disk.size_bytes, slots(host, disk.name))


def resolve(host: Host, spec: str, disks: list[Disk], what: str) -> Disk | None:
    """A disk named by kernel name, /dev path, by-path/by-id link, or serial; None when not present."""
    name = spec.removeprefix("/dev/")
    if name.startswith("disk/"):
        target = host.readlink(f"/dev/{name}")
        if target is None:
            raise HostagentError(f"{what} {spec}: no such link")
        name = os.path.basename(target)
    by_name = [d for d in disks if d.name == name]
    by_serial = [d for d in disks if d.serial and d.serial == spec]
    found = by_name or by_serial
    if len(found) > 1:
        raise HostagentError(f"{what} {spec}: matches {', '.join(d.name for d in found)}; give the kernel name")
    if found:
        return found[0]
    if host.exists(f"/sys/block/{name}"):
        return read_disk(host, name)  # outside the disks filter (a dm device, say)
    return None


def _disk_of(host: Host, member: str) -> str:
    """The whole disk under a member; by name when the disk has gone from sysfs (sdb1 -> sdb, nvme0n1p2 -> nvme0n1)."""
    if host.exists(f"/sys/class/block/{member}"):
        return (parent_disks(host, member) or [member])[0]
    return disk_of_partition(member)


def _partition_number(host: Host, member: str) -> int:
    text = (host.read_optional(f"/sys/class/block/{member}/partition") or "").strip()
    if not text.isdigit():
        raise ActionRefused(f"{member} is not a partition: hostagent replaces partitioned mirror members only")
    return int(text)


def _member_name(disk: str, number: int) -> str:
    return boot.partition_device(disk, number).removeprefix("/dev/")


def plan(host: Host, old_spec: str, new_spec: str, *, wipe: bool, journal: dict[str, Any] | None) -> Plan:
    disks = read_disks(host)
    arrays = [a for a in read_arrays(host) if a.active and not a.is_container]
    new_disk = resolve(host, new_spec, disks, "--new")
    if new_disk is None:
        raise HostagentError(f"--new {new_spec}: no such disk (is it attached? see lsblk)")
    old_disk = resolve(host, old_spec, disks, "--old")
    recorded_old = (journal or {}).get("plan", {}).get("old", {}).get("name")
    old_name = old_disk.name if old_disk else recorded_old or old_spec.removeprefix("/dev/")
    if new_disk.name == old_name:
        raise ActionRefused(f"--new {new_spec} is the old disk")
    if journal and "added" in journal.get("done", []):  # resuming: the arrays of the interrupted run
        named = {a["array"] for a in journal["plan"]["arrays"]}
        touched = [a for a in arrays if a.name in named]
    else:
        touched = [a for a in arrays if a.degraded or any(_disk_of(host, m.device) == old_name for m in a.members)]
    if not touched:
        raise ActionRefused(f"no array is degraded or has a member on {old_name}: nothing to replace")
    array_plans, templates = [], set()
    for array in touched:
        if array.level not in ("raid1", "raid10", "raid4", "raid5", "raid6"):
            raise ActionRefused(f"{array.name} is {array.level}: only redundant arrays can take a new member")
        survivors = [m for m in array.members if m.in_sync and _disk_of(host, m.device) not in (old_name,
                                                                                                  new_disk.name)]
        still_in_sync = [m.device for m in array.members if m.in_sync and _disk_of(host, m.device) == old_name]
        if still_in_sync and not survivors:
            raise ActionRefused(f"{', '.join(still_in_sync)} of {old_name} is still in sync in {array.name} and "
                                "holds its last in-sync copy: that is not the failed disk")
        if still_in_sync:
            raise ActionRefused(f"{', '.join(still_in_sync)} of {old_name} is still in sync in {array.name}: "
                                f"fail it first (hostagent disk fail {still_in_sync[0]} --apply), or pick the "
                                "failed disk as --old")
        if not survivors:
            raise ActionRefused(f"{array.name} has no in-sync member left to copy from")
        template = survivors[0]
        templates.add(_disk_of(host, template.device))
        number = _partition_number(host, template.device)
        old_members = tuple(m.device for m in array.members
                            if _disk_of(host, m.device) == old_name or "faulty" in m.states)
        new_member = _member_name(new_disk.name, number)
        array_plans.append(ArrayPlan(array.name, number, template.device, new_member, old_members))
    if len(templates) != 1:
        raise ActionRefused(f"the arrays survive on different disks ({', '.join(sorted(templates))}): "
                            "hostagent copies one disk's partition table; replace by hand")
    template_disk = read_disk(host, templates.pop())
    result = Plan(DiskView(old_name, *(_identity(old_disk)), slots(host, old_name), old_disk is not None),
                  view(host, new_disk), view(host, template_disk), array_plans, wipe)
    resumed = journal is not None and "partitioned" in journal.get("done", [])
    _refusals(host, result, new_disk, template_disk, arrays, resumed)
    return result


def _identity(disk: Disk | None) -> tuple[str | None, str | None, int | None]:
    return (disk.model, disk.serial, disk.size_bytes) if disk else (None, None, None)


def _refusals(host: Host, plan_: Plan, new: Disk, template: Disk, arrays: list[MdArray], resumed: bool) -> None:
    if new.size_bytes is not None and template.size_bytes is not None and new.size_bytes < template.size_bytes:
        raise ActionRefused(f"/dev/{new.name} ({new.size_bytes} bytes) is smaller than /dev/{template.name} "
                            f"({template.size_bytes} bytes), whose partitions it must hold")
    holders = host.listdir(f"/sys/block/{new.name}/holders")
    for partition in new.partitions:
        holders += host.listdir(f"/sys/class/block/{partition}/holders")
    ours = {a.name for a in arrays for p in plan_.arrays if p.array == a.name
            for m in a.members if m.device == p.new_member}
    foreign = sorted(set(holders) - ours)
    if foreign:
        raise ActionRefused(f"/dev/{new.name} is in use by {', '.join(foreign)}: not touched, even with --wipe")
    if resumed:
        return  # our own partitions from the interrupted run
    signatures = _signatures(host, new)
    if signatures and not plan_.wipe:
        raise ActionRefused(f"/dev/{new.name} is not blank: {'; '.join(signatures)}. Check it is the right disk, "
                            "then give --wipe to erase it")
    if signatures:
        plan_.notes.append(f"--wipe: erasing {'; '.join(signatures)}")


def _signatures(host: Host, disk: Disk) -> list[str]:
    """What a disk holds: partitions, and the signatures blkid finds (filesystems, md superblocks, tables)."""
    found = [f"partitions {', '.join(disk.partitions)}"] if disk.partitions else []
    for device in (disk.name, *disk.partitions):
        result = host.run("blkid", ["-p", "-o", "export", f"/dev/{device}"], name=f"blkid-{device}", timeout=30)
        if result.returncode not in (0, 2):  # 2: nothing found; else unreadable: the vetting's read test tells
            continue
        fields = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        kind = fields.get("TYPE") or fields.get("PTTYPE")
        if kind:
            found.append(f"{kind} on /dev/{device}")
    return found


# -- vetting -------------------------------------------------------------------------------


@record
class Vetting:
    verdict: str  # "ok", "doa", "link"
    evidence: list[str]
    smart: bool  # SMART was available

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _smart(host: Host, disk: str, timeout: float) -> SmartReport | None:
    result = host.run("smartctl", ["--json=c", "-a", f"/dev/{disk}"], name=f"{disk}.vet.json", timeout=timeout)
    try:
        report = parse_smartctl(result.stdout, source=f"smartctl -a /dev/{disk}")
    except ParseError:
        return None
    return report if report.opened and report.passed is not None else None


def _crc(report: SmartReport | None) -> int | None:
    if report is None or CRC_ATTRIBUTE not in report.attributes:
        return None
    return report.attributes[CRC_ATTRIBUTE].count


def smart_evidence(report: SmartReport) -> tuple[bool, list[str]]:
    """Signs, before any test, that a new disk is dead on arrival: failed health, media defects."""
    evidence = []
    if not report.passed:
        evidence.append("SMART overall health: FAILED")
    for number, label in MEDIA_ATTRIBUTES.items():
        attribute = report.attributes.get(number)
        if attribute is not None and attribute.count > 0:
            evidence.append(f"attribute {number} ({label}) = {attribute.count} on a new disk")
    if report.nvme is not None and report.nvme.media_errors:
        evidence.append(f"NVMe media errors = {report.nvme.media_errors} on a new disk")
    evidence += [f"self-test log: {failure}" for failure in report.failed_selftests]
    doa = bool(evidence)
    if not doa:
        evidence.append("SMART overall health: PASSED, no reallocated, pending or uncorrectable sectors")
    return doa, evidence


def link_evidence(before: SmartReport | None, after: SmartReport | None) -> tuple[bool, list[str]]:
    """Whether the interface CRC error counter (attribute 199) rose during the tests."""
    crc_before, crc_after = _crc(before), _crc(after)
    if crc_before is None or crc_after is None:
        return False, []
    if crc_after > crc_before:
        return True, [f"CRC error count (attribute 199) rose from {crc_before} to {crc_after} during the test"]
    return False, [f"CRC error count (attribute 199) stayed at {crc_after}"]


def vet(host: Host, disk: str, size_bytes: int | None, *, read_mib: int, selftest: bool, timeout: float,
        progress: Callable[[str], None], poll: float = 5.0) -> Vetting:
    evidence: list[str] = []
    before = _smart(host, disk, timeout)
    doa = False
    if before is None:
        evidence.append("no SMART (a virtual or bridged disk): health and self-test skipped")
    else:
        doa, found = smart_evidence(before)
        evidence += found
        if selftest and not doa:
            doa |= _selftest(host, disk, timeout, evidence, progress, poll)
    doa |= _read_test(host, disk, size_bytes, read_mib, timeout, evidence, progress)
    after = _smart(host, disk, timeout) if before is not None else None
    link, found = link_evidence(before, after)
    evidence += found
    verdict = "doa" if doa else "link" if link else "ok"
    return Vetting(verdict, evidence, before is not None)


def _selftest_status(host: Host, disk: str, timeout: float) -> SelfTestStatus | None:
    result = host.run("smartctl", ["--json=c", "-c", "-l", "selftest", f"/dev/{disk}"],
                      name=f"{disk}.selftest.json", timeout=timeout)
    try:
        return parse_selftest_status(result.stdout, source=f"smartctl -c -l selftest /dev/{disk}")
    except ParseError:
        return None


def _selftest(host: Host, disk: str, timeout: float, evidence: list[str], progress: Callable[[str], None],
              poll: float) -> bool:
    """A SMART short self-test, followed to its end; True when the disk failed it."""
    before = _selftest_status(host, disk, timeout)
    if before is None or before.running:
        evidence.append("short self-test: skipped (" + ("one is already running" if before else
                                                       "smartctl reports no self-test state") + ")")
        return False
    started = host.run("smartctl", ["-t", "short", f"/dev/{disk}"], name=f"{disk}.selftest", timeout=timeout)
    if started.returncode & 0b111:
        evidence.append(f"short self-test could not start: {' '.join(started.stdout.strip().splitlines()[-1:])}")
        return False
    progress("short self-test: started")
    seen_running, quiet_polls = False, 0
    deadline = time.monotonic() + SELFTEST_LIMIT_S
    while time.monotonic() < deadline:
        time.sleep(poll)
        now = _selftest_status(host, disk, timeout)
        if now is None:
            evidence.append("short self-test: unreadable smartctl output while it ran")
            return False
        if now.running:
            seen_running = True
            progress(f"short self-test: {now.percent_done if now.percent_done is not None else '?'}% done")
            continue
        if not seen_running and now.marker == before.marker:
            quiet_polls += 1  # the drive has not logged the new test yet
            if quiet_polls < 3:
                continue
            evidence.append("short self-test: the drive logged no new result")
            return False
        progress(f"short self-test: {now.result}")
        evidence.append(f"short self-test: {now.result}")
        return bool(now.failed)
    evidence.append(f"short self-test: still running after {SELFTEST_LIMIT_S // 60} minutes")
    return True


def _read_test(host: Host, disk: str, size_bytes: int | None, read_mib: int, timeout: float, evidence: list[str],
               progress: Callable[[str], None]) -> bool:
    """Read ``read_mib`` MiB in 16 stretches spread over the disk; True on a read error or timeout."""
    if not size_bytes or read_mib <= 0:
        evidence.append("read test skipped")
        return False
    chunk = 1024 * 1024
    total = min(read_mib * chunk, size_bytes - size_bytes % chunk)
    stretches = 16
    per = max(chunk, total // stretches // chunk * chunk)
    done = 0
    try:
        with host.open_device(f"/dev/{disk}", timeout=timeout) as device:
            for index in range(stretches):
                start = (size_bytes - per) * index // max(stretches - 1, 1) // 4096 * 4096
                for offset in range(start, start + per, chunk):
                    data = device.read(offset, chunk)
                    if len(data) != chunk:
                        raise ProbeUnavailable(f"short read at byte {offset}")
                    done += chunk
                progress(f"read test: {done // chunk} of {total // chunk} MiB")
                if done >= total:
                    break
    except HostagentError as err:
        evidence.append(f"read test: error after {done // chunk} MiB: {err}")
        return True
    evidence.append(f"read test: {done // chunk} MiB read without error")
    return False


# -- the steps -----------------------------------------------------------------------------


def partition_steps(host: Host, plan_: Plan, timeout: float) -> list[Step]:
    new, template = f"/dev/{plan_.new.name}", f"/dev/{plan_.template.name}"
    dump = host.run("sfdisk", ["--dump", template], name=f"sfdisk-dump-{plan_.template.name}", timeout=timeout)
    if dump.returncode != 0:
        raise ProbeUnavailable(f"sfdisk --dump {template}: {dump.stderr.strip() or dump.returncode}")
    label = next((line.split(":", 1)[1].strip() for line in dump.stdout.splitlines() if line.startswith("label:")),
                 None)
    steps = []
    if plan_.wipe:
        for partition in reversed(read_disk(host, plan_.new.name).partitions):
            steps.append(Step("disk.wipe", partition, f"erase signatures on /dev/{partition}",
                              ("wipefs", "--all", f"/dev/{partition}")))
        steps.append(Step("disk.wipe", plan_.new.name, f"erase signatures and the partition table of {new}",
                          ("wipefs", "--all", new)))
    if label == "gpt":
        steps.append(Step("disk.partition", plan_.new.name, f"copy {template}'s GPT to {new}",
                          ("sgdisk", f"--replicate={new}", template)))
        steps.append(Step("disk.partition", plan_.new.name, f"give {new} its own disk and partition GUIDs",
                          ("sgdisk", "--randomize-guids", new)))
    elif label == "dos":
        table = "\n".join(line for line in dump.stdout.splitlines()
                          if not line.startswith(("label-id:", "device:"))) + "\n"
        steps.append(Step("disk.partition", plan_.new.name, f"copy {template}'s partition table to {new}",
                          ("sfdisk", "--no-reread", "--wipe", "always", new), stdin=table))
        steps.append(Step("disk.partition", plan_.new.name, f"have the kernel read {new}'s new table",
                          ("blockdev", "--rereadpt", new)))
    else:
        raise ActionRefused(f"{template} has no partition table sfdisk understands (label {label!r})")
    return steps


def member_steps(plan_: Plan) -> list[Step]:
    steps = []
    for array in plan_.arrays:
        if array.old_members:
            steps.append(Step("md.remove", array.array, f"drop the failed members of /dev/{array.array}",
                              ("mdadm", "--manage", f"/dev/{array.array}", "--remove", "failed", "detached")))
        steps.append(Step("md.add", array.array, f"add /dev/{array.new_member} to /dev/{array.array}",
                          ("mdadm", "--manage", f"/dev/{array.array}", "--add", f"/dev/{array.new_member}")))
    return steps


def tuning_steps(ctx: CheckContext, config: Config, disk: str) -> list[Step]:
    return [Step("disk.tune", disk, f.remedy.what, argv) for f in erc.run(ctx, config.checks.erc)
            if f.subject == disk and f.remedy is not None for argv in f.remedy.commands]


def boot_steps(ctx: CheckContext, config: Config, disk: str) -> list[Step]:
    return [Step("boot.repair", disk, f.remedy.what, argv) for f in boot.run(ctx, config.checks.boot)
            if f.subject == disk and f.remedy is not None for argv in f.remedy.commands]


# -- the journal ---------------------------------------------------------------------------


class Journal:
    """The replacement's finished phases, kept in the audit log as ``replace.phase`` events of the
    new disk.  ``replace.done`` (finished) and ``replace.start-over`` (abandoned) end a run."""

    def __init__(self, audit: AuditLog, new_disk: str) -> None:
        self.audit, self.new_disk = audit, new_disk
        self.data: dict[str, Any] = {}
        self.skipped: list[int] = []  # numbers of lines that are not JSON (a write torn by a crash)
        if audit.path is None or not audit.path.exists():
            return
        try:
            lines = audit.path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise HostagentError(f"audit log {audit.path}: unreadable ({err})") from None
        for number, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
            except ValueError:
                self.skipped.append(number)
                continue
            if not isinstance(entry, dict) or entry.get("new") != new_disk:
                continue
            if entry.get("event") in ("replace.done", "replace.start-over"):
                self.data = {}
            elif entry.get("event") == "replace.phase" and isinstance(entry.get("phase"), str):
                self._remember(entry["phase"], {k: v for k, v in entry.items() if k in ("plan", "vetting")})

    def _remember(self, phase: str, values: dict[str, Any]) -> None:
        done = self.data.setdefault("done", [])
        if phase not in done:
            done.append(phase)
        self.data.update(values)

    @property
    def done(self) -> list[str]:
        return list(self.data.get("done", []))

    def record(self, phase: str, **values: Any) -> None:
        self.audit.record({"event": "replace.phase", "new": self.new_disk, "phase": phase, **values})
        if self.audit.path is not None:
            self._remember(phase, values)

    def start_over(self) -> None:
        self.audit.record({"event": "replace.start-over", "new": self.new_disk, "abandoned": self.done})
        self.data = {}


# -- the command ---------------------------------------------------------------------------


@record
class Replacement:
    plan: Plan
    vetting: Vetting | None
    steps: list[Outcome]
    resumed_from: list[str]
    final: list[dict[str, Any]]
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan.to_json(), "vetting": self.vetting.to_json() if self.vetting else None,
                "steps": [o.to_json() for o in self.steps], "resumed_from": self.resumed_from,
                "final": self.final, "error": self.error}


def replace(host: Host, config: Config, old_spec: str, new_spec: str, *, apply: bool, wipe: bool, read_mib: int,
            selftest: bool, state_dir: str | None, say: Callable[[str], None],
            progress: Callable[[str, str, bool], None], start_over: bool = False) -> Replacement:
    """Plan, and with ``apply`` carry out, the replacement; resumable through the journal."""
    if apply and host.is_snapshot:
        raise ActionRefused(f"{host.root} is a snapshot: nothing can be applied to it")
    directory = Path(state_dir) if state_dir is not None else None
    new_name = new_spec.removeprefix("/dev/")
    if "/" in new_name or not host.exists(f"/sys/block/{new_name}"):
        found = resolve(host, new_spec, read_disks(host), "--new")
        if found is None:
            raise HostagentError(f"--new {new_spec}: no such disk (is it attached? see lsblk)")
        new_name = found.name
    audit = AuditLog.configured(directory, config.agent)
    journal = Journal(audit, new_name)
    for number in journal.skipped:
        say(f"note: {audit.path} line {number} is not JSON (a torn write?); ignored")
    if start_over and journal.done:
        if not apply:
            say(f"--start-over: the recorded progress ({', '.join(journal.done)}) would be set aside")
            journal.data = {}
        else:
            journal.start_over()
    recorded = journal.data or None
    the_plan = plan(host, old_spec, new_spec, wipe=wipe, journal=recorded)
    if recorded and recorded.get("plan", {}).get("old", {}).get("name") not in (None, the_plan.old.name):
        raise ActionRefused(f"{audit.path} records an unfinished replacement of {recorded['plan']['old']['name']} "
                            f"by {new_name}, not of {the_plan.old.name}: finish that one, or give --start-over")
    resumed = journal.done
    say(f"old disk  {the_plan.old.describe()}")
    say(f"new disk  {the_plan.new.describe()}")
    say(f"copy from {the_plan.template.describe()}")
    for array in the_plan.arrays:
        old = f" (replacing {', '.join(array.old_members)})" if array.old_members else ""
        say(f"  /dev/{array.array}: add /dev/{array.new_member} as partition {array.number}{old}")
    for note in the_plan.notes:
        say(f"  note: {note}")
    if resumed:
        say(f"resuming: already done: {', '.join(resumed)}")
    timeout = config.agent.command_timeout
    result = Replacement(the_plan, None, [], resumed, [])
    if "vetted" in resumed:
        result.vetting = Vetting(**journal.data["vetting"])
    elif not apply:
        say(f"vet /dev/{new_name}: SMART health{' and a short self-test' if selftest else ''}, a {read_mib} MiB "
            "read test, the CRC error counter before and after")
    else:
        audit.record({"event": "replace.vet", "disk": new_name})
        result.vetting = vet(host, new_name, the_plan.new.size_bytes, read_mib=read_mib, selftest=selftest,
                             timeout=timeout, progress=lambda text: progress(new_name, text, False))
        progress(new_name, f"vetting: {result.vetting.verdict}", True)
        audit.record({"event": "replace.vetted", "disk": new_name, **result.vetting.to_json()})
        if result.vetting.verdict != "ok":
            result.error = ("DOA: return it" if result.vetting.verdict == "doa"
                            else "link errors: check the cable/slot") + f" (/dev/{new_name}); nothing was changed"
            return result
        journal.record("vetted", plan=the_plan.to_json(), vetting=result.vetting.to_json())

    groups: list[tuple[str, Callable[[], list[Step]]]] = [
        ("partitioned", lambda: partition_steps(host, the_plan, timeout)),
        ("added", lambda: member_steps(_still_missing(host, the_plan))),
        ("tuned", lambda: tuning_steps(_context(host, config), config, new_name)),
        ("resynced", lambda: []),
        # after the resync: the boot check vouches only for in-sync members of the boot arrays
        ("bootloader", lambda: boot_steps(_context(host, config), config, new_name)),
    ]
    for phase, steps_of in groups:
        if phase in resumed:
            continue
        if not apply and phase in LATER:
            say(f"then: {LATER[phase]}")
            continue
        if phase == "resynced":
            follow_resync(host, the_plan, progress)
            journal.record(phase, plan=the_plan.to_json())
            continue
        outcomes = perform(host, steps_of(), apply=apply, audit=audit, timeout=timeout * 10)
        result.steps += outcomes
        if not all(o.ok for o in outcomes):
            failed = next(o for o in outcomes if not o.ok)
            result.error = f"{phase}: $ {' '.join(failed.step.argv)}: {failed.error or failed.output}"
            return result
        if apply:
            journal.record(phase, plan=the_plan.to_json())
    if not apply:
        say("then: run every check again")
        return result
    from hostagent.runner import run_checks

    report = run_checks(host, config, None)
    result.final = [f.to_json() for f in report.findings]
    audit.record({"event": "replace.done", "old": the_plan.old.name, "new": new_name,
                  "arrays": [a.array for a in the_plan.arrays]})
    return result


def _context(host: Host, config: Config) -> CheckContext:
    return CheckContext.for_host(host, include=config.disks.include, exclude=config.disks.exclude)


def _still_missing(host: Host, the_plan: Plan) -> Plan:
    """The plan without the arrays that already hold the new member (an interrupted run added them)."""
    present = {(a.name, m.device) for a in read_arrays(host) for m in a.members if "faulty" not in m.states}
    arrays = [a for a in the_plan.arrays if (a.array, a.new_member) not in present]
    return records.replace(the_plan, arrays=arrays)


def follow_resync(host: Host, the_plan: Plan, progress: Callable[[str, str, bool], None],
                  poll: float = 2.0) -> None:
    """Wait until every new member is in sync, showing each array's progress, speed and ETA."""
    waiting = {a.array: a.new_member for a in the_plan.arrays}
    while waiting:
        arrays = {a.name: a for a in read_arrays(host)}
        for name, member in list(waiting.items()):
            array = arrays.get(name)
            if array is None:
                raise HostagentError(f"/dev/{name} disappeared during the resync")
            state = next((m for m in array.members if m.device == member), None)
            if state is None or "faulty" in state.states:
                raise HostagentError(f"/dev/{member} left /dev/{name} during the resync "
                                     f"({','.join(state.states) if state else 'removed'}): the new disk failed")
            if state.in_sync and not array.sync.running:
                progress(name, f"{member} in sync", True)
                del waiting[name]
                continue
            sync = array.sync
            if sync.running and sync.progress is not None:
                speed = f", {sync.speed_kbps / 1024:.1f} MiB/s" if sync.speed_kbps else ""
                eta = f", about {sync.eta_s // 60} min {sync.eta_s % 60} s left" if sync.eta_s is not None else ""
                progress(name, f"{sync.action} {sync.progress * 100:.1f}%{speed}{eta}", False)
            else:
                progress(name, f"waiting ({sync.action})", False)
        if waiting:
            time.sleep(poll)


# -- disk locate ---------------------------------------------------------------------------


def locate(host: Host, spec: str, *, apply: bool, off: bool, audit: AuditLog,
           timeout: float) -> tuple[DiskView, list[Outcome], str]:
    """Blink the disk's slot LED (ledctl, or the enclosure's sysfs locate file); else say where it is."""
    disk = resolve(host, spec, read_disks(host), "disk")
    if disk is None:
        raise HostagentError(f"{spec}: no such disk")
    where = view(host, disk)
    state = "off" if off else "on"
    if _which(host, "ledctl"):
        pattern = "locate_off" if off else "locate"
        step = Step("disk.locate", disk.name, f"turn the locate LED of /dev/{disk.name} {state}",
                    ("ledctl", f"{pattern}=/dev/{disk.name}"))
        return where, perform(host, [step], apply=apply, audit=audit, timeout=timeout), "ledctl"
    for entry in host.listdir(f"/sys/block/{disk.name}/device"):
        if entry.startswith("enclosure_device:"):
            path = f"/sys/block/{disk.name}/device/{entry}/locate"
            step = Step("disk.locate", disk.name, f"turn the locate LED of /dev/{disk.name} {state}",
                        ("tee", path), stdin="0\n" if off else "1\n")
            return where, perform(host, [step], apply=apply, audit=audit, timeout=timeout), "sysfs enclosure"
    return where, [], "no LED control (no ledctl, no enclosure in sysfs): use the slot above"


def _which(host: Host, tool: str) -> bool:
    return not host.is_snapshot and shutil.which(tool) is not None
