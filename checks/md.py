"""md arrays: degraded, failed, inactive, recovering, read-only, mismatches and spares.

Severity of md.degraded follows the data, not the member count: CRITICAL when some block
has no redundant copy left, WARNING while every block still has one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, MutableMapping
from types import MappingProxyType

from hostagent.context import CheckContext
from hostagent.inventory import MdArray
from hostagent.model import Finding, Remedy, Severity
from hostagent.names import disk_of_partition
from hostagent.records import field, record

NAME = "md"
DESCRIPTION = "Linux md arrays: redundancy, failed members, rebuilds, read-only state, mismatches"


@record(frozen=True)
class Config:
    enabled: bool = True
    ignore_arrays: tuple[str, ...] = ()
    mismatch_threshold: int = 0
    mismatch_ignore_levels: tuple[str, ...] = ("raid1", "raid10")
    expected_spares: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # mdadm's own mdadm-last-resort@.timer waits 30 s for the members of an array udev is assembling
    inactive_grace: float = 30.0


def run(ctx: CheckContext, config: Config) -> list[Finding]:
    findings: list[Finding] = []
    arrays = [a for a in ctx.inventory.arrays() if a.name not in config.ignore_arrays]
    # only a daemon that promises to look again (hostagent watch, not --once) can wait out an assembly
    since: dict[str, float] | None = None
    if ctx.recheck_by(NAME, None) and ctx.volatile is not None:
        since = ctx.volatile.setdefault("md:inactive_since", {})
    now = time.monotonic()
    for array in arrays:
        found = evaluate(array, config)
        if since is not None:
            found = settle(array.name, found, since, now, config.inactive_grace)
        findings += found
    if since is not None:
        for gone in set(since) - {a.name for a in arrays}:
            del since[gone]
        waiting = [first + config.inactive_grace for first in since.values() if first + config.inactive_grace > now]
        ctx.recheck_by(NAME, min(waiting, default=None))
    ctx.examine(NAME, len(arrays), "arrays")
    return findings


def settle(name: str, findings: list[Finding], since: MutableMapping[str, float], now: float,
           grace: float) -> list[Finding]:
    """An array found inactive for less than ``grace`` seconds is being assembled as far as anyone can
    tell (mdadm --create and --assemble pass through inactive, and udev's incremental assembly waits
    for the last member): md.assembling (INFO) until then, md.inactive once it has stayed so."""
    if not any(f.code == "md.inactive" for f in findings):
        since.pop(name, None)
        return findings
    first = since.setdefault(name, now)
    if now - first >= grace:
        return findings
    return [_assembling(f, now - first, grace) if f.code == "md.inactive" else f for f in findings]


def _assembling(inactive: Finding, age: float, grace: float) -> Finding:
    return Finding(
        "md.assembling", NAME, inactive.subject, Severity.INFO,
        f"{inactive.subject} is inactive, for {age:.0f} s so far: it may still be being assembled; "
        f"md.inactive if it stays inactive for {grace:g} s",
        inactive.detail, None, f"{inactive.subject} assembling")


def evaluate(array: MdArray, config: Config) -> list[Finding]:
    """All findings for one array (pure: no I/O)."""
    if array.is_container or array.state == "clear":
        return []
    if not array.active:
        return [_inactive(array)]
    findings = _redundancy(array)
    findings += _failed_members(array)
    findings += _sync(array)
    findings += _read_only(array)
    findings += _mismatch(array, config)
    findings += _spares(array, config)
    return findings


def _finding(code: str, array: MdArray, severity: Severity, summary: str, detail: str = "",
             remedy: Remedy | None = None, subject: str | None = None, short: str = "") -> Finding:
    return Finding(code, NAME, subject or array.name, severity, summary, detail, remedy, short)


def _describe_members(array: MdArray) -> str:
    parts = []
    for m in array.members:
        slot = "-" if m.slot is None else str(m.slot)
        parts.append(f"{m.device} (slot {slot}: {', '.join(m.states) or 'no state'})")
    return "members: " + ("; ".join(parts) if parts else "none")


def _inactive(array: MdArray) -> Finding:
    return _finding(
        "md.inactive", array, Severity.CRITICAL,
        f"{array.name} is inactive: its members are known but the array is not running, "
        "so its data is not available",
        _describe_members(array),
        Remedy(
            f"Inspect the members' superblocks, then start {array.name} if they agree",
            "An array is left inactive when assembly found too few or conflicting members.",
            (("mdadm", "--examine", *[m.dev_path for m in array.members]),
             ("mdadm", "--run", array.dev_path)),
        ),
        short=f"{array.name} inactive",
    )


def _redundancy(array: MdArray) -> list[Finding]:
    level = array.level
    if array.broken or (level in ("raid0", "linear") and array.degraded_disks > 0):
        return [_failed(array, f"{array.name} ({level}) lost a member and cannot serve all its data")]
    if array.degraded_disks <= 0 or array.raid_disks is None:
        return []
    missing = array.degraded_disks
    working = array.raid_disks - missing
    if level in ("raid1", "multipath", "raid10"):
        missing_slots = set(array.missing_slots())
        sets = array.copy_sets()
        if not missing_slots and level == "raid10":
            severity = Severity.CRITICAL  # slots unknown: assume the worst
            left = None
        else:
            left = min((len(s - missing_slots) for s in sets), default=working)
            if left == 0:
                return [_failed(array, f"{array.name} ({level}) has no working copy of some data")]
            severity = Severity.CRITICAL if left == 1 else Severity.WARNING
        if severity is Severity.CRITICAL:
            meaning = "some data now has no redundant copy: one more failure loses it"
        else:
            meaning = f"every block still has at least {left} copies"
    elif level in ("raid4", "raid5"):
        if missing >= 2:
            return [_failed(array, f"{array.name} ({level}) is missing {missing} members; it cannot run")]
        severity, meaning = Severity.CRITICAL, "parity is gone: one more failure loses the array"
    elif level == "raid6":
        if missing >= 3:
            return [_failed(array, f"{array.name} (raid6) is missing {missing} members; it cannot run")]
        if missing == 2:
            severity, meaning = Severity.CRITICAL, "both parities are gone: one more failure loses the array"
        else:
            severity, meaning = Severity.WARNING, "one parity is left: the array survives one more failure"
    else:
        severity, meaning = Severity.CRITICAL, "redundancy is reduced"
    rebuilding = [m for m in array.members if "rebuilding" in m.states]
    detail = [_describe_members(array)]
    if array.missing_slots():
        slots = array.missing_slots()
        detail.append(f"no in-sync member in slot{'s' if len(slots) > 1 else ''} "
                      + ", ".join(f"#{slot}" for slot in slots) + " (mdadm --detail's RaidDevice numbers)")
    if rebuilding:
        action = "Wait for the rebuild onto " + ", ".join(m.device for m in rebuilding) + " to finish"
        commands: tuple[tuple[str, ...], ...] = ()
    else:
        action = (
            "Find why the member left (kernel log, smartctl -x on its disk), then swap the disk: "
            "hostagent disk locate OLD blinks its slot, and hostagent disk replace --old OLD --new NEW "
            "vets the new disk, partitions it, adds it to every array and installs the bootloader"
        )
        commands = (("mdadm", "--detail", array.dev_path),)
    return [_finding(
        "md.degraded", array, severity,
        f"{array.name} ({level}) is degraded: {working} of {array.raid_disks} members working; {meaning}",
        "\n".join(detail),
        Remedy(action, "Until the array is whole again it runs with less redundancy.", commands),
        short=f"{array.name} degraded ({working} of {array.raid_disks})",
    )]


def _failed(array: MdArray, summary: str) -> Finding:
    return _finding(
        "md.failed", array, Severity.CRITICAL, summary, _describe_members(array),
        Remedy(
            "Stop writing to the array; restore from backup or reassemble with the "
            "surviving members after checking them with mdadm --examine",
            "Too many members are gone for the array to serve its data.",
            (("mdadm", "--detail", array.dev_path),),
        ),
        short=f"{array.name} failed",
    )


def _failed_members(array: MdArray) -> list[Finding]:
    findings = []
    for member in array.members:
        if "faulty" not in member.states:
            continue
        disk = disk_of_partition(member.device)
        findings.append(_finding(
            "md.failed_member", array, Severity.WARNING,
            f"{member.device} failed in {array.name} and is no longer used",
            _describe_members(array),
            Remedy(
                f"Remove {member.device} from {array.name} and check its disk (SMART, cable); to swap the disk, "
                f"blink its slot, then let hostagent vet the new disk, add it to every array and install the "
                "bootloader",
                "A failed member stays listed until it is removed; the array does not use it.",
                (("mdadm", "--manage", array.dev_path, "--remove", member.dev_path),
                 ("hostagent", "disk", "locate", disk, "--apply"),
                 ("hostagent", "disk", "replace", "--old", disk, "--new", "NEW")),
            ),
            subject=f"{array.name}/{member.device}",
            short=f"{member.device} failed in {array.name}",
        ))
    return findings


def _format_eta(seconds: int | None) -> str:
    if seconds is None:
        return "unknown time left"
    hours, rest = divmod(seconds, 3600)
    minutes = rest // 60
    return f"about {hours} h {minutes} min left" if hours else f"about {minutes} min left"


def _sync(array: MdArray) -> list[Finding]:
    sync = array.sync
    if sync.action == "recover" and not sync.progress and not any(
            "rebuilding" in m.states or "spare" in m.states for m in array.members):
        # md sets "recover" for a moment after a member fails, finds no spare to rebuild onto and
        # drops it: a finding would be mailed and resolved within a second (seen on a Xen dom0).
        # For that moment sync_completed reads "0 / <size>" (MD_RECOVERY_RUNNING is set while
        # md_check_recovery looks for spares), so no progress and 0 % are the same evidence: none.
        return []
    if sync.action in ("resync", "recover", "reshape"):
        pct = "unknown progress" if sync.progress is None else f"{sync.progress:.1%} done"
        speed = "" if sync.speed_kbps is None else f", {sync.speed_kbps} KiB/s"
        return [_finding(
            "md.recovering", array, Severity.WARNING,
            f"{array.name} {sync.action} in progress: {pct}{speed}, {_format_eta(sync.eta_s)}",
            _describe_members(array),
            short=f"{array.name} {sync.action}" + ("" if sync.progress is None else f" {sync.progress:.1%}"),
        )]
    if sync.action in ("delayed", "pending"):
        why = ("waits for another array on the same disks to finish" if sync.action == "delayed"
               else "starts when the array is first written (it is read-only or auto-read-only)")
        return [_finding(
            "md.resync_pending", array, Severity.INFO,
            f"{array.name} has a {sync.action} resync: it {why}",
        )]
    return []


def _read_only(array: MdArray) -> list[Finding]:
    if array.read_only == "read-only":
        return [_finding(
            "md.read_only", array, Severity.WARNING,
            f"{array.name} is read-only: writes to it fail",
            remedy=Remedy(f"Make {array.name} writable if nothing holds it read-only on purpose", "",
                          (("mdadm", "--readwrite", array.dev_path),)),
        )]
    if array.read_only == "auto-read-only":
        return [_finding(
            "md.read_only", array, Severity.INFO,
            f"{array.name} is auto-read-only: it becomes writable on its first write",
        )]
    return []


def _mismatch(array: MdArray, config: Config) -> list[Finding]:
    count = array.mismatch_cnt
    if count is None or count <= config.mismatch_threshold or array.level in config.mismatch_ignore_levels:
        return []
    return [_finding(
        "md.mismatch", array, Severity.WARNING,
        f"{array.name} ({array.level}) has {count} mismatched sectors (threshold {config.mismatch_threshold})",
        "The last check found data and parity (or copies) that disagree.",
        Remedy("Find the cause (bad disk, memory), then repair the array", "",
               (("mdadm", "--action=repair", array.dev_path),)),
        short=f"{array.name}: {count} mismatched sectors",
    )]


def _spares(array: MdArray, config: Config) -> list[Finding]:
    expected = config.expected_spares.get(array.name, config.expected_spares.get("*"))
    if expected is None:
        return []
    spares = [m for m in array.members if "spare" in m.states and "faulty" not in m.states]
    if len(spares) >= expected:
        return []
    return [_finding(
        "md.spares_missing", array, Severity.WARNING,
        f"{array.name} has {len(spares)} hot spare(s), {expected} expected",
        _describe_members(array),
        Remedy(f"Add a spare: vet the new disk first (hostagent disk replace does, for a mirror), then "
               f"mdadm --manage {array.dev_path} --add /dev/NEW", ""),
    )]
