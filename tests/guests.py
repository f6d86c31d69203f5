"""Real QEMU guests for maintenance tests and the benchmark: Debian's kernel and a busybox initramfs
whose /init prints its uptime to the serial console every second (the console goes to a file).

A guest that was saved and restored keeps counting; a guest that rebooted prints ``guest-init
started`` again and its uptime starts from zero.  Guests are defined and started by a child
process (``python -m tests.guests``), because an embedded driver (``qemu:///embed``) may be held by
one process at a time and the agent's workers must open it after; the QEMU processes outlive it.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "guests"
MARK = "guest-init started"
INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
echo "{MARK}"
if /bin/busybox grep -q org.qemu.guest_agent /proc/cmdline; then (
  for module in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_console; do
    /bin/busybox insmod /modules/$module.ko
  done
  for try in $(/bin/busybox seq 100); do
    for port in /dev/vport*p1; do [ -e "$port" ] && exec /usr/sbin/qemu-ga -m virtio-serial -p "$port" -t /tmp; done
    /bin/busybox sleep 0.2
  done
  echo "guest agent: no virtio port"
) & fi
while true; do
  echo "uptime $(/bin/busybox cut -d' ' -f1 /proc/uptime)"; echo "clock $(/bin/busybox date +%s)"
  /bin/busybox sleep 1
done
"""
# QEMU's guest agent in the initramfs (Debian's qemu-guest-agent, from the Makefile) with the virtio
# modules it needs; it runs only in guests whose kernel command line names it (``agent=True``), so
# hostagent can set their clocks after a restore (``guest-set-time``: ``hwclock -s``).
AGENT_MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
                 "virtio_console")
OWNER_NS = "https://hostagent.invalid/xmlns/owner/1"


def kernel() -> str:
    found = sorted(glob.glob("/boot/vmlinuz-*"))
    if not found:
        raise RuntimeError("no /boot/vmlinuz-*: install linux-image-amd64 (make test does)")
    return found[-1]


def initramfs(agent: bool = True) -> Path:
    """The cached guest initramfs: busybox and the /init above, with QEMU's guest agent and its modules
    (about 3.7 MB) or, ``agent=False``, without (about 1 MB; Xen's PV guests: at 96 MiB, a fresh boot
    unpacking the larger one ran out of memory once, on a loaded machine)."""
    version = Path(kernel()).name.removeprefix("vmlinuz-")
    # named by what goes in: an image built from an older /init or for another kernel is never reused
    key = hashlib.sha256(f"{INIT}\0{version}\0{Path(shutil.which('busybox') or '/bin/busybox').stat().st_size}"
                         .encode()).hexdigest()[:12]
    image = CACHE / (f"uptime-agent-initramfs-{key}.gz" if agent else f"uptime-initramfs-{key}.gz")
    if image.exists():
        return image
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        stage = Path(tmp)
        (stage / "bin").mkdir()
        (stage / "proc").mkdir()
        busybox = shutil.which("busybox") or "/bin/busybox"
        shutil.copy2(busybox, stage / "bin/busybox")
        for directory in ("dev", "tmp", "sbin", "modules", "usr/sbin"):
            (stage / directory).mkdir(parents=True, exist_ok=True)
        (stage / "sbin/hwclock").symlink_to("/bin/busybox")
        for module in AGENT_MODULES if agent else ():
            found = glob.glob(f"/lib/modules/{version}/kernel/drivers/**/{module}.ko", recursive=True)
            if not found:
                raise RuntimeError(f"no {module}.ko for {version}: the guest agent needs it")
            shutil.copy2(found[0], stage / "modules" / f"{module}.ko")
        if agent:
            _copy_with_libraries("/usr/sbin/qemu-ga", stage)
        (stage / "init").write_text(INIT)
        (stage / "init").chmod(0o755)
        listing = "\n".join(str(p.relative_to(stage)) for p in sorted(stage.rglob("*"))) + "\n"
        packed = subprocess.run(["cpio", "-o", "-H", "newc"], input=listing.encode(), cwd=stage,
                                capture_output=True, check=True).stdout
        partial = stage / "initramfs.gz"  # unique to this build: make test runs two pytest processes
        partial.write_bytes(gzip.compress(packed))
        os.replace(partial, image)
    return image


def _copy_with_libraries(program: str, stage: Path) -> None:
    """A dynamically linked program and every library ``ldd`` names, at the same paths."""
    if not Path(program).exists():
        raise RuntimeError(f"no {program}: install qemu-guest-agent (make test does)")
    listing = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    paths = [program] + [word for line in listing.splitlines() for word in line.split() if word.startswith("/")]
    for path in paths:
        target = stage / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(path), target)


def domain_xml(name: str, memory_mib: int, console: Path, initrd: Path, owner: str | None = None,
               agent: bool = False) -> str:
    metadata = (f"<metadata><hostagent:owner xmlns:hostagent='{OWNER_NS}'>{owner}</hostagent:owner></metadata>"
                if owner else "")
    channel = ("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
               if agent else "")
    return f"""<domain type='qemu'><name>{name}</name>{metadata}
  <memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel()}</kernel><initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1{' org.qemu.guest_agent' if agent else ''}</cmdline></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='file'><source path='{console}' append='on'/></serial><memballoon model='none'/>{channel}</devices>
</domain>"""


def prepare_root(root: Path) -> None:
    """An embed root the libvirt-qemu user can traverse, with the guest initramfs and a consoles directory;
    the QEMU driver writes consoles to files (no virtlogd) and has a save directory."""
    root.chmod(0o755)
    (root / "consoles").mkdir(exist_ok=True)
    shutil.copy2(initramfs(), root / "initrd.gz")
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/qemu.conf").write_text('stdio_handler = "file"\n')
    (root / "lib/qemu/save").mkdir(parents=True, exist_ok=True)


def start(root: Path, guests: Sequence[tuple[str, int, str | None]], timeout: float = 120,
          agents: Sequence[str] = ()) -> Path:
    """Define and start guests (name, MiB, owner) in a child process, those named in ``agents`` with
    QEMU's guest agent; wait until each prints its uptime.  Returns the directory of their console
    logs (``<name>.log``)."""
    consoles = root / "consoles"
    spec = ",".join(f"{name}:{mib}:{owner or ''}:{int(name in agents)}" for name, mib, owner in guests)
    subprocess.run([sys.executable, "-m", "tests.guests", str(root), spec], cwd=REPO, check=True, timeout=timeout)
    deadline = time.monotonic() + timeout
    for name, _, _ in guests:
        while not uptimes(consoles / f"{name}.log"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"guest {name} printed no uptime within {timeout:g} s")
            time.sleep(0.5)
    return consoles


def uri(root: Path) -> str:
    return f"qemu:///embed?root={root}"


def whole_lines(console: Path) -> list[str]:
    """The console's lines that have ended: the serial console reaches its file a few bytes at a time, so
    a last line without its newline may be half written ("uptime 12" of "uptime 123.45")."""
    text = console.read_text(errors="replace")
    lines = text.split("\n")
    return [line.rstrip("\r") for line in lines[:-1]]  # the part after the last newline is still being written


def clocks(console: Path) -> list[int]:
    """The guest's wall clock (``date +%s``), printed beside each uptime."""
    if not console.exists():
        return []
    return [int(line.split()[1]) for line in whole_lines(console)
            if line.startswith("clock ") and len(line.split()) == 2 and line.split()[1].isdigit()]


def uptimes(console: Path) -> list[float]:
    if not console.exists():
        return []
    return [float(line.split()[1]) for line in whole_lines(console)
            if line.startswith("uptime ") and len(line.split()) == 2]


def boots(console: Path) -> int:
    return console.read_text(errors="replace").count(MARK) if console.exists() else 0


def embedded(code: str, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child process that may open the embedded driver (one process may hold an embed
    root at a time), its output captured.  The child ends with ``os._exit``: a fresh embedded driver
    reconnects to the running QEMUs in background threads, and libvirt 9.0's teardown at a normal exit
    races them (a child that had done its work died with SIGSEGV once, in a fresh-clone run)."""
    epilogue = "\nimport os as _os, sys as _sys\n_sys.stdout.flush()\n_sys.stderr.flush()\n_os._exit(0)\n"
    done = subprocess.run([sys.executable, "-c", code + epilogue, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"a child on the embedded driver exited {done.returncode}:\n{done.stdout[-2000:]}"
                             f"{done.stderr[-3000:]}")
    return done


def destroy_all(root: Path) -> None:
    """Stop every guest of an embed root (the tests' cleanup), in a child process."""
    code = ("import sys, libvirt\nfrom hostagent.hypervisor.libvirt_backend import LibvirtHypervisor\n"
            "h = LibvirtHypervisor(sys.argv[1])\n"
            "for d in h._conn.listAllDomains():\n"
            "    try:\n"
            "        d.destroy()\n"
            "    except libvirt.libvirtError:\n"
            "        pass\n")
    embedded(code, uri(root), timeout=60, check=False)
    subprocess.run(["pkill", "-KILL", "-f", f"{root}/"], check=False)  # whatever libvirt could not stop


def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("spec")
    args = parser.parse_args()
    from hostagent.hypervisor.libvirt_backend import LibvirtHypervisor

    hypervisor = LibvirtHypervisor(uri(args.root))
    for item in args.spec.split(","):
        name, mib, owner, agent = item.split(":")
        console = args.root / "consoles" / f"{name}.log"
        domain = hypervisor._conn.defineXML(domain_xml(name, int(mib), console, args.root / "initrd.gz", owner or None,
                                                       agent == "1"))
        domain.create()
    os._exit(0)


if __name__ == "__main__":
    _main()
