"""A real Xen host for issue #20: Debian's Xen 4.17 under QEMU (TCG) with Debian 12 as dom0.

The first step of that issue: the dom0 image and its boot (``tests/debian_vm.py``, ``xen=True``),
and a PV DomU of the test guests' kind (Debian's kernel and the busybox initramfs that prints its
uptime) that ``xl save`` and ``xl restore`` pause and resume without a reboot.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import guests
from tests.debian_vm import DebianVM, debian_vm, kernel

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "xen"


@pytest.fixture(scope="module")
def dom0(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebianVM]:
    with debian_vm(tmp_path_factory.mktemp("xen"), memory_mib=2048, xen=True) as machine:
        yield machine


def copy_in(vm: DebianVM, *paths: Path) -> None:
    subprocess.run(["scp", "-q", "-i", str(vm.key), "-P", str(vm.port), "-o", "BatchMode=yes", "-o",
                    f"UserKnownHostsFile={vm.known_hosts}", *map(str, paths), "root@127.0.0.1:/root/"],
                   check=True, timeout=120)


def console(vm: DebianVM, name: str, local: Path) -> Path:
    """The guest's console as xenconsoled logged it, copied here for tests/guests.py's readers."""
    local.write_text(vm.ssh(f"cat /var/log/xen/console/guest-{name}.log").stdout)
    return local


def ssh_ok(vm: DebianVM, command: str, timeout: float = 180) -> str:
    done = vm.ssh(command, timeout=timeout)
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


def test_dom0_runs_under_xen_and_a_pv_guest_is_saved_and_restored_without_a_reboot(dom0: DebianVM,
                                                                                   tmp_path: Path) -> None:
    assert ssh_ok(dom0, "cat /sys/hypervisor/type").strip() == "xen"
    vmlinuz = Path(kernel()[0])
    copy_in(dom0, vmlinuz, guests.initramfs())
    config = (f'name = "pv1"\ntype = "pv"\nkernel = "/root/{vmlinuz.name}"\n'
              f'ramdisk = "/root/{guests.initramfs().name}"\nextra = "console=hvc0 quiet"\nmemory = 96\n')
    ssh_ok(dom0, f"cat > /root/pv1.cfg <<'EOF'\n{config}EOF\nxl create /root/pv1.cfg")
    ssh_ok(dom0, "for i in $(seq 120); do grep -q '^uptime ' /var/log/xen/console/guest-pv1.log 2>/dev/null "
                 "&& exit 0; sleep 1; done; exit 1")
    listing = json.loads(ssh_ok(dom0, "xl list -l"))
    assert {d["domid"]: d["config"]["c_info"]["name"] for d in listing} == {0: "Domain-0", 1: "pv1"}
    sample = json.loads((FIXTURES / "xl-list-l.json").read_text())  # captured here: the same shape
    assert [sorted(d["config"]) for d in listing] == [sorted(d["config"]) for d in sample]
    saved = ssh_ok(dom0, "xl save pv1 /root/pv1.save 2>&1")
    assert "Frames: 24576/24576  100%" in saved  # xl's own progress, for the backend's progress display
    assert "pv1" not in ssh_ok(dom0, "xl list")
    ssh_ok(dom0, "xl restore /root/pv1.save")
    before = len(guests.uptimes(console(dom0, "pv1", tmp_path / "pv1.log")))
    ssh_ok(dom0, f"for i in $(seq 60); do [ $(grep -c '^uptime ' /var/log/xen/console/guest-pv1.log) -ge "
                 f"{before + 3} ] && exit 0; sleep 1; done; exit 1")
    log = console(dom0, "pv1", tmp_path / "pv1.log")
    times = guests.uptimes(log)
    assert guests.boots(log) == 1 and times == sorted(times) and len(times) >= before + 3, log.read_text()[-2000:]
