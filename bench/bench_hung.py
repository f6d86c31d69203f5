"""From a member's fault to the finding, to the member failed, and to writes accepted again:
``hostagent watch`` at its default settings against the kernel alone, side by side.

Run: make bench-hung   (boots Debian's kernel under QEMU; about 45 minutes on 2 cores), or
     .venv/bin/python bench/bench_hung.py "dead SCSI" ...   for some of the faults

Faults, each on one member of a raid1 whose other member is a healthy virtio disk:
- dm suspend: the member is a dm device, suspended (its I/O queues, invisible to the counters);
- dead SCSI: the member is a scsi_debug disk (real sd, SCSI mid-layer and error handler) that
  answers no command (``opts=4 every_nth=1``);
- dead SCSI, write cache off: the same, with the disk's cache set to write through, so md
  sends it no cache flushes (which the sd driver gives twice the command timeout): the
  block layer's `queue/write_cache` = write through, as for a disk with no volatile cache;
- crawling: a dm-delay over a scsi_debug disk answers every I/O correctly after 20 s.
Right after the fault, one synced O_DIRECT 4 KiB write goes to the array.  A shell loop in
the guest stamps /proc/uptime every 0.2 s: when the daemon's log first says it is forcing
the member out (the finding), when /proc/mdstat first shows the member faulty or gone, and
when the write returned.  Then a second write is timed: how fast the array is once the
fault is dealt with.  Each pair runs REPEATS times; the medians go to docs/benchmarks.md.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.vm.conftest import MdHelper, md_session  # noqa: E402
from tests.vm.harness import VM  # noqa: E402
from tests.vm.test_hung_scsi import CRAWL_MS, SCSI_DEBUG, scsi_debug_disk, start_watch  # noqa: E402

REPEATS = 3
HUNG_AFTER = 20.0  # checks.hung.hung_after's default: the goals are relative to it
LIMITS = {"dm suspend": 90.0, "dead SCSI": 240.0, "crawling (dm-delay 20 s over SCSI)": 150.0,
          "dead SCSI, write cache off": 240.0}
STAMPER = r"""#!/bin/sh
# stamp /proc/uptime when the finding, the failed member and the write's return are first seen
m=$1
while :; do
  t=$(cut -d' ' -f1 /proc/uptime)
  [ -f /tmp/t_find ] || { grep -q "forcing it out" /tmp/watch.err 2>/dev/null && echo $t > /tmp/t_find; }
  if [ ! -f /tmp/t_fail ]; then
    line=$(grep "^md0 :" /proc/mdstat)
    case "$line" in *"$m["*"](F)"*) echo $t > /tmp/t_fail;; *"$m["*) ;; *) echo $t > /tmp/t_fail;; esac
  fi
  sleep 0.2
done
"""


def uptime(md: MdHelper) -> float:
    return float(md.vm.run("cut -d' ' -f1 /proc/uptime").stdout)


def stamp(md: MdHelper, name: str) -> float | None:
    result = md.vm.run(f"cut -d' ' -f1 /tmp/{name}", check=False)
    return float(result.stdout) if result.rc == 0 and result.stdout.strip() else None


def arrange(md: MdHelper, fault: str, sd: str | None) -> tuple[str, str]:
    """The array for this fault; returns the failing member's kernel name and the fault command."""
    if fault == "dm suspend":
        members = md.members(2)
        md.create("1", members)
        return md.kernel_name(members[1]), "dmsetup suspend --noflush m1"
    if fault.startswith("dead SCSI"):
        if fault.endswith("write cache off"):  # no cache flushes: md's first stuck command is a plain write
            md.vm.run(f"echo 'write through' > /sys/block/{sd}/queue/write_cache")
        md.vm.run("mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 --assume-clean "
                  f"--bitmap=internal /dev/vda /dev/{sd}")
        return str(sd), f"echo 4 > {SCSI_DEBUG}/opts; echo 1 > {SCSI_DEBUG}/every_nth"
    table = f"0 $(blockdev --getsz /dev/{sd}) delay /dev/{sd} 0"
    md.vm.run(f'dmsetup create crawl --table "{table} 0"')
    md.vm.run("mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 --assume-clean "
              "--bitmap=internal /dev/vda /dev/mapper/crawl")
    return md.kernel_name("/dev/mapper/crawl"), (f'dmsetup suspend crawl && dmsetup load crawl --table '
                                                 f'"{table} {CRAWL_MS}" && dmsetup resume crawl')


def measure(vm: VM, fault: str, agent: bool) -> dict[str, float | None]:
    with md_session(vm) as md, scsi_debug_disk(vm) as sd:
        member, command = arrange(md, fault, sd)
        if agent:
            start_watch(md)
            time.sleep(5)  # a few of the daemon's looks before the fault
        md.vm.run(f"cat > /tmp/stamper.sh <<'EOF'\n{STAMPER}EOF\nchmod +x /tmp/stamper.sh; rm -f /tmp/t_*")
        md.vm.run(f"/tmp/stamper.sh {member} >/dev/null 2>&1 & echo $! > /tmp/stamper.pid")
        start = uptime(md)
        md.vm.run(command)
        md.write_in_background("/tmp/t_write", offset_kib=1024)
        deadline = time.monotonic() + LIMITS[fault]
        while time.monotonic() < deadline and not md.done("/tmp/t_write"):
            time.sleep(0.5)
        found, failed, written = (stamp(md, n) for n in ("t_find", "t_fail", "t_write"))
        second = None
        if written is not None:
            begun = uptime(md)
            md.write_in_background("/tmp/t_second", offset_kib=2048)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not md.done("/tmp/t_second"):
                time.sleep(0.2)
            finished = stamp(md, "t_second")
            second = None if finished is None else finished - begun
        md.vm.run("kill $(cat /tmp/stamper.pid)", check=False)
    return {"finding": found and found - start, "failed": failed and failed - start,
            "writes": written and written - start, "second": second}


def median(values: list[float | None], limit: float) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return f"never within {limit:.0f} s"
    text = f"{statistics.median(known):.1f} s"
    return text if len(known) == len(values) else f"{text} ({len(values) - len(known)} of {len(values)} never)"


def runs(values: list[float | None]) -> str:
    return ", ".join("never" if v is None else f"{v:.1f}" for v in values)


def main(faults: list[str]) -> None:
    unknown = [f for f in faults if f not in LIMITS]
    if unknown:
        raise SystemExit(f"unknown fault {unknown[0]!r}; the faults are: {', '.join(map(repr, LIMITS))}")
    results: dict[tuple[str, str], list[dict[str, float | None]]] = {}
    with VM(disks=2) as vm:
        for fault in faults or list(LIMITS):
            for repeat in range(REPEATS):
                for who, agent in (("kernel alone", False), ("hostagent watch (defaults)", True)):
                    outcome = measure(vm, fault, agent)
                    results.setdefault((fault, who), []).append(outcome)
                    print(f"{fault} | {who} | run {repeat + 1}: {outcome}", flush=True)
    print(f"\nmedians of {REPEATS} runs; goal: failed within {HUNG_AFTER + 5:.0f} s, "
          f"writes accepted within {HUNG_AFTER + 15:.0f} s of the fault")
    print("| fault | who acts | fault to finding | to member failed | to writes accepted | next write "
          "| runs (writes) |")
    print("|---|---|---|---|---|---|---|")
    for (fault, who), outcomes in results.items():
        limit = LIMITS[fault]
        cells = [median([o[k] for o in outcomes], limit) for k in ("finding", "failed", "writes")]
        if who == "kernel alone":
            cells[0] = "n/a"
        second = median([o["second"] for o in outcomes], 60)
        print(f"| {fault} | {who} | {' | '.join(cells)} | {second} | {runs([o['writes'] for o in outcomes])} |")


if __name__ == "__main__":
    main(sys.argv[1:])
