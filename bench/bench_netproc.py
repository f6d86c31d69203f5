"""/proc/net/tcp with 100 k sockets: our SYN_RECV scan against psutil.net_connections() on the same file.

psutil reads ``<PROCFS_PATH>/net/tcp`` and ``tcp6``; both sides get one directory holding the same
generated tables (kernel line format, copied from the real lines of tests/fixtures/net/captured),
with no process directories, so psutil's pid lookup costs nothing.  Ours does the whole job (half-open
connections per listener, source prefixes); psutil only parses, so the ratio is conservative.

Run: make bench-net   (or .venv/bin/python bench/bench_netproc.py)
Prints a Markdown report; docs/benchmarks.md holds the figures of a recorded run.
"""

from __future__ import annotations

import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from hostagent.sources.netproc import parse_syn_recv  # noqa: E402

HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
          "inode                                                     \n")
FULL = ("{sl:4d}: {local}:{lport:04X} {remote}:{rport:04X} {state} 00000000:00000000 00:00000000 00000000"
        "     0        0 {inode} 1 0000000000000000 20 4 30 10 -1                     \n")
REQUEST = ("{sl:4d}: {local}:{lport:04X} {remote}:{rport:04X} 03 00000000:00000000 01:00000064 00000000"
           "     0        0 0 0 0000000000000000                                      \n")
SERVER = "0200000A"  # 10.0.0.2 as the kernel prints it on little-endian machines


def address(rng: random.Random) -> str:
    return f"{rng.getrandbits(32):08X}"


def table(sockets: int, syn_recv_share: float, seed: int = 1) -> str:
    """A listener on :80 and :443, ``syn_recv_share`` of the sockets half-open (a flood from 2 000
    source /24s), the rest ESTABLISHED and TIME_WAIT clients."""
    rng = random.Random(seed)
    prefixes = [rng.getrandbits(24) for _ in range(2000)]
    lines = [HEADER]
    for port in (80, 443):
        lines.append(FULL.format(sl=len(lines) - 1, local="00000000", lport=port, remote="00000000", rport=0,
                                 state="0A", inode=rng.randint(10_000, 900_000)))
    while len(lines) - 1 < sockets:
        port = rng.choice((80, 443))
        if rng.random() < syn_recv_share:
            source = f"{rng.getrandbits(8):02X}{rng.choice(prefixes):06X}"
            lines.append(REQUEST.format(sl=len(lines) - 1, local=SERVER, lport=port, remote=source,
                                        rport=rng.randint(1024, 65535)))
        else:
            lines.append(FULL.format(sl=len(lines) - 1, local=SERVER, lport=port, remote=address(rng),
                                     rport=rng.randint(1024, 65535), state=rng.choice(("01", "01", "06")),
                                     inode=rng.randint(10_000, 900_000)))
    return "".join(lines)


def best_ms(func: Callable[[], object], repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    rows = []
    for label, share in (("SYN flood: 80 % half-open", 0.8), ("busy server: 1 % half-open", 0.01)):
        with tempfile.TemporaryDirectory() as procfs:
            (Path(procfs) / "net").mkdir()
            tcp = Path(procfs) / "net/tcp"
            tcp.write_text(table(100_000, share))
            (Path(procfs) / "net/tcp6").write_text(HEADER)
            psutil.PROCFS_PATH = procfs

            def ours(path: Path = tcp) -> int:
                return sum(e.count for e in parse_syn_recv(path.read_text(), str(path), 4).values())

            def theirs() -> int:
                return sum(c.status == psutil.CONN_SYN_RECV for c in psutil.net_connections("tcp"))

            assert ours() == theirs() > 0, (ours(), theirs())
            half_open = ours()
            ours_ms, theirs_ms = [], []
            for _ in range(3):  # alternate, so both see the same machine state
                ours_ms.append(best_ms(ours))
                theirs_ms.append(best_ms(theirs, repeat=3))
            rows.append((label, half_open, statistics.median(ours_ms), statistics.median(theirs_ms)))
    print(f"## /proc/net/tcp, 100 000 sockets ({platform.python_implementation()} {platform.python_version()}, "
          f"psutil {psutil.__version__}, {platform.machine()})\n")
    print("| table | half-open | hostagent (ms) | psutil.net_connections (ms) | ratio |")
    print("|---|---|---|---|---|")
    for label, half_open, ours_ms_, theirs_ms_ in rows:
        print(f"| {label} | {half_open} | {ours_ms_:.1f} | {theirs_ms_:.1f} | {theirs_ms_ / ours_ms_:.1f}x |")


if __name__ == "__main__":
    main()
