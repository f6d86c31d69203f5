"""ERC/timeout mismatch: a disk that retries longer than the kernel waits breaks md.

For every ATA disk (also behind USB/SAT) holding a member of a redundant md array, compare
its SCT Error Recovery Control with the kernel's command timeout
(/sys/block/<disk>/device/timeout).  When the drive may retry for longer than the kernel
waits, the kernel resets the link instead of getting a read error, and md either kicks a
good disk or hangs (the Linux RAID wiki's "timeout mismatch").
"""

from __future__ import annotations

from hostagent.context import CheckContext
from hostagent.errors import ParseError, ProbeUnavailable
from hostagent.host import sysfs_write
from hostagent.inventory import REDUNDANT_LEVELS
from hostagent.model import Finding, Remedy, Severity
from hostagent.records import record
from hostagent.sources.blockdev import Disk
from hostagent.sources.smartctl import Scterc, parse_scterc

NAME = "erc"
DESCRIPTION = "SCT ERC against the kernel command timeout on disks of redundant md arrays"
ERC_TRANSPORTS = ("ata", "usb")
ERC_DECISECONDS = 70  # 7.0 s: what RAID-edition drives ship with


@record(frozen=True)
class Config:
    enabled: bool = True
    timeout: float = 30.0
    min_kernel_timeout: int = 180


@record(frozen=True)
class ErcState:
    disk: Disk
    arrays: tuple[str, ...]
    kernel_timeout: int
    scterc: Scterc | None  # None: smartctl could not tell


def run(ctx: CheckContext, config: Config) -> list[Finding]:
    findings = []
    states = collect(ctx, config)
    ctx.examine(NAME, len(states), "disks")
    for state in states:
        finding = evaluate(state, config)
        if finding is not None:
            findings.append(finding)
    return findings


def collect(ctx: CheckContext, config: Config) -> list[ErcState]:
    """ERC and kernel timeout of every ATA disk that holds a member of a redundant array."""
    states = []
    for disk in ctx.inventory.disks():
        if disk.transport not in ERC_TRANSPORTS:
            continue
        arrays = tuple(sorted({m.array.name for m in ctx.inventory.memberships(disk.name)
                               if m.array.level in REDUNDANT_LEVELS}))
        if not arrays:
            continue
        text = (ctx.host.read_optional(f"/sys/block/{disk.name}/device/timeout") or "").strip()
        if not text.isdigit():
            continue
        try:
            result = ctx.host.run("smartctl", ["--json=c", "-l", "scterc", disk.dev_path],
                                  name=f"{disk.name}.scterc.json", timeout=config.timeout)
            scterc = parse_scterc(result.stdout, source=f"smartctl -l scterc {disk.dev_path}")
        except (ProbeUnavailable, ParseError):
            scterc = None
        states.append(ErcState(disk, arrays, int(text), scterc))
    return states


def remedy(state: ErcState, config: Config) -> Remedy:
    disk = state.disk
    if state.scterc is not None and state.scterc.supported:
        return Remedy(
            f"Limit {disk.name}'s error recovery to 7.0 s (SCT ERC), below the kernel's {state.kernel_timeout} s",
            "The drive then reports a bad sector in time for md to rewrite it from the other copy. "
            "ERC is lost at power-off: hostagent re-applies it (hostagent disk tune --apply).",
            (("smartctl", "-l", f"scterc,{ERC_DECISECONDS},{ERC_DECISECONDS}", disk.dev_path),),
        )
    return Remedy(
        f"Raise the kernel's command timeout for {disk.name} to {config.min_kernel_timeout} s "
        "(the drive cannot limit its own error recovery)",
        "A desktop drive may retry a bad sector for two minutes; the kernel must wait longer than that.",
        (sysfs_write(f"/sys/block/{disk.name}/device/timeout", str(config.min_kernel_timeout)),),
    )


def evaluate(state: ErcState, config: Config) -> Finding | None:
    """disk.timeout_mismatch when the drive may retry longer than the kernel waits (pure)."""
    erc = state.scterc
    if erc is not None and erc.enabled:
        longest = max(erc.read_ds or 0, erc.write_ds or 0) / 10
        if longest < state.kernel_timeout:
            return None
        why = f"its ERC allows {longest:g} s, not less than the kernel's {state.kernel_timeout} s"
    elif state.kernel_timeout >= config.min_kernel_timeout:
        return None
    elif erc is None:
        why = f"its ERC could not be read and the kernel waits only {state.kernel_timeout} s"
    elif erc.supported:
        why = f"ERC is disabled and the kernel waits only {state.kernel_timeout} s"
    else:
        why = f"it has no ERC and the kernel waits only {state.kernel_timeout} s"
    return Finding(
        "disk.timeout_mismatch", NAME, state.disk.name, Severity.WARNING,
        f"{state.disk.name} ({', '.join(state.arrays)}): timeout mismatch: {why}",
        "A drive that retries longer than the kernel waits gets reset instead of reporting the bad sector; "
        "md then kicks a good disk or the array hangs.",
        remedy(state, config),
    )
