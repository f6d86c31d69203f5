"""SMART check cost per disk over a 24-disk snapshot, against one real smartctl process.

Run: make bench   (or .venv/bin/python bench/bench_smart.py)
The anchor is the floor any SMART monitor pays per disk: one `smartctl --json=c -x` process
on this machine's disk, timed in the same run.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from checks import smart  # noqa: E402
from hostagent.context import CheckContext  # noqa: E402
from hostagent.host import Host  # noqa: E402
from hostagent.sources.smartctl import parse_smartctl  # noqa: E402
from tests.snapshots import HostSnapshot  # noqa: E402

SAMPLES = sorted(p for p in (REPO / "tests/fixtures/smartctl-json").rglob("*.json")
                 if "scan" not in p.name and "fail.json" not in p.name and "farm" not in p.name)
DISKS = 24


def build(root: Path) -> None:
    snap = HostSnapshot(root)
    names = []
    for i in range(DISKS):
        name = f"sd{chr(97 + i)}"
        snap.disk(name, serial=f"BENCH{i:02d}", partitions=(f"{name}1",), timeout=None)
        snap.smart(name, SAMPLES[i % len(SAMPLES)])
        names.append(name)
    arrays = []
    for n in range(DISKS // 2):
        a, b = names[2 * n], names[2 * n + 1]
        arrays.append(f"md{n} : active raid1 {a}1[0] {b}1[1]\n      976630336 blocks super 1.2 [2/2] [UU]\n")
    snap.mdstat("Personalities : [raid1]\n" + "\n".join(arrays) + "\nunused devices: <none>\n")
    snap.scan([(f"/dev/{n}", "sat") for n in names])


def median_ms(func, rounds: int = 15) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        func()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "snap"
        build(root)
        host = Host(root)

        def whole_check() -> None:
            ctx = CheckContext.for_host(host)
            smart.run(ctx, smart.Config())

        check_ms = median_ms(whole_check)
        texts = [(root / "_commands/smartctl" / f"sd{chr(97 + i)}.json").read_text() for i in range(DISKS)]

        def parse_and_evaluate() -> None:
            for text in texts:
                smart.evaluate("d", parse_smartctl(text), None, [], smart.Config())

        pure_ms = median_ms(parse_and_evaluate)
    smartctl_ms = median_ms(lambda: subprocess.run(["smartctl", "--json=c", "-x", "/dev/vda"],
                                                   capture_output=True, check=False), rounds=25)
    per_disk = check_ms / DISKS
    print(f"# SMART benchmark: {DISKS} disks, {len(SAMPLES)} real smartctl samples in rotation\n")
    print("| measurement | per disk | ratio to one smartctl process |")
    print("|---|---|---|")
    print(f"| whole smart check over the snapshot (inventory, replayed outputs, RAID context, baselines) "
          f"| {per_disk:.3f} ms | {per_disk / smartctl_ms:.1%} |")
    print(f"| parse + evaluate only | {pure_ms / DISKS:.3f} ms | {pure_ms / DISKS / smartctl_ms:.1%} |")
    print(f"| one real `smartctl --json=c -x /dev/vda` process (anchor) | {smartctl_ms:.2f} ms | 100% |\n")
    print("Goal: our own cost per disk under 10 % of one smartctl process.")


if __name__ == "__main__":
    main()
