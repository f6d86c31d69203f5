"""Guest downtime on a real Xen host: hostagent's xl path against Debian's xendomains (XENDOMAINS_SAVE).

Boots the test suite's Xen dom0 (Debian's Xen 4.17 under QEMU, TCG; tests/debian_vm.py), copies
this repository's ``hostagent`` and ``checks`` packages and bench/xen_rounds.py into it, starts
PV guests (Debian's kernel and the test guests' busybox initramfs), and runs alternating rounds
there: xendomains ``stop`` (one ``xl save`` after another) then ``start`` (one ``xl restore``
after another), against hostagent's ``run_now`` (parallel ``xl save``) then ``resume_after_boot``.
A guest's downtime runs from the last ``xl list`` that showed it running to the first that shows
it running again.  The save throughput is set against the save directory's ``dd oflag=direct``
bandwidth.

    .venv/bin/python bench/bench_xen.py [--rounds 3] [--guests 4] [--memory 128] [--concurrency 4]  (make bench-xen)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import guests  # noqa: E402
from tests.debian_vm import debian_vm, kernel  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--guests", type=int, default=4)
    parser.add_argument("--memory", type=int, default=128, help="MiB per guest")
    parser.add_argument("--concurrency", type=int, default=4, help="hostagent's maintenance.concurrency")
    args = parser.parse_args()
    vmlinuz, initramfs = Path(kernel()[0]), guests.initramfs()
    with tempfile.TemporaryDirectory() as scratch, debian_vm(Path(scratch), memory_mib=2048, xen=True) as vm:
        ssh = ["-i", str(vm.key), "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={vm.known_hosts}"]
        vm.ssh("mkdir -p /root/bench/bench /root/bench/tests")
        subprocess.run(["scp", "-q", "-r", *ssh, "-P", str(vm.port), str(REPO / "hostagent"), str(REPO / "checks"),
                        "root@127.0.0.1:/root/bench/"], check=True, timeout=300)
        subprocess.run(["scp", "-q", *ssh, "-P", str(vm.port), str(REPO / "bench/xen_rounds.py"),
                        str(REPO / "bench/dd_bandwidth.py"), "root@127.0.0.1:/root/bench/bench/"],
                       check=True, timeout=60)
        subprocess.run(["scp", "-q", *ssh, "-P", str(vm.port), str(REPO / "tests/guests.py"),
                        str(REPO / "tests/__init__.py"), "root@127.0.0.1:/root/bench/tests/"], check=True, timeout=60)
        subprocess.run(["scp", "-q", *ssh, "-P", str(vm.port), str(vmlinuz), str(initramfs),
                        "root@127.0.0.1:/root/"], check=True, timeout=120)
        done = vm.ssh(f"python3 /root/bench/bench/xen_rounds.py --kernel /root/{vmlinuz.name} "
                      f"--ramdisk /root/{initramfs.name} --rounds {args.rounds} --guests {args.guests} "
                      f"--memory {args.memory} --concurrency {args.concurrency}", timeout=3600)
        sys.stdout.write(done.stdout)
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-4000:])
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
