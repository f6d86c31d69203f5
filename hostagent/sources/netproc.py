"""Network counters and half-open TCP connections from /proc/net (per network namespace).

- ``/proc/net/tcp`` and ``tcp6``: one line per socket (``tcp4_seq_show`` and ``tcp6_seq_show`` in
  net/ipv4/tcp_ipv4.c and net/ipv6/tcp_ipv6.c).  Addresses are the kernel's words printed with
  ``%08X`` in host byte order, so on little-endian machines (x86, arm64) the bytes of each 32-bit word
  appear reversed; ports are in network order.  Request sockets, the half-open connections of a
  listener, are listed with state ``03`` (SYN_RECV), the address of the attacked service as local
  and the SYN's source as remote.
- ``/proc/net/netstat`` and ``/proc/net/snmp``: pairs of lines, ``Prefix: Name Name ...`` then
  ``Prefix: value value ...``.
- ``/proc/net/dev``: two header lines, then ``iface: 16 counters``.

The SYN_RECV scan is one regular expression over the whole text and counts source prefixes on the
hex text itself, so that 100 k sockets parse in tens of milliseconds; only the few distinct prefixes
and listeners are decoded.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from typing import Literal

from hostagent.errors import ParseError
from hostagent.host import Host
from hostagent.records import field, record

TCP_PATHS = {4: "/proc/net/tcp", 6: "/proc/net/tcp6"}
NETSTAT_PATH = "/proc/net/netstat"
SNMP_PATH = "/proc/net/snmp"
DEV_PATH = "/proc/net/dev"
ByteOrder = Literal["little", "big"]

# The patterns start at the ": " after the slot number: a literal the regex engine finds fast.
_ENTRY = re.compile(r": [0-9A-F]+:[0-9A-F]{4} [0-9A-F]+:[0-9A-F]{4} [0-9A-F]{2} ")
# the /24 of the source is the last 6 hex digits on little-endian machines, the first 6 on big-endian
_SYN_RECV4 = {
    "little": re.compile(r": ([0-9A-F]{8}:[0-9A-F]{4}) [0-9A-F]{2}([0-9A-F]{6}):[0-9A-F]{4} 03 "),
    "big": re.compile(r": ([0-9A-F]{8}:[0-9A-F]{4}) ([0-9A-F]{6})[0-9A-F]{2}:[0-9A-F]{4} 03 "),
}
_SYN_RECV6 = re.compile(r": ([0-9A-F]{32}:[0-9A-F]{4}) ([0-9A-F]{32}):[0-9A-F]{4} 03 ")
_V4_MAPPED = {"little": "0000000000000000FFFF0000", "big": "00000000000000000000FFFF"}
_V4_PREFIX_SLICE = {"little": slice(2, 8), "big": slice(0, 6)}


@record(frozen=True)
class Endpoint:
    address: str
    port: int

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


@record
class HalfOpen:
    """SYN_RECV sockets of one attacked local address and port, by source /24 (v4) or /48 (v6)."""

    local: Endpoint
    count: int = 0
    sources: Counter[str] = field(default_factory=Counter)

    def top_sources(self, limit: int) -> list[tuple[str, int]]:
        return self.sources.most_common(limit)


def _words(hexdigits: str, order: ByteOrder) -> bytes:
    raw = bytes.fromhex(hexdigits)
    if order == "big":
        return raw
    return b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))


def decode_address(hexdigits: str, order: ByteOrder = "little") -> str:
    """An address as /proc/net/tcp{,6} prints it ("0100007F") -> "127.0.0.1"."""
    raw = _words(hexdigits, order)
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _v4_prefix(hex6: str, order: ByteOrder) -> str:
    raw = bytes.fromhex(hex6)
    octets = raw[::-1] if order == "little" else raw
    return f"{octets[0]}.{octets[1]}.{octets[2]}.0/24"


def _v6_prefix(hex32: str, order: ByteOrder) -> str:
    if hex32.startswith(_V4_MAPPED[order]):
        return _v4_prefix(hex32[24:32][_V4_PREFIX_SLICE[order]], order)
    raw = _words(hex32[:16], order)[:6] + bytes(10)
    return f"{ipaddress.IPv6Address(raw)}/48"


def _check_entries(text: str, source: str) -> None:
    lines = text.count("\n") + (not text.endswith("\n") and bool(text))
    if not text.lstrip().startswith("sl"):
        raise ParseError(source, 1, "expected the header line starting with 'sl'")
    if len(_ENTRY.findall(text)) == lines - 1:
        return
    for number, line in enumerate(text.splitlines()[1:], start=2):
        if not re.match(r" *\d+" + _ENTRY.pattern, line):
            raise ParseError(source, number, f"not a socket line: {line[:80]!r}")


def parse_syn_recv(text: str, source: str, family: Literal[4, 6],
                   order: ByteOrder = "little") -> dict[Endpoint, HalfOpen]:
    """Half-open connections by attacked local endpoint, with their sources by prefix."""
    _check_entries(text, source)
    if family == 4:
        counted = Counter(_SYN_RECV4[order].findall(text))  # (local, source /24 digits): counted in C
        prefix: Callable[[str, ByteOrder], str] = _v4_prefix
    else:
        counted = Counter(_SYN_RECV6.findall(text))
        prefix = _v6_prefix
    found: dict[Endpoint, HalfOpen] = {}
    endpoints: dict[str, Endpoint] = {}
    for (local, remote), count in counted.items():
        endpoint = endpoints.get(local)
        if endpoint is None:
            address, port = local.split(":")
            endpoint = endpoints[local] = Endpoint(decode_address(address, order), int(port, 16))
        entry = found.setdefault(endpoint, HalfOpen(endpoint))
        entry.sources[prefix(remote, order)] += count
        entry.count += count
    return found


_COUNTER = re.compile(r"[0-9]{1,20}")  # an unsigned 64-bit counter, in ASCII digits


def _signed(text: str) -> int:
    """A counter that may be negative (netstat's MaxConn is -1); ValueError for anything else."""
    if not re.fullmatch(r"-?[0-9]{1,20}", text):
        raise ValueError(text[:40])
    return int(text)


def parse_counters(text: str, source: str) -> dict[str, dict[str, int]]:
    """/proc/net/netstat or /proc/net/snmp -> {"TcpExt": {"ListenDrops": 3, ...}, ...}."""
    groups: dict[str, dict[str, int]] = {}
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) % 2:
        raise ParseError(source, len(lines), "expected pairs of lines (names, then values)")
    for index in range(0, len(lines), 2):
        names_prefix, _, names = lines[index].partition(":")
        values_prefix, _, values = lines[index + 1].partition(":")
        if not names_prefix or names_prefix != values_prefix:
            raise ParseError(source, index + 2, f"values for {values_prefix!r} follow names for {names_prefix!r}")
        keys, numbers = names.split(), values.split()
        if len(keys) != len(numbers):
            raise ParseError(source, index + 2, f"{names_prefix}: {len(keys)} names but {len(numbers)} values")
        try:
            groups[names_prefix] = {key: _signed(number) for key, number in zip(keys, numbers, strict=True)}
        except ValueError:
            raise ParseError(source, index + 2, f"{names_prefix}: values must be integers") from None
    return groups


@record(frozen=True)
class InterfaceCounters:
    rx_bytes: int
    rx_packets: int
    rx_drop: int
    tx_bytes: int
    tx_packets: int


def parse_net_dev(text: str, source: str) -> dict[str, InterfaceCounters]:
    lines = text.splitlines()
    if len(lines) < 2 or "|" not in lines[1]:
        raise ParseError(source, 1, "expected the two header lines of /proc/net/dev")
    found: dict[str, InterfaceCounters] = {}
    for number, line in enumerate(lines[2:], start=3):
        if not line.strip():
            continue
        name, colon, rest = line.partition(":")
        fields = rest.split()
        if not colon or len(fields) < 16 or not all(_COUNTER.fullmatch(f) for f in fields):
            raise ParseError(source, number, f"expected 'iface: 16 counters', got {line.strip()[:80]!r}")
        values = [int(f) for f in fields]
        found[name.strip()] = InterfaceCounters(values[0], values[1], values[3], values[8], values[9])
    return found


# -- readers -----------------------------------------------------------------------------


def read_half_open(host: Host, order: ByteOrder = "little") -> dict[Endpoint, HalfOpen]:
    found: dict[Endpoint, HalfOpen] = {}
    for family, path in TCP_PATHS.items():
        text = host.read_optional(path)
        if text is not None:
            found.update(parse_syn_recv(text, path, 4 if family == 4 else 6, order))
    return found


def read_counters(host: Host, path: str) -> dict[str, dict[str, int]]:
    text = host.read_optional(path)
    return {} if text is None else parse_counters(text, path)


def read_net_dev(host: Host) -> dict[str, InterfaceCounters]:
    text = host.read_optional(DEV_PATH)
    return {} if text is None else parse_net_dev(text, DEV_PATH)


def read_sysctl(host: Host, name: str) -> int | None:
    """An integer sysctl ("net.ipv4.tcp_syncookies"), or None when the kernel has no such knob."""
    path = "/proc/sys/" + name.replace(".", "/")
    text = host.read_optional(path)
    if text is None:
        return None
    try:
        return _signed(text.split()[0])
    except (ValueError, IndexError):
        raise ParseError(path, 1, f"expected an integer, got {text.strip()[:40]!r}") from None
