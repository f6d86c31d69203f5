"""Network attacks: SYN floods, SYN cookies off, a backlog too small, packet-rate spikes, ICMP floods.

Everything is read from /proc/net and /proc/sys/net of the agent's network namespace.  Rates are
counter deltas between two runs (state ``net.sample``); the first run only records.  The daemon
runs this check every ``watch.net_interval`` seconds (5 by default), and its CRITICAL findings are
mailed at once: the page the operator never got.

Remedies are commands for ``hostagent net``: blackhole routes for the top source prefixes and, when
``announce_victim`` is set, an RFC 7999 blackhole announcement of the attacked address through
ExaBGP.  The daemon applies them only when ``mitigate = "apply"`` (hostagent.commands.remediate).
"""

from __future__ import annotations

from typing import Any, Literal

from hostagent.context import CheckContext
from hostagent.model import Finding, Remedy, Severity
from hostagent.records import record
from hostagent.sources.netproc import (
    NETSTAT_PATH,
    SNMP_PATH,
    HalfOpen,
    InterfaceCounters,
    read_counters,
    read_half_open,
    read_net_dev,
    read_sysctl,
)

NAME = "net"
DESCRIPTION = "SYN floods, SYN cookies, listen backlogs, packets per second and ICMP echo floods"
TCPEXT_KEYS = ("ListenOverflows", "ListenDrops", "SyncookiesSent", "SyncookiesRecv", "SyncookiesFailed")
MAX_SAMPLE_GAP = 600.0  # s: an older previous sample (the agent was stopped) gives no rates


@record(frozen=True)
class Config:
    enabled: bool = True
    syn_recv_warning: int = 256  # half-open connections on one local address and port
    syn_recv_critical: int = 1024
    syncookies_warning: float = 100.0  # SYN cookies sent per second: the SYN queue is full
    top_sources: int = 5  # source prefixes named in a finding
    pps_limit: int = 0  # received packets/s on one interface: CRITICAL above it (0: no fixed limit)
    pps_factor: float = 10.0  # WARNING at this many times the learned baseline...
    pps_floor: int = 10000  # ...and at least this many packets/s
    pps_warmup: int = 12  # samples before the baseline is trusted
    pps_alpha: float = 0.1  # EWMA weight of each new sample
    ignore_interfaces: tuple[str, ...] = ("lo",)
    icmp_echo_warning: float = 500.0  # echo requests received per second
    icmp_echo_critical: float = 5000.0
    mitigate: Literal["off", "dry-run", "apply"] = "off"  # what the daemon does about a CRITICAL SYN flood
    blackhole_sources: int = 3  # at most this many source prefixes per attacked service
    blackhole_min_share: float = 0.1  # a prefix must send this share of the half-open connections
    announce_victim: bool = False  # also announce the attacked /32 (/128) with community 65535:666
    exabgp_pipe: str | None = None  # the named pipe an ExaBGP process reads API commands from
    exabgp_next_hop: str = "192.0.2.1"  # the discard next hop your routers map blackhole routes to
    mitigation_ttl: float = 600.0  # s until a mitigation is removed again
    mitigation_max_ttl: float = 86400.0
    mitigation_max: int = 16  # active mitigations at most
    never_block: tuple[str, ...] = ()  # prefixes never blackholed (management, monitoring, upstream)


@record(frozen=True)
class Rates:
    """Per-second rates between the previous run and this one."""

    elapsed: float
    tcpext: dict[str, float]
    in_echos: float
    rx_packets: dict[str, float]


def run(ctx: CheckContext, config: Config) -> list[Finding]:
    half_open = read_half_open(ctx.host)
    snmp = read_counters(ctx.host, SNMP_PATH)
    tcpext = read_counters(ctx.host, NETSTAT_PATH).get("TcpExt", {})
    interfaces = read_net_dev(ctx.host)
    ctx.examine(NAME, len(interfaces), "interfaces")
    sample = {"t": ctx.now, "tcpext": {k: tcpext[k] for k in TCPEXT_KEYS if k in tcpext},
              "in_echos": snmp.get("Icmp", {}).get("InEchos"),
              "rx_packets": {name: counters.rx_packets for name, counters in interfaces.items()}}
    rates = rates_between(ctx.state.get("net.sample"), sample)
    ctx.state.put("net.sample", sample)
    sysctls = {name: read_sysctl(ctx.host, name) for name in
               ("net.ipv4.tcp_syncookies", "net.ipv4.tcp_max_syn_backlog", "net.core.somaxconn")}

    findings = syn_flood(half_open, rates, sysctls, config)
    findings += syncookies_and_backlog(half_open, rates, sysctls, config, flooded=bool(findings))
    baselines = {name: ctx.state.get(f"net.pps.{name}") for name in interfaces}
    pps_findings, updated = pps_spikes(interfaces, rates, baselines, config)
    for name, baseline in updated.items():
        ctx.state.put(f"net.pps.{name}", baseline)
    findings += pps_findings
    findings += icmp_flood(rates, config)
    return findings


def rates_between(previous: dict[str, Any] | None, current: dict[str, Any]) -> Rates | None:
    """Counter rates; None on the first run, after a long gap, or when the clock went back."""
    if not previous:
        return None
    elapsed = current["t"] - previous["t"]
    if elapsed <= 0 or elapsed > MAX_SAMPLE_GAP:
        return None

    def rate(now: int | None, before: int | None) -> float:
        # a counter that went down was reset (interface re-created): no rate for it
        return (now - before) / elapsed if now is not None and before is not None and now >= before else 0.0

    return Rates(
        elapsed,
        {k: rate(v, previous["tcpext"].get(k)) for k, v in current["tcpext"].items()},
        rate(current["in_echos"], previous.get("in_echos")),
        {k: rate(v, previous["rx_packets"].get(k)) for k, v in current["rx_packets"].items()
         if k in previous["rx_packets"] and v >= previous["rx_packets"][k]},
    )


def _per_second(rates: Rates | None, key: str) -> float:
    return rates.tcpext.get(key, 0.0) if rates else 0.0


def blackhole_candidates(entry: HalfOpen, config: Config) -> list[str]:
    """The source prefixes worth a blackhole route: the top ones with a real share of the flood."""
    return [prefix for prefix, count in entry.top_sources(config.blackhole_sources)
            if count >= config.blackhole_min_share * entry.count]


def syn_flood(half_open: dict[Any, HalfOpen], rates: Rates | None, sysctls: dict[str, int | None],
              config: Config) -> list[Finding]:
    findings = []
    drops = _per_second(rates, "ListenDrops") + _per_second(rates, "ListenOverflows")
    cookies = _per_second(rates, "SyncookiesSent")
    busiest = max(half_open.values(), key=lambda e: e.count, default=None)
    for entry in sorted(half_open.values(), key=lambda e: -e.count):
        flooded_by_cookies = entry is busiest and cookies >= config.syncookies_warning
        if entry.count < config.syn_recv_warning and not flooded_by_cookies:
            continue
        if entry.count >= config.syn_recv_critical or (drops > 0 and entry.count >= config.syn_recv_warning):
            severity = Severity.CRITICAL
        else:
            severity = Severity.WARNING
        top = entry.top_sources(config.top_sources)
        sources = ", ".join(f"{prefix} ({count}, {100 * count // entry.count}%)" for prefix, count in top)
        detail = [f"half-open (SYN_RECV) connections to {entry.local}: {entry.count}",
                  f"top source prefixes: {sources}",
                  f"distinct source prefixes: {len(entry.sources)}"]
        if rates:
            detail.append(f"per second over the last {rates.elapsed:.0f} s: " + ", ".join(
                f"{key} {rates.tcpext.get(key, 0.0):.0f}" for key in TCPEXT_KEYS))
        findings.append(Finding(
            "net.syn_flood", NAME, str(entry.local), severity,
            f"SYN flood on {entry.local}: {entry.count} half-open connections, top sources {sources}",
            "\n".join(detail), _flood_remedy(entry, sysctls, config),
            f"SYN flood on {entry.local} ({entry.count} half-open)"))
    return findings


def _flood_remedy(entry: HalfOpen, sysctls: dict[str, int | None], config: Config) -> Remedy:
    ttl = f"{config.mitigation_ttl:g}"
    reason = f"SYN flood on {entry.local}"
    commands: list[tuple[str, ...]] = [("hostagent", "net", "blackhole", prefix, "--ttl", ttl, "--reason", reason,
                                        "--apply") for prefix in blackhole_candidates(entry, config)]
    if config.announce_victim:
        commands.append(("hostagent", "net", "announce", entry.local.address, "--ttl", ttl, "--reason", reason,
                         "--apply"))
    if sysctls.get("net.ipv4.tcp_syncookies") == 0:
        commands.append(("sysctl", "-w", "net.ipv4.tcp_syncookies=1"))
    if blackhole_candidates(entry, config):
        what = "blackhole the top source prefixes for a while (the routes expire)"
    else:
        what = "the sources are spread out (spoofed?): blackholing them does not help; ask upstream to filter"
    if sysctls.get("net.ipv4.tcp_syncookies") == 0:
        what += "; turn on SYN cookies"
    return Remedy(what, "each blackholed prefix frees the listener's SYN queue for real clients", tuple(commands))


def syncookies_and_backlog(half_open: dict[Any, HalfOpen], rates: Rates | None, sysctls: dict[str, int | None],
                           config: Config, flooded: bool) -> list[Finding]:
    findings = []
    if sysctls.get("net.ipv4.tcp_syncookies") == 0:
        findings.append(Finding(
            "net.syncookies_off", NAME, "net.ipv4.tcp_syncookies", Severity.CRITICAL if flooded else Severity.WARNING,
            "SYN cookies are off: a SYN flood fills the listen queue and real clients are dropped",
            "net.ipv4.tcp_syncookies = 0",
            Remedy("turn SYN cookies on, now and at boot",
                   "with cookies, a full SYN queue answers with cookies instead of dropping connections",
                   (("sysctl", "-w", "net.ipv4.tcp_syncookies=1"),)), "SYN cookies off"))
    max_syn_backlog = sysctls.get("net.ipv4.tcp_max_syn_backlog")
    somaxconn = sysctls.get("net.core.somaxconn")
    overflows = _per_second(rates, "ListenOverflows")
    drops = _per_second(rates, "ListenDrops")
    busiest = max((e.count for e in half_open.values()), default=0)
    # without cookies the kernel drops SYNs once a queue holds 3/4 of tcp_max_syn_backlog
    near_limit = (sysctls.get("net.ipv4.tcp_syncookies") == 0 and max_syn_backlog is not None
                  and busiest >= 0.75 * max_syn_backlog)
    if overflows > 0 or drops > 0 or near_limit:
        commands = []
        if somaxconn is not None:
            commands.append(("sysctl", "-w", f"net.core.somaxconn={max(4096, 2 * somaxconn)}"))
        if max_syn_backlog is not None:
            commands.append(("sysctl", "-w", f"net.ipv4.tcp_max_syn_backlog={max(8192, 2 * max_syn_backlog)}"))
        findings.append(Finding(
            "net.backlog_small", NAME, "tcp", Severity.WARNING,
            f"listen queues overflow: {overflows:.0f} overflows/s, {drops:.0f} dropped SYNs/s, "
            f"{busiest} half-open on the busiest listener",
            f"net.core.somaxconn = {somaxconn}, net.ipv4.tcp_max_syn_backlog = {max_syn_backlog}",
            Remedy("raise the backlog limits, then the service's own listen() backlog",
                   "a listen() backlog is capped by net.core.somaxconn", tuple(commands))))
    return findings


def pps_spikes(interfaces: dict[str, InterfaceCounters], rates: Rates | None,
               baselines: dict[str, dict[str, float] | None], config: Config
               ) -> tuple[list[Finding], dict[str, dict[str, float]]]:
    """Findings, and the updated baselines (EWMA of packets/s; spikes are not learned)."""
    findings: list[Finding] = []
    updated: dict[str, dict[str, float]] = {}
    if rates is None:
        return findings, updated
    for name in interfaces:
        if name in config.ignore_interfaces or name not in rates.rx_packets:
            continue
        pps = rates.rx_packets[name]
        baseline = baselines.get(name) or {"mean": 0.0, "samples": 0}
        learned = baseline["samples"] >= config.pps_warmup
        if config.pps_limit and pps > config.pps_limit:
            findings.append(Finding("net.pps_spike", NAME, name, Severity.CRITICAL,
                                    f"{name}: {pps:.0f} packets/s received, above the limit of {config.pps_limit}",
                                    _pps_detail(pps, baseline, learned)))
            continue
        if learned and pps >= config.pps_floor and pps >= config.pps_factor * baseline["mean"]:
            findings.append(Finding("net.pps_spike", NAME, name, Severity.WARNING,
                                    f"{name}: {pps:.0f} packets/s received, {pps / max(baseline['mean'], 1):.0f}× "
                                    f"the usual {baseline['mean']:.0f}", _pps_detail(pps, baseline, learned)))
            continue
        mean = pps if baseline["samples"] == 0 else (1 - config.pps_alpha) * baseline["mean"] + config.pps_alpha * pps
        updated[name] = {"mean": mean, "samples": baseline["samples"] + 1}
    return findings, updated


def _pps_detail(pps: float, baseline: dict[str, float], learned: bool) -> str:
    state = "learned" if learned else f"still learning ({baseline['samples']:.0f} samples)"
    return f"received {pps:.0f} packets/s; baseline {baseline['mean']:.0f} packets/s, {state}"


def icmp_flood(rates: Rates | None, config: Config) -> list[Finding]:
    if rates is None or rates.in_echos < config.icmp_echo_warning:
        return []
    severity = Severity.CRITICAL if rates.in_echos >= config.icmp_echo_critical else Severity.WARNING
    return [Finding("net.icmp_flood", NAME, "icmp", severity,
                    f"{rates.in_echos:.0f} ICMP echo requests/s received (warning at {config.icmp_echo_warning:g})",
                    "Icmp InEchos from /proc/net/snmp",
                    Remedy("rate-limit echo requests at the edge, or drop them for the attacked addresses",
                           "each echo costs a reply; the kernel also limits replies with net.ipv4.icmp_ratelimit"))]

