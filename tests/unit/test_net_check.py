"""The net check over snapshot roots whose counters change between two looks: SYN floods, SYN
cookies and backlogs, the pps baseline (warm-up, spikes not learned, counter resets) and ICMP
floods; and the mitigation interlocks and the ExaBGP pipe."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import pytest

from checks import net
from hostagent.actions import AuditLog
from hostagent.actions.net import MitigationStore, blackhole, parse_prefix, write_pipe
from hostagent.context import CheckContext
from hostagent.errors import ActionRefused, HostagentError, ProbeUnavailable
from hostagent.host import Host
from hostagent.model import Finding, Severity
from hostagent.state import StateStore
from tests.snapshots import HostSnapshot

FIXTURES = Path(__file__).parent.parent / "fixtures/net"
NETSTAT = (FIXTURES / "prometheus-procfs/netstat").read_text()
SNMP = (FIXTURES / "prometheus-procfs/snmp").read_text()
EMPTY_TCP = (FIXTURES / "captured/host-tcp6").read_text()


def with_counter(text: str, group: str, key: str, value: int) -> str:
    """A /proc/net/netstat or snmp text with one counter set."""
    lines = text.splitlines()
    for index in range(0, len(lines), 2):
        if lines[index].startswith(group + ":"):
            names, values = lines[index].split()[1:], lines[index + 1].split()[1:]
            values[names.index(key)] = str(value)
            lines[index + 1] = f"{group}: " + " ".join(values)
    return "\n".join(lines) + "\n"


def dev(rx_packets: int) -> str:
    return ("Inter-|   Receive\n face |bytes    packets\n"
            f"    lo: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n  eth0: 0 {rx_packets} 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n")


class Machine:
    """A snapshot root with /proc/net and the TCP sysctls, looked at by one state store."""

    def __init__(self, root: Path, config: net.Config | None = None) -> None:
        self.snapshot = HostSnapshot(root)
        self.state = StateStore(None)
        self.config = config or net.Config()
        self.set(tcp=EMPTY_TCP, netstat=NETSTAT, snmp=SNMP, rx=1000)
        for name, value in (("ipv4/tcp_syncookies", 1), ("ipv4/tcp_max_syn_backlog", 512), ("core/somaxconn", 4096)):
            self.snapshot.write(f"proc/sys/net/{name}", f"{value}\n")

    def set(self, *, tcp: str | None = None, netstat: str | None = None, snmp: str | None = None,
            rx: int | None = None) -> None:
        for path, text in (("proc/net/tcp", tcp), ("proc/net/netstat", netstat), ("proc/net/snmp", snmp)):
            if text is not None:
                self.snapshot.write(path, text)
        if rx is not None:
            self.snapshot.write("proc/net/dev", dev(rx))

    def sysctl(self, name: str, value: int) -> None:
        self.snapshot.write(f"proc/sys/{name.replace('.', '/')}", f"{value}\n")

    def look(self, now: float) -> list[Finding]:
        ctx = CheckContext.for_host(Host(self.snapshot.root), self.state)
        ctx.now = now
        return net.run(ctx, self.config)


def by_code(findings: list[Finding]) -> dict[str, Finding]:
    return {f.code: f for f in findings}


def test_quiet_host_has_no_findings(tmp_path: Path) -> None:
    machine = Machine(tmp_path)
    assert machine.look(100.0) == [] and machine.look(105.0) == []


def test_real_flood_file_is_critical_and_names_port_and_prefix(tmp_path: Path) -> None:
    machine = Machine(tmp_path)
    machine.set(tcp=(FIXTURES / "captured/synflood-tcp").read_text())
    flood = by_code(machine.look(100.0))["net.syn_flood"]  # instantaneous: the first look is enough
    assert (flood.subject, flood.severity) == ("10.77.0.2:8080", Severity.CRITICAL)
    assert "top sources 10.77.1.0/24 (2699, 89%), 10.77.2.0/24 (300, 10%)" in flood.summary
    assert flood.remedy is not None
    assert [c[3] for c in flood.remedy.commands] == ["10.77.1.0/24", "10.77.2.0/24"]  # both ≥ 10 %
    narrow = Machine(tmp_path / "b", net.Config(blackhole_min_share=0.5, announce_victim=True))
    narrow.set(tcp=(FIXTURES / "captured/synflood-tcp").read_text())
    remedy = by_code(narrow.look(100.0))["net.syn_flood"].remedy
    assert remedy is not None and [c[2:4] for c in remedy.commands] == [("blackhole", "10.77.1.0/24"),
                                                                         ("announce", "10.77.0.2")]


def test_warning_below_critical_and_critical_once_drops_rise(tmp_path: Path) -> None:
    machine = Machine(tmp_path, net.Config(syn_recv_warning=40, syn_recv_critical=1000))
    machine.snapshot.write("proc/net/tcp6", (FIXTURES / "captured/synflood-tcp6").read_text())
    first = by_code(machine.look(100.0))
    assert first["net.syn_flood"].severity is Severity.WARNING and first["net.syn_flood"].subject == "[fd77::2]:443"
    machine.set(netstat=with_counter(NETSTAT, "TcpExt", "ListenDrops", 500))
    second = by_code(machine.look(105.0))
    assert second["net.syn_flood"].severity is Severity.CRITICAL
    assert "ListenDrops 100" in second["net.syn_flood"].detail  # 500 drops in 5 s
    assert second["net.backlog_small"].remedy is not None
    assert ("sysctl", "-w", "net.ipv4.tcp_max_syn_backlog=8192") in second["net.backlog_small"].remedy.commands


def test_syncookies_off_and_cookie_floods(tmp_path: Path) -> None:
    machine = Machine(tmp_path)
    machine.sysctl("net.ipv4.tcp_syncookies", 0)
    off = by_code(machine.look(100.0))["net.syncookies_off"]
    assert off.severity is Severity.WARNING and off.remedy is not None
    assert off.remedy.commands == (("sysctl", "-w", "net.ipv4.tcp_syncookies=1"),)
    machine.sysctl("net.ipv4.tcp_syncookies", 1)
    tcp6 = (FIXTURES / "captured/synflood-tcp6").read_text()
    machine.snapshot.write("proc/net/tcp6", tcp6)
    machine.set(netstat=with_counter(NETSTAT, "TcpExt", "SyncookiesSent", 5000))
    cookies = by_code(machine.look(105.0))
    assert "net.syncookies_off" not in cookies
    # 50 half-open only (the queue is full, cookies answer): still a flood, a WARNING
    assert cookies["net.syn_flood"].severity is Severity.WARNING
    assert cookies["net.syn_flood"].subject == "[fd77::2]:443"


def test_pps_baseline_warms_up_spikes_are_not_learned_and_resets_are_skipped(tmp_path: Path) -> None:
    machine = Machine(tmp_path, net.Config(pps_warmup=3, pps_floor=1000, pps_factor=10))
    rx, now = 1000, 100.0
    machine.look(now)
    for _ in range(3):  # 100 packets/s while learning
        rx, now = rx + 500, now + 5
        machine.set(rx=rx)
        assert machine.look(now) == []
    rx, now = rx + 50_000, now + 5  # 10 000 packets/s: 100 times the baseline
    machine.set(rx=rx)
    spike = by_code(machine.look(now))["net.pps_spike"]
    assert (spike.subject, spike.severity) == ("eth0", Severity.WARNING)
    assert "10000 packets/s received, 100× the usual 100" in spike.summary
    rx, now = rx + 50_000, now + 5
    machine.set(rx=rx)
    assert "net.pps_spike" in by_code(machine.look(now))  # the spike did not become the baseline
    assert machine.state.get("net.pps.eth0") == {"mean": 100.0, "samples": 3}
    machine.set(rx=10)  # the interface was re-created: counters restart
    assert machine.look(now + 5) == []
    limited = Machine(tmp_path / "b", net.Config(pps_limit=50))
    limited.look(100.0)
    limited.set(rx=2000)
    hard = by_code(limited.look(105.0))["net.pps_spike"]  # no warm-up for a fixed limit
    assert hard.severity is Severity.CRITICAL and "above the limit of 50" in hard.summary


def test_icmp_echo_rates(tmp_path: Path) -> None:
    machine = Machine(tmp_path)
    machine.look(100.0)
    machine.set(snmp=with_counter(SNMP, "Icmp", "InEchos", 5000))
    assert by_code(machine.look(105.0))["net.icmp_flood"].severity is Severity.WARNING  # 1000/s
    machine.set(snmp=with_counter(SNMP, "Icmp", "InEchos", 60000))
    assert by_code(machine.look(110.0))["net.icmp_flood"].severity is Severity.CRITICAL  # 11 000/s
    assert machine.look(1000.0) == []  # after a long gap there is no rate


def test_snapshot_without_proc_net_is_quiet_not_an_error(tmp_path: Path) -> None:
    ctx = CheckContext.for_host(Host(HostSnapshot(tmp_path).root))
    assert net.run(ctx, net.Config()) == []


def test_prefix_interlocks() -> None:
    assert str(parse_prefix("203.0.113.7/24")) == "203.0.113.0/24"
    for text, reason in (("10.0.0.0/8", "wider than /16"), ("2001:db8::/16", "wider than /32"),
                         ("bogus", "not an IP address"), ("203.0.113.0/24", "one attacked address")):
        with pytest.raises(ActionRefused, match=reason):
            parse_prefix(text, host_route=text == "203.0.113.0/24")


def test_blackhole_refuses_protected_networks_and_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, audit = MitigationStore(tmp_path), AuditLog(tmp_path)
    config = net.Config(never_block=("198.51.100.0/24",), mitigation_max=1)
    host = Host("/")
    for prefix, why in (("198.51.100.0/25", "never_block"), ("127.0.0.0/16", "loopback")):
        with pytest.raises(ActionRefused, match=why):
            blackhole(host, prefix, config=config, store=store, audit=audit, apply=False)
    monkeypatch.setenv("SSH_CONNECTION", "203.0.113.9 50000 192.0.2.1 22")
    with pytest.raises(ActionRefused, match="the SSH session giving this command"):
        blackhole(host, "203.0.113.0/24", config=config, store=store, audit=audit, apply=False)
    with pytest.raises(ActionRefused, match="--ttl 90000"):
        blackhole(host, "198.18.77.0/24", config=config, store=store, audit=audit, apply=False, ttl=90000)
    dry = blackhole(host, "198.18.77.0/24", config=config, store=store, audit=audit, apply=False)
    assert dry.commands == ("ip route add blackhole 198.18.77.0/24",) and not dry.applied
    assert store.active() == []  # a dry run is not recorded
    with store.locked() as active:
        active["blackhole:198.18.77.0/24"] = dataclasses.replace(dry.mitigation, applied=True)
    with pytest.raises(ActionRefused, match="cap"):
        blackhole(host, "198.18.78.0/24", config=config, store=store, audit=audit, apply=False)


def test_damaged_mitigation_list_is_named(tmp_path: Path) -> None:
    (tmp_path / "mitigations.json").write_text("{not json")
    with pytest.raises(HostagentError, match=r"mitigations\.json: unreadable"):
        MitigationStore(tmp_path).active()


def test_exabgp_pipe_writes_whole_lines_and_never_blocks(tmp_path: Path) -> None:
    pipe = tmp_path / "exabgp.in"
    with pytest.raises(ProbeUnavailable, match="No such file"):
        write_pipe(str(pipe), "announce route 192.0.2.1/32 next-hop self")
    pipe.write_text("")
    with pytest.raises(ProbeUnavailable, match="not a named pipe"):
        write_pipe(str(pipe), "x")
    pipe.unlink()
    os.mkfifo(pipe)
    with pytest.raises(ProbeUnavailable, match="no process is reading it"):
        write_pipe(str(pipe), "x")
    received: list[str] = []
    reader_ready = threading.Event()

    def read() -> None:
        fd = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
        reader_ready.set()
        with os.fdopen(fd) as handle:
            while not received:
                received.extend(handle.readlines())

    thread = threading.Thread(target=read)
    thread.start()
    reader_ready.wait()
    write_pipe(str(pipe), "announce route 192.0.2.1/32 next-hop 192.0.2.254 community [65535:666]")
    thread.join(timeout=10)
    assert received == ["announce route 192.0.2.1/32 next-hop 192.0.2.254 community [65535:666]\n"]
