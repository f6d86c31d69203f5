"""Hung and crawling md members: I/O that never completes, or completes so slowly that the
array is as good as stopped, though md never fails the member by itself.

A member is hung when, for at least ``hung_after`` seconds, any of these holds:

- **stalled**: it has I/O in flight in a direction whose completion counter does not move;
- **crawling**: the I/O it completes took ``crawl_ms`` or more each, on average, with no
  faster completion in between;
- **probe**: a probe read (one aligned O_DIRECT read in a detached child) has not returned.

Only sysfs is read here: nothing on this path can block on the hung device.  ``hung_after``
defaults to 20 s, under the SCSI layer's 30 s command timeout: a dead SCSI disk is taken
offline before its first command times out, so the midlayer fails that command at that
timeout instead of retrying it.  The daemon samples the counters every second
(:func:`sample`) and runs this check the moment a member's clock reaches ``hung_after``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hostagent.context import CheckContext
from hostagent.inventory import MdArray, MdMember
from hostagent.model import Finding, Remedy, Severity
from hostagent.names import disk_of_partition
from hostagent.records import record
from hostagent.sources.blockdev import parent_disks
from hostagent.sources.blockstat import BlockStat, read_blockstat
from hostagent.sources.kmsg import about, read_kmsg

if TYPE_CHECKING:  # the ladder and the prober are imported when needed: hostagent check stays fast
    from hostagent.probe import Prober

NAME = "hung"
DESCRIPTION = "md members whose I/O does not complete (hung), or completes far slower than usual (slow)"
DIRECTIONS = ("reads", "writes")


@record(frozen=True)
class Config:
    enabled: bool = True
    hung_after: float = 20.0
    crawl_ms: float = 5000.0  # I/O that takes this long each, for hung_after seconds, is a crawl
    probes: bool = True
    probe_interval: float = 2.0
    policy: Literal["fail", "alert"] = "fail"  # fail: force the member out (check --act, watch)
    unblock_after: float = 1.0
    slow_factor: float = 10.0
    slow_min_ms: float = 500.0


@record(frozen=True)
class Observation:
    device: str
    stuck_s: float  # in-flight I/O with no completion for this long
    crawl_s: float  # every completion this long took crawl_ms or more
    probe_s: float  # the probe read has been outstanding this long
    pending: int
    crawl_io_ms: float | None  # what each I/O of the crawl took, on average
    latency_ms: float | None
    baseline_ms: float | None
    probe_error: str | None

    def hung(self, after: float) -> bool:
        return self.age >= after

    @property
    def age(self) -> float:
        return max(self.stuck_s, self.crawl_s, self.probe_s)


def probe_directory(ctx: CheckContext) -> Path:
    import tempfile

    base = ctx.state.directory or Path(tempfile.gettempdir()) / "hostagent"
    return base / "probes"


# -- the clock: pure, one look at the counters after another ----------------------------------

def _counts(stat: BlockStat, direction: str) -> tuple[int, int, int | None]:
    """Completed I/O, milliseconds they took, and I/O in flight (None: unknown) in one direction."""
    if direction == "reads":
        return stat.reads, stat.read_ms, stat.in_flight_reads
    return stat.writes, stat.write_ms, stat.in_flight_writes


def advance(clock: dict[str, Any] | None, stat: BlockStat, now: float, crawl_ms: float,
            idle_after: float) -> dict[str, Any]:
    """The member's clock after one more look at its counters.

    Stalled since: the first look that saw I/O in flight in a direction that completed nothing
    from then on; that I/O has been outstanding at least that long.  Crawling since: a window
    whose completions averaged ``L`` >= crawl_ms ms means one of them was issued at least
    ``L`` before this look; the crawl lasts while no faster completion comes and the member has
    I/O in flight or completed some within ``idle_after`` s (bio-based devices such as dm show
    no I/O in flight)."""
    fresh: dict[str, Any] = {"t": now, "pending": stat.pending}
    for direction in DIRECTIONS:
        done, spent, flying = _counts(stat, direction)
        fresh[direction] = {"done": done, "ms": spent, "flying": flying, "stalled": None, "crawl": None,
                            "crawl_io_ms": None, "last_done": now}
    if clock is None or "reads" not in clock:
        return fresh
    for direction in DIRECTIONS:
        now_d, before = fresh[direction], clock[direction]
        if now_d["done"] < before["done"] or now_d["ms"] < before["ms"]:
            continue  # counters reset (device re-created): start over
        completed = now_d["done"] - before["done"]
        if now_d["flying"] is None:  # no inflight file: only the total is known, for both directions
            flying, before_flying = stat.pending, clock.get("pending", 0)
            nothing_done = stat.completed == sum(clock[d]["done"] for d in DIRECTIONS)
        else:
            flying, before_flying = now_d["flying"], before["flying"] or 0
            nothing_done = completed == 0
        if flying > 0 and nothing_done:
            now_d["stalled"] = before["stalled"] or (clock["t"] if before_flying > 0 else now)
        if completed:
            latency = (now_d["ms"] - before["ms"]) / completed
            if latency >= crawl_ms:
                now_d["crawl"] = before["crawl"] or now - latency / 1000
                now_d["crawl_io_ms"] = latency
        else:
            now_d["last_done"] = before["last_done"]
            if before["crawl"] is not None and (flying > 0 or now - before["last_done"] < idle_after):
                now_d["crawl"], now_d["crawl_io_ms"] = before["crawl"], before["crawl_io_ms"]
    return fresh


def clock_ages(clock: dict[str, Any], now: float) -> tuple[float, float, float | None]:
    """(stalled for, crawling for, the crawl's time per I/O) over both directions."""
    stalled = [now - clock[d]["stalled"] for d in DIRECTIONS if clock[d]["stalled"] is not None]
    crawling = [(now - clock[d]["crawl"], clock[d]["crawl_io_ms"]) for d in DIRECTIONS
                if clock[d]["crawl"] is not None]
    crawl = max(crawling) if crawling else (0.0, None)
    return max(stalled, default=0.0), crawl[0], crawl[1]


class Clocks:
    """Where the members' clocks live between looks: the daemon keeps them in memory
    (``ctx.volatile``) and advances them every second; a one-shot check keeps them in the
    state store from one run to the next."""

    def __init__(self, ctx: CheckContext) -> None:
        self.ctx = ctx

    def get(self, device: str) -> dict[str, Any] | None:
        if self.ctx.volatile is not None:
            value: dict[str, Any] | None = self.ctx.volatile.get(f"hung.clock.{device}")
            return value
        return self.ctx.state.get(f"hung.clock.{device}")  # type: ignore[no-any-return]

    def put(self, device: str, clock: dict[str, Any]) -> None:
        if self.ctx.volatile is not None:
            self.ctx.volatile[f"hung.clock.{device}"] = clock
        else:
            self.ctx.state.put(f"hung.clock.{device}", clock)


def tick(ctx: CheckContext, clocks: Clocks, device: str, config: Config) -> tuple[BlockStat, dict[str, Any]] | None:
    stat = read_blockstat(ctx.host, device)
    if stat is None:
        return None
    try:
        clock = advance(clocks.get(device), stat, ctx.now, config.crawl_ms, config.hung_after)
    except (KeyError, TypeError, ValueError, AttributeError):  # a stored clock of another shape: start over
        clock = advance(None, stat, ctx.now, config.crawl_ms, config.hung_after)
    clocks.put(device, clock)
    return stat, clock


def sample(ctx: CheckContext, config: Config) -> list[str]:
    """The daemon's look every second: advance the clocks of the members the last run watched
    (starting their probes when due) and return those whose clock has now reached
    ``hung_after`` without the last run having reported them: the check should run now."""
    assert ctx.volatile is not None
    watched: list[str] = ctx.volatile.get("hung.members", [])
    reported: set[str] = ctx.volatile.get("hung.reported", set())
    prober = _prober(ctx, config)
    clocks = Clocks(ctx)
    due = []
    for device in watched:
        looked = tick(ctx, clocks, device, config)
        if looked is None:
            continue
        stalled, crawling, _ = clock_ages(looked[1], ctx.now)
        probe = prober.poll(device, ctx.now) if prober is not None else None
        age = max(stalled, crawling, (probe.outstanding_s or 0.0) if probe else 0.0)
        if age >= config.hung_after and device not in reported:
            due.append(device)
    return due


def _prober(ctx: CheckContext, config: Config) -> Prober | None:
    if not config.probes or ctx.host.is_snapshot:
        return None
    from hostagent.probe import Prober

    return Prober(ctx.host, ctx.state, probe_directory(ctx), config.probe_interval)


def observe(ctx: CheckContext, device: str, prober: Prober | None, config: Config) -> Observation | None:
    looked = tick(ctx, Clocks(ctx), device, config)
    if looked is None:
        return None
    stat, clock = looked
    now = ctx.now
    key = f"hung.counters.{device}"  # the per-run window behind disk.slow
    last = ctx.state.get(key)
    latency = None
    if last is not None and stat.completed > last["completed"] and stat.io_ticks_ms >= last["io_ticks"]:
        latency = (stat.io_ticks_ms - last["io_ticks"]) / (stat.completed - last["completed"])
    ctx.state.put(key, {"completed": stat.completed, "io_ticks": stat.io_ticks_ms, "t": now})
    baseline = ctx.state.get(f"hung.latency.{device}")
    if latency is not None:
        ctx.state.put(f"hung.latency.{device}", latency if baseline is None else 0.9 * baseline + 0.1 * latency)
    probe = prober.poll(device, now) if prober is not None else None
    stalled, crawling, per_io = clock_ages(clock, now)
    return Observation(
        device=device,
        stuck_s=stalled,
        crawl_s=crawling,
        probe_s=probe.outstanding_s or 0.0 if probe else 0.0,
        pending=stat.pending,
        crawl_io_ms=per_io,
        latency_ms=latency,
        baseline_ms=baseline,
        probe_error=probe.last_error if probe else None,
    )


def run(ctx: CheckContext, config: Config) -> list[Finding]:
    arrays = [a for a in ctx.inventory.arrays() if a.active and not a.is_container]
    prober = _prober(ctx, config)
    observations: dict[str, Observation] = {}
    for array in arrays:
        for member in array.members:
            if "faulty" in member.states or "spare" in member.states or member.device in observations:
                continue
            seen = observe(ctx, member.device, prober, config)
            if seen is not None:
                observations[member.device] = seen
    ctx.examine(NAME, len(observations), "members")
    hung = {d for d, o in observations.items() if o.hung(config.hung_after)}
    if ctx.volatile is not None:  # what the daemon's sampler watches until the next run
        ctx.volatile["hung.members"] = sorted(observations)
        ctx.volatile["hung.reported"] = hung
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


def _how(seen: Observation) -> str:
    if seen.crawl_s >= max(seen.stuck_s, seen.probe_s):
        return f"each I/O takes {(seen.crawl_io_ms or 0) / 1000:.0f} s"
    return "no I/O has completed"


def _slow(seen: Observation, config: Config) -> bool:
    return (seen.latency_ms is not None and seen.baseline_ms is not None and seen.baseline_ms > 0
            and seen.latency_ms >= config.slow_min_ms and seen.latency_ms >= config.slow_factor * seen.baseline_ms)


def _names(ctx: CheckContext, device: str) -> tuple[str, ...]:
    return (device, *parent_disks(ctx.host, device))


def _signals(ctx: CheckContext, array: MdArray, member: MdMember, seen: Observation, kernel: list[str]) -> list[str]:
    lines = []
    if seen.stuck_s:
        lines.append(f"{seen.pending} I/O in flight and none completed for {seen.stuck_s:.0f} s")
    if seen.crawl_s:
        lines.append(f"every I/O completed for {seen.crawl_s:.0f} s took {(seen.crawl_io_ms or 0) / 1000:.1f} s or so "
                     "(crawling)")
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
    from hostagent.actions.hung import device_layer, ladder, refusals

    subject = f"{array.name}/{member.device}"
    duration = seen.age
    reasons = refusals(array, member, hung)
    after = (f"Afterwards: find the cause (smartctl -x, cable, controller), then re-add the member "
             f"(mdadm --manage {array.dev_path} --re-add {member.dev_path}) or swap the disk: "
             f"hostagent disk locate {disk_of_partition(member.device)} blinks its slot, and hostagent disk "
             f"replace --old {disk_of_partition(member.device)} --new NEW vets the new disk, adds it to every "
             "array and installs the bootloader.")
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
                   f"{member.device} in {array.name} is hung: {_how(seen)} for {duration:.0f} s; "
                   f"md does not fail it by itself; {policy}",
                   detail, Remedy(f"Force {member.device} out of {array.name} so the array accepts writes again",
                                  after, tuple(s.argv for s in steps)))
