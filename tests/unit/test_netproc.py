"""/proc/net parsers on real samples: a real SYN flood's /proc/net/tcp and tcp6 (captured in the
test namespaces), the prometheus/procfs netstat, snmp and dev samples, and this machine's files;
and a table of malformed input that must name the file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostagent.errors import ParseError
from hostagent.sources.netproc import (
    Endpoint,
    decode_address,
    parse_counters,
    parse_net_dev,
    parse_syn_recv,
)

FIXTURES = Path(__file__).parent.parent / "fixtures/net"


def read(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_real_ipv4_syn_flood() -> None:
    found = parse_syn_recv(read("captured/synflood-tcp"), "tcp", 4)
    entry = found[Endpoint("10.77.0.2", 8080)]
    assert list(found) == [Endpoint("10.77.0.2", 8080)]
    assert entry.count == 2999
    assert entry.top_sources(5) == [("10.77.1.0/24", 2699), ("10.77.2.0/24", 300)]


def test_real_ipv6_syn_flood_with_v4_mapped_sources() -> None:
    found = parse_syn_recv(read("captured/synflood-tcp6"), "tcp6", 6)
    v6 = found[Endpoint("fd77::2", 443)]
    assert (v6.count, v6.top_sources(5)) == (50, [("fd77:1::/48", 40), ("fd77:2:5::/48", 10)])
    mapped = found[Endpoint("10.77.0.2", 443)]  # a dual-stack listener's IPv4 clients, as ::ffff:a.b.c.d
    assert (mapped.count, mapped.top_sources(5)) == (5, [("10.77.2.0/24", 5)])
    assert str(Endpoint("fd77::2", 443)) == "[fd77::2]:443"


@pytest.mark.parametrize("name", ["captured/host-tcp", "captured/host-tcp6"])
def test_files_without_half_open_connections(name: str) -> None:
    assert parse_syn_recv(read(name), name, 6 if name.endswith("6") else 4) == {}


def test_addresses_in_either_byte_order() -> None:
    assert decode_address("0100007F") == "127.0.0.1"
    assert decode_address("7F000001", "big") == "127.0.0.1"
    assert decode_address("B80D01200000000000000000FF000000") == "2001:db8::ff"
    assert decode_address("0000000000000000FFFF00000200A8C0") == "192.168.0.2"
    line = "   0: 0200A8C0:0050 0A0B0C0D:D431 03 00000000:00000000 00:00000000 00000000     0        0 0 0\n"
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    little = parse_syn_recv(header + line, "tcp", 4)
    assert little[Endpoint("192.168.0.2", 80)].top_sources(1) == [("13.12.11.0/24", 1)]
    big = parse_syn_recv(header + line, "tcp", 4, "big")
    assert big[Endpoint("2.0.168.192", 80)].top_sources(1) == [("10.11.12.0/24", 1)]


def test_wide_slot_numbers_of_large_tables() -> None:
    header = "  sl  local_address rem_address   st\n"
    line = "{:>6}: 0200A8C0:0050 0A0B0C0D:D431 03 00000000:00000000 00:00000000 00000000     0        0 0 0\n"
    found = parse_syn_recv(header + "".join(line.format(i) for i in range(99998, 100002)), "tcp", 4)
    assert found[Endpoint("192.168.0.2", 80)].count == 4


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("", 1, "header"),
    ("   0: 0100007F:0050 00000000:0000 0A 0\n", 1, "header"),
    ("  sl local\n   0: 0100007F:0050 00000000:0000 0A 0\n garbage here\n", 3, "not a socket line"),
    ("  sl local\n   0: 0100007F:0050 00000000 0A 0\n", 2, "not a socket line"),
])
def test_malformed_tcp_tables(text: str, line: int, reason: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_syn_recv(text, "/proc/net/tcp", 4)
    assert caught.value.line == line and reason in caught.value.reason
    assert str(caught.value).startswith(f"/proc/net/tcp:{line}:")


@pytest.mark.parametrize("name", ["prometheus-procfs/netstat", "captured/host-netstat"])
def test_netstat_samples(name: str) -> None:
    counters = parse_counters(read(name), name)
    assert set(counters) >= {"TcpExt", "IpExt"}
    for key in ("ListenOverflows", "ListenDrops", "SyncookiesSent", "SyncookiesRecv", "SyncookiesFailed"):
        assert key in counters["TcpExt"]
    if name.startswith("prometheus"):
        assert counters["TcpExt"]["TW"] == 83 and counters["TcpExt"]["TCPWqueueTooBig"] == 0
        assert counters["IpExt"]["InOctets"] == 190585481


@pytest.mark.parametrize("name", ["prometheus-procfs/snmp", "captured/host-snmp"])
def test_snmp_samples(name: str) -> None:
    counters = parse_counters(read(name), name)
    assert "InEchos" in counters["Icmp"] and counters["Tcp"]["MaxConn"] == -1
    if name.startswith("prometheus"):
        assert counters["Icmp"]["InMsgs"] == 45 and counters["IcmpMsg"] == {"InType3": 45, "OutType3": 50}


@pytest.mark.parametrize(("text", "line", "reason"), [
    ("Tcp: A B\n", 1, "pairs of lines"),
    ("Tcp: A B\nUdp: 1 2\n", 2, "values for 'Udp' follow names for 'Tcp'"),
    ("Tcp: A B\nTcp: 1\n", 2, "2 names but 1 values"),
    ("Tcp: A B\nTcp: 1 x\n", 2, "must be integers"),
])
def test_malformed_counters(text: str, line: int, reason: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_counters(text, "/proc/net/snmp")
    assert caught.value.line == line and reason in caught.value.reason


def test_net_dev_samples() -> None:
    procfs = parse_net_dev(read("prometheus-procfs/dev"), "dev")
    assert list(procfs) == ["lo", "eth0"]
    assert (procfs["eth0"].rx_bytes, procfs["eth0"].rx_packets, procfs["eth0"].tx_packets) == (438, 5, 8)
    assert "lo" in parse_net_dev(read("captured/host-dev"), "dev")
    # an old kernel's line without a space after the colon
    old = "Inter-|   Receive\n face |bytes\n  eth0:" + "12345 67 0 0 0 0 0 0 100 8 0 0 0 0 0 0\n"
    assert parse_net_dev(old, "dev")["eth0"].rx_packets == 67


@pytest.mark.parametrize(("text", "line"), [
    ("eth0: 1 2 3\n", 1),
    ("Inter-|\n face |\n  eth0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n", 3),
    ("Inter-|\n face |\n  eth0: 1 2 3\n", 3),
])
def test_malformed_net_dev(text: str, line: int) -> None:
    with pytest.raises(ParseError) as caught:
        parse_net_dev(text, "/proc/net/dev")
    assert caught.value.line == line
