"""The role's libvirt hook under a real libvirtd: a guest start is refused while this boot's maintenance
saves the guests or reboots the host, and goes on otherwise (issue #34, I1).

libvirtd reads its hooks when it starts, from /etc/libvirt/hooks, and keeps its state under /run,
/var/lib and /var/cache: so this libvirtd runs in mount and network namespaces of its own, where those
paths (and /var/lib/hostagent, where the hook looks for the journals) are directories of this test,
and the host's libvirt is never touched.  Its socket is reached through the test's directory.  The
guest is a transient QEMU (TCG) domain with no disk: what matters is whether it starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostagent.maintenance.journal import JournalStore
from tests.unit.test_gate import hook_script, journal

pytestmark = pytest.mark.skipif(not (shutil.which("libvirtd") and shutil.which("virsh") and os.geteuid() == 0),
                                reason="needs libvirtd, virsh and root (make deps installs them)")

IN_NAMESPACE = """
import os, subprocess, sys
base = sys.argv[1]
for source, target in (("var-lib", "/var/lib"), ("run", "/run/libvirt"), ("cache", "/var/cache/libvirt"),
                       ("log", "/var/log/libvirt"), ("etc", "/etc/libvirt")):
    os.makedirs(target, exist_ok=True)
    subprocess.run(["mount", "--bind", os.path.join(base, source), target], check=True)
os.execv("/usr/sbin/libvirtd", ["libvirtd", "--pid-file", "/run/libvirt/libvirtd.pid"])
"""

GUEST = """<domain type='qemu'><name>web1</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>
"""


@contextlib.contextmanager
def libvirtd(base: Path) -> Iterator[str]:
    """A libvirtd in namespaces of its own over ``base``; yields its URI."""
    for name in ("var-lib/libvirt", "var-lib/hostagent", "run", "cache", "log", "etc/hooks/qemu.d"):
        (base / name).mkdir(parents=True, exist_ok=True)
    # no virtlogd, no AppArmor, no cgroups, QEMU as root: nothing outside these directories
    (base / "etc/qemu.conf").write_text('stdio_handler = "file"\nsecurity_driver = "none"\ncgroup_controllers = []\n'
                                        'user = "root"\ngroup = "root"\ndynamic_ownership = 0\n')
    log = (base / "libvirtd.log").open("w")
    process = subprocess.Popen(["unshare", "--mount", "--net", "--propagation", "private", sys.executable, "-I",
                                "-c", IN_NAMESPACE, str(base)], stdout=log, stderr=subprocess.STDOUT)
    socket = base / "run/libvirt-sock"
    try:
        deadline = time.monotonic() + 180  # a bound on a hang, not a timing: libvirtd starts in about a second
        while not socket.is_socket():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("libvirtd made no socket (exited or hung):\n"
                                     + (base / "libvirtd.log").read_text()[-2000:])
            time.sleep(0.2)
        yield f"qemu+unix:///system?socket={socket}"
    finally:
        for pidfile in (base / "run/qemu").glob("*.pid"):  # a guest outlives a libvirtd that is killed
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()


def test_a_start_is_refused_while_this_boots_maintenance_saves_or_reboots(tmp_path: Path) -> None:
    base = tmp_path / "ns"
    (base / "etc/hooks/qemu.d").mkdir(parents=True)
    # before libvirtd starts: it looks for its hooks once
    shutil.copy(hook_script(tmp_path, "/var/lib/hostagent"), base / "etc/hooks/qemu.d/hostagent")
    guest = tmp_path / "web1.xml"
    guest.write_text(GUEST)
    store = JournalStore(base / "var-lib/hostagent/maintenance")
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    with libvirtd(base) as uri:
        def virsh(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=120)

        def started() -> bool:
            created = virsh("create", str(guest))
            running = "web1" in virsh("list", "--name").stdout.split()
            assert running == (created.returncode == 0), (created, virsh("list", "--all").stdout)
            if running:
                assert virsh("destroy", "web1").returncode == 0
                return True
            assert "Hook script execution failed" in created.stderr, created.stderr
            return False

        assert started()  # no maintenance: the hook lets it through
        planned = store.create(journal("planned", at=time.time()))
        assert started()
        store.update(planned.id, lambda j: j.advance("preflight").advance("saving"))
        with store.worker(planned.id):  # as the worker holds it while it saves and reboots
            refused = virsh("create", str(guest))
            assert refused.returncode != 0 and "web1" not in virsh("list", "--name").stdout.split()
            assert f"hostagent: maintenance {planned.id} is saving this host (kernel update" in refused.stderr
            assert "web1 refused" in refused.stderr, refused.stderr
            store.update(planned.id, lambda j: j.advance("rebooting", boot_id=boot_id))
            assert not started()
        assert started()  # no worker runs it any more: nothing refuses (the daemon restores)
        assert virsh("list", "--name").returncode == 0
        store.update(planned.id, lambda j: j.advance("restoring"))
        assert started()  # the maintenance's own restores, and everyone's starts, go on
    audit = (base / "var-lib/hostagent/audit.jsonl").read_text()
    assert audit.count('"event": "start_refused"') == 2 and '"guest": "web1"' in audit
