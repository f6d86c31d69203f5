"""Boot the disk-replacement fixture's setup again and again, to catch rare VM hangs.

    .venv/bin/python -m tests.vm.soak --rounds 60 --busy [--event-idx]

Each round boots a VM with the five SCSI disks of ``test_replace.py``, builds md0/md1 over sda
and sdb, makes ext4 on both and installs GRUB on both disks: the steps where the guest once
hung for good.  ``--busy`` keeps both host cores busy meanwhile, which makes such races
likelier.  On a hang it prints the guest's blocked tasks and QEMU's view of the virtio-scsi
request queue, and exits 1.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time

from tests.vm.harness import VM
from tests.vm.test_replace import DISKS, MIRRORS


def spin() -> None:
    while True:
        pass


def virtqueues(vm: VM) -> str:
    """QEMU's indexes of the virtio-scsi request queue, beside the guest's in guest memory."""
    status = vm.qmp("x-query-virtio-queue-status", path="/machine/peripheral/scsi0/virtio-backend", queue=2)
    avail, used, size = status["vring-avail"], status["vring-used"], status["vring-num"]
    return (f"QEMU: last-avail {status['last-avail-idx']} used {status['used-idx']} "
            f"signalled {status['signalled-used']} in use {status['inuse']}\n"
            f"guest avail flags/idx: {vm.hmp(f'xp /2hx {avail}').strip()}; "
            f"used_event: {vm.hmp(f'xp /1hx {avail + 4 + 2 * size}').strip()}; "
            f"used flags/idx: {vm.hmp(f'xp /2hx {used}').strip()}")


def round_hangs(number: int, event_idx: bool) -> bool:
    vm = VM(disks=0, memory_mib=768, scsi_specs=DISKS, event_idx=event_idx)
    try:
        steps = [MIRRORS] + [f"grub-install --target=i386-pc /dev/{disk}" for disk in ("sda", "sdb")]
        for step in steps:
            started = time.monotonic()
            result = vm.run(step, timeout=120, check=False)
            if result.rc == 124:
                print(f"round {number}: hung in `{step}`\n{result.stderr}\n{virtqueues(vm)}", flush=True)
                return True
            if result.rc != 0:
                raise SystemExit(f"round {number}: `{step}` exited {result.rc}: {result.stderr}")
            print(f"round {number}: `{step[:40]}` {time.monotonic() - started:.1f} s", flush=True)
        return False
    finally:
        vm.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="how many VMs to boot, one after another")
    parser.add_argument("--busy", action="store_true", help="keep both host cores busy meanwhile")
    parser.add_argument("--event-idx", action="store_true",
                        help="let virtio use event index, as the harness did before it hung (docs/testing.md)")
    args = parser.parse_args()
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(2 if args.busy else 0)]
    for spinner in spinners:
        spinner.start()
    hangs = sum(round_hangs(number, args.event_idx) for number in range(args.rounds))
    print(f"{hangs} of {args.rounds} rounds hung")
    return 1 if hangs else 0


if __name__ == "__main__":
    sys.exit(main())
