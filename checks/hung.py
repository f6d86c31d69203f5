"""Hung md members: I/O that never completes, though md never fails the member by itself.

A member is hung when, for at least ``hung_after`` seconds, either it has I/O in flight and
its completion counters do not move, or a probe read (one aligned O_DIRECT read in a
detached child) has not returned.  Only sysfs is read here: nothing on this path can block
on the hung device.  ``hung_after`` defaults to 30 s, the SCSI layer's default command
timeout: by then a healthy device has either answered or been reset by the kernel.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hostagent.actions.hung import device_layer, ladder, refusals
from hostagent.context import CheckContext
from hostagent.inventory import MdArray, MdMember
from hostagent.model import Finding, Remedy, Severity
from hostagent.probe import Prober
from hostagent.sources.blockdev import parent_disks
from hostagent.sources.blockstat import BlockStat, read_blockstat
from hostagent.sources.kmsg import about, read_kmsg

NAME = "hung"
DESCRIPTION = "md members whose I/O does not complete (hung), or completes far slower than usual (slow)"


@dataclass(frozen=True)
class Config:
    enabled: bool = True
    hung_after: float = 30.0
    probes: bool = True
    probe_interval: float = 5.0
    policy: Literal["fail", "alert"] = "fail"  # fail: force the member out (check --act, watch)
    unblock_after: float = 5.0
    slow_factor: float = 10.0
    slow_min_ms: float = 500.0


@dataclass(frozen=True)
class Observation:
    device: str
    stuck_s: float  # in-flight I/O with no completion for this long
    probe_s: float  # the probe read has been outstanding this long
    pending: int
    latency_ms: float | None
    baseline_ms: float | None
    probe_error: str | None

    def hung(self, after: float) -> bool:
        return max(self.stuck_s, self.probe_s) >= after


def probe_directory(ctx: CheckContext) -> Path:
    base = ctx.state.directory or Path(tempfile.gettempdir()) / "hostagent"
    return base / "probes"


def observe(ctx: CheckContext, device: str, prober: Prober | None) -> Observation | None:
    stat = read_blockstat(ctx.host, device)
    if stat is None:
        return None
    now = ctx.now
    key = f"hung.counters.{device}"
    last = ctx.state.get(key)
    since = None
    latency = None
    if last is not None and stuck(stat, last):
        # the first stuck look starts the clock: the I/O may have been issued just before it
        since = last["since"] if last.get("since") is not None else now
    if last is not None and stat.completed > last["completed"]:
        latency = (stat.io_ticks_ms - last["io_ticks"]) / (stat.completed - last["completed"])
    ctx.state.put(key, {"completed": stat.completed, "reads": stat.reads, "writes": stat.writes,
                        "io_ticks": stat.io_ticks_ms, "t": now, "since": since})
    baseline = ctx.state.get(f"hung.latency.{device}")
    if latency is not None:
        ctx.state.put(f"hung.latency.{device}", latency if baseline is None else 0.9 * baseline + 0.1 * latency)
    probe = prober.poll(device, now) if prober is not None else None
    return Observation(
        device=device,
        stuck_s=0.0 if since is None else now - since,
        probe_s=probe.outstanding_s or 0.0 if probe else 0.0,
        pending=stat.pending,
        latency_ms=latency,
        baseline_ms=baseline,
        probe_error=probe.last_error if probe else None,
    )


def stuck(stat: BlockStat, last: dict[str, float]) -> bool:
    """I/O in flight in a direction whose completions did not move since the last look.

    Directions are apart because a hang often holds writes while reads still complete."""
    if stat.in_flight_reads is None or stat.in_flight_writes is None or "reads" not in last:
        return stat.pending > 0 and stat.completed == last["completed"]
    return ((stat.in_flight_reads > 0 and stat.reads == last["reads"])
            or (stat.in_flight_writes > 0 and stat.writes == last["writes"]))


def run(ctx: CheckContext, config: Config) -> list[Finding]:
    arrays = [a for a in ctx.inventory.arrays() if a.active and not a.is_container]
    prober = None
    if config.probes and not ctx.host.is_snapshot:
        prober = Prober(ctx.host, ctx.state, probe_directory(ctx), config.probe_interval)
    observations: dict[str, Observation] = {}
    for array in arrays:
        for member in array.members:
            if "faulty" in member.states or "spare" in member.states or member.device in observations:
                continue
            seen = observe(ctx, member.device, prober)
            if seen is not None:
                observations[member.device] = seen
    ctx.examine(NAME, len(observations), "members")
    hung = {d for d, o in observations.items() if o.hung(config.hung_after)}
    mark_hung_disks(ctx, observations, hung)
    messages = read_kmsg(ctx.host) if hung else []
    findings = []
    for array in arrays:
        for member in array.members:
            seen = observations.get(member.device)
            if seen is None:
                continue
            if member.device in hung:
                signals = _signals(ctx, array, member, seen, about(messages, _names(ctx, member.device)))
                findings.append(evaluate_hung(ctx, array, member, seen, hung, arrays, signals, config))
            elif _slow(seen, config) and seen.latency_ms is not None and seen.baseline_ms:
                latency, usual = seen.latency_ms, seen.baseline_ms
                findings.append(Finding(
                    "disk.slow", NAME, f"{array.name}/{member.device}", Severity.WARNING,
                    f"{member.device} in {array.name} takes {latency:.0f} ms per I/O, "
                    f"{latency / usual:.0f}x its usual {usual:.1f} ms",
                    "A disk that slows down this much is often retrying bad sectors; check its SMART."))
    return findings


def mark_hung_disks(ctx: CheckContext, observations: dict[str, Observation], hung: set[str]) -> None:
    """Record which disks are hung, so checks that read the disk itself (smart, boot) leave them alone."""
    disks = {disk for device in hung for disk in parent_disks(ctx.host, device)}
    for device in observations:
        for disk in parent_disks(ctx.host, device):
            ctx.state.put(f"hung.disk.{disk}", ctx.now if disk in disks else None)


def disk_is_hung(ctx: CheckContext, disk: str) -> bool:
    return ctx.state.get(f"hung.disk.{disk}") is not None


def _slow(seen: Observation, config: Config) -> bool:
    return (seen.latency_ms is not None and seen.baseline_ms is not None and seen.baseline_ms > 0
            and seen.latency_ms >= config.slow_min_ms and seen.latency_ms >= config.slow_factor * seen.baseline_ms)


def _names(ctx: CheckContext, device: str) -> tuple[str, ...]:
    return (device, *parent_disks(ctx.host, device))


def _signals(ctx: CheckContext, array: MdArray, member: MdMember, seen: Observation, kernel: list[str]) -> list[str]:
    lines = []
    if seen.stuck_s:
        lines.append(f"{seen.pending} I/O in flight and none completed for {seen.stuck_s:.0f} s")
    if seen.probe_s:
        lines.append(f"a probe read has been outstanding for {seen.probe_s:.0f} s")
    state = (ctx.host.read_optional(f"/sys/block/{array.name}/md/array_state") or "").strip()
    if state:
        blocked = " (writes are blocked)" if state == "write-pending" else ""
        lines.append(f"{array.name} array_state: {state}{blocked}")
    for disk in parent_disks(ctx.host, member.device):
        for attr in ("state", "ioerr_cnt", "iotmo_cnt"):
            value = ctx.host.read_optional(f"/sys/block/{disk}/device/{attr}")
            if value is not None:
                lines.append(f"{disk} device/{attr}: {value.strip()}")
    lines += [f"kernel: {m}" for m in kernel[-5:]]
    return lines


def evaluate_hung(ctx: CheckContext, array: MdArray, member: MdMember, seen: Observation, hung: set[str],
                  arrays: list[MdArray], signals: list[str], config: Config) -> Finding:
    subject = f"{array.name}/{member.device}"
    duration = max(seen.stuck_s, seen.probe_s)
    reasons = refusals(array, member, hung)
    after = (f"Afterwards: find the cause (smartctl -x, cable, controller), then re-add the member "
             f"(mdadm --manage {array.dev_path} --re-add {member.dev_path}) or replace the disk "
             f"(mdadm --manage {array.dev_path} --add /dev/NEW, then hostagent boot repair --apply).")
    if reasons:
        return Finding("disk.hung_unfailable", NAME, subject, Severity.CRITICAL,
                       f"{member.device} in {array.name} is hung ({duration:.0f} s) and must not be failed: "
                       + "; ".join(reasons), "\n".join(signals),
                       Remedy("A human must decide: check the controller, cables and power of every member", after))
    steps = ladder(ctx.host, array, member, arrays)
    layer = device_layer(ctx.host, member.device, arrays)
    policy = ("hostagent forces it out (policy fail)" if config.policy == "fail"
              else "policy alert: run hostagent disk fail to force it out")
    detail = "\n".join([*signals, *([layer.note] if layer.note else [])])
    return Finding("disk.hung", NAME, subject, Severity.CRITICAL,
                   f"{member.device} in {array.name} is hung: no I/O has completed for {duration:.0f} s; "
                   f"md does not fail it by itself; {policy}",
                   detail, Remedy(f"Force {member.device} out of {array.name} so the array accepts writes again",
                                  after, tuple(s.argv for s in steps)))
