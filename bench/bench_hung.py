"""Time from a member hanging to the array accepting writes again: hostagent against md alone.

Run: make bench-hung   (boots Debian's kernel under QEMU; about 10 minutes on 2 cores)
For each kind of hang, one synced direct write to md0 is issued right after the hang starts;
the time is from the hang to that write returning, read from the guest's /proc/uptime.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.vm.conftest import MdHelper, md_session  # noqa: E402
from tests.vm.harness import VM  # noqa: E402

WAIT = 60.0  # how long md alone (or the agent) is given


def uptime(md: MdHelper) -> float:
    return float(md.vm.run("cut -d' ' -f1 /proc/uptime").stdout)


def measure(md: MdHelper, hang: str, agent_after: int | None) -> str:
    if hang == "dm suspend":
        members = md.members(2)
        md.create("1", members)
    else:
        disks = "/dev/vda /dev/vdb" if hang == "virtio-blk blkdebug" else "/dev/sda /dev/sdb"
        md.vm.run("mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 --assume-clean "
                  f"--bitmap=internal {disks}")
    if agent_after is not None:
        md.start_agent(hung_after=agent_after)
        time.sleep(5)  # let the loop take its first look
    if hang == "dm suspend":
        md.hang(1)
    else:
        md.vm.break_writes(1 if hang == "virtio-blk blkdebug" else "scsi1")
    start = uptime(md)
    md.write_in_background("/tmp/w1")
    deadline = time.monotonic() + WAIT + (agent_after or 0)
    while time.monotonic() < deadline:
        if md.done("/tmp/w1"):
            finished = float(md.vm.run("cut -d' ' -f1 /tmp/w1").stdout)
            return f"{finished - start:.1f} s"
        time.sleep(0.5)
    return f"never within {WAIT + (agent_after or 0):.0f} s"


def main() -> None:
    rows = []
    with VM(disks=4) as vm:
        for hang in ("dm suspend", "virtio-blk blkdebug"):
            for who, after in (("md alone", None), ("hostagent, hung_after = 10 s", 10),
                               ("hostagent, hung_after = 30 s (default)", 30)):
                if hang != "dm suspend" and after == 30:
                    continue
                with md_session(vm) as md:
                    rows.append((hang, who, measure(md, hang, after)))
                print(rows[-1], flush=True)
    with VM(disks=0, scsi_disks=2) as vm:
        for who, after in (("md alone", None), ("hostagent, hung_after = 10 s", 10)):
            with md_session(vm) as md:
                rows.append(("virtio-scsi blkdebug", who, measure(md, "virtio-scsi blkdebug", after)))
            print(rows[-1], flush=True)
    print("\n| hang | who acts | hang to writes accepted again |")
    print("|---|---|---|")
    for hang, who, result in rows:
        print(f"| {hang} | {who} | {result} |")


if __name__ == "__main__":
    main()
