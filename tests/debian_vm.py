"""A real Debian 12 target for the Ansible tests: a debootstrap rootfs with systemd and sshd,
booted with Debian's kernel under QEMU (TCG), its sshd forwarded to a loopback port.

The rootfs is built once and cached in ``.cache/debian12`` (about 3 minutes; ``make clean``
removes it); each VM boots a sparse copy of it.  It already holds the packages the roles install
(the VM has no network beyond the forwarded port: ``restrict=on``), and a root key for the test.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "debian12"
PACKAGES = ["systemd", "systemd-sysv", "udev", "dbus", "openssh-server", "python3", "python3-venv", "python3-apt",
            "python3-libvirt", "python3-packaging", "smartmontools", "mdadm", "iproute2", "kmod", "procps"]
# A Xen dom0 (issue #20): Debian's hypervisor, its toolstack with xencommons, and libvirt's libxl driver.
XEN_CACHE = REPO / ".cache" / "xen12"
# msmtp-mta: a sendmail for mdadm's own mail (the mdmonitor test shows that only hostagent's arrives).
XEN_PACKAGES = [*PACKAGES, "xen-hypervisor-4.17-amd64", "xen-utils-4.17", "libvirt-daemon-driver-xen",
                "libvirt-daemon-system", "libvirt-clients", "libpam-systemd",  # polkitd needs a logind
                "msmtp-mta"]
NET_MODULES = ["virtio_net"]
# dom0's Xen drivers: xencommons mounts xenfs on /proc/xen; the backends serve the DomUs' disks and networks
XEN_MODULES = ["xenfs", "xen-privcmd", "xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-netback", "xen-blkback",
               "bridge", "raid1"]  # and an md mirror on the extra disks
IMAGE_MIB = 2048
# the dom0's Python keeps the bytecode of Ansible's module payloads (tests/vm/ansiballz_pyc.py)
ANSIBALLZ_PYC = Path(__file__).resolve().parent / "vm" / "ansiballz_pyc.py"
SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"
NETWORK = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n"


def kernel() -> tuple[str, str]:
    found = sorted(glob.glob("/boot/vmlinuz-*"))
    if not found:
        raise RuntimeError("no /boot/vmlinuz-*: install linux-image-amd64 (make test does)")
    version = found[-1].removeprefix("/boot/vmlinuz-")
    return found[-1], f"/boot/initrd.img-{version}"


def _run(*argv: str, **kwargs: object) -> None:
    subprocess.run(argv, check=True, capture_output=True, **kwargs)  # type: ignore[call-overload]


def _modules(stage: Path, version: str, modules: list[str]) -> None:
    """These drivers and what they depend on, from Debian's kernel; then depmod."""
    from tests.vm.harness import module_order

    wanted = module_order(version, modules)
    for path in wanted:
        target = stage / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        source = Path(f"/lib/modules/{version}/{name}")
        if source.exists():
            shutil.copy2(source, stage / f"lib/modules/{version}/{name}")
    _run("depmod", "-b", str(stage), version)


def image(xen: bool = False) -> tuple[Path, Path, str]:
    """The cached rootfs image, the root key for it, and its ed25519 host key line (``xen``: a dom0's)."""
    cache, packages = (XEN_CACHE, XEN_PACKAGES) if xen else (CACHE, PACKAGES)
    rootfs, key, host_key = cache / "rootfs.img", cache / "root_key", cache / "host_key.pub"
    recipe = json.dumps([packages, NET_MODULES + (XEN_MODULES if xen else []),
                         ANSIBALLZ_PYC.read_text() if xen else ""])
    stamp = cache / "recipe.json"  # a changed package or module list builds the image again
    if rootfs.exists() and key.exists() and host_key.exists() and stamp.exists() and stamp.read_text() == recipe:
        return rootfs, key, host_key.read_text().strip()
    cache.mkdir(parents=True, exist_ok=True)
    stage = cache / f"stage-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        _run("debootstrap", "--variant=minbase", f"--include={','.join(packages)}", "bookworm", str(stage),
             "http://deb.debian.org/debian")
        version = kernel()[0].removeprefix("/boot/vmlinuz-")
        _modules(stage, version, NET_MODULES + (XEN_MODULES if xen else []))
        if xen:  # the hypervisor, decompressed: QEMU's -kernel takes the 32-bit multiboot ELF
            packed = next(iter(glob.glob(str(stage / "boot/xen-*-amd64.gz"))))
            (cache / "xen").write_bytes(gzip.decompress(Path(packed).read_bytes()))
            with (stage / "etc/default/xen").open("a") as settings:  # guest consoles to /var/log/xen/console
                settings.write('XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"\n')
            (stage / "var/log/xen/console").mkdir(parents=True, exist_ok=True)
            site = stage / SITE_PACKAGES
            site.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ANSIBALLZ_PYC, site / "hostagent_test_ansiballz_pyc.py")
            (site / "hostagent-test-ansiballz-pyc.pth").write_text("import hostagent_test_ansiballz_pyc\n")
        (stage / "etc/hostname").write_text("debian12\n")
        (stage / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 debian12\n")
        (stage / "etc/fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
        (stage / "etc/systemd/network/10-qemu.network").write_text(NETWORK)
        wants = stage / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            (wants / "systemd-networkd.service").symlink_to("/lib/systemd/system/systemd-networkd.service")
        (stage / "root/.ssh").mkdir(mode=0o700, parents=True, exist_ok=True)
        for old in (key, key.with_suffix(".pub")):
            old.unlink(missing_ok=True)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hostagent-tests", "-f", str(key))
        (stage / "root/.ssh/authorized_keys").write_text(key.with_suffix(".pub").read_text())
        (stage / "root/.ssh/authorized_keys").chmod(0o600)
        for name in glob.glob(str(stage / "etc/ssh/ssh_host_*")):
            os.unlink(name)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stage / "etc/ssh/ssh_host_ed25519_key"))
        shutil.copy2(stage / "etc/ssh/ssh_host_ed25519_key.pub", host_key)
        shutil.rmtree(stage / "var/cache/apt/archives", ignore_errors=True)
        (stage / "var/cache/apt/archives/partial").mkdir(parents=True)
        partial = cache / "rootfs.tmp"
        partial.unlink(missing_ok=True)
        _run("mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(stage), str(partial), f"{IMAGE_MIB}M")
        partial.rename(rootfs)
        stamp.write_text(recipe)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return rootfs, key, host_key.read_text().strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Qmp:
    """QEMU's machine protocol on a unix socket: each command carries an id, and only the reply with
    that id answers it (events and a late reply to an earlier, timed-out command are skipped); a
    command's timeout is a deadline, however many events arrive meanwhile."""

    def __init__(self, path: Path, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"QEMU exited with {process.returncode} before its QMP socket opened")
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"QEMU did not open {path} within {timeout:g} s") from None
                time.sleep(0.1)
        self.buffer = b""
        self.ids = 0
        self.lock = threading.Lock()  # one command at a time, whichever thread asks
        self._read(lambda message: "QMP" in message, deadline)  # the greeting
        self.command("qmp_capabilities")

    def _read(self, wanted: Callable[[dict[str, object]], bool], deadline: float) -> dict[str, object]:
        while True:
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                message: dict[str, object] = json.loads(line)
                if wanted(message):
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer from QEMU's QMP socket in time")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("QEMU closed its QMP socket")
            self.buffer += chunk

    def command(self, name: str, timeout: float = 60, fd: int | None = None, **arguments: object) -> object:
        """``fd``: a file descriptor passed along (SCM_RIGHTS), for ``getfd``."""
        with self.lock:
            self.ids += 1
            ident = f"c{self.ids}"
            message = json.dumps({"execute": name, "arguments": arguments, "id": ident}).encode() + b"\n"
            if fd is None:
                self.sock.sendall(message)
            else:
                socket.send_fds(self.sock, [message], [fd])
            reply = self._read(lambda message: message.get("id") == ident, time.monotonic() + timeout)
        if "error" in reply:
            raise RuntimeError(f"QMP {name}: {reply['error']}")
        return reply.get("return")

    def close(self) -> None:
        self.sock.close()


@dataclass
class Machine:
    """What it takes to start the VM again from a snapshot: its memory, disks and mail relay."""
    memory_mib: int
    xen: bool
    disks: list[Path]  # the root disk first, then the extra disks
    host_key: str
    smtp_port: int | None
    key: Path  # root's key for it: the image's at boot, never a rebuilt image's


@dataclass
class Snapshot:
    """A VM's whole state at one instant (``state``: QEMU's migration stream) and copies of its disks."""
    machine: Machine
    state: Path


@dataclass
class DebianVM:
    port: int
    key: Path
    known_hosts: Path
    console: Path
    process: subprocess.Popen[bytes]
    machine: Machine | None = None
    qmp: Qmp | None = None
    # the shared connection's socket directory: made by this VM's harness (mkdtemp, mode 0700), never
    # one that already existed (a planted master would answer for the VM); short, as a socket's
    # path is at most 107 bytes
    control: Path | None = None

    def snapshot(self, directory: Path) -> Snapshot:
        """Pause the VM, write its state and a copy of each disk into ``directory``, and let it run on.

        The state is QEMU's own migration stream of the paused machine (Xen, dom0 and every DomU in
        it), so a VM started from it (:func:`from_snapshot`) goes on from this very instant, on its
        own copies of the disks.  The clock inside stood still while paused: it is set to this
        machine's time afterwards (the copy's by :func:`from_snapshot`)."""
        assert self.machine is not None and self.qmp is not None
        directory.mkdir(parents=True, exist_ok=True)
        state = directory / "state"
        self.qmp.command("stop")
        try:
            # the stream goes to a file of ours through a descriptor, not a shell: when QEMU says
            # "completed", every byte is written
            with state.open("wb") as handle:
                self.qmp.command("getfd", fd=handle.fileno(), fdname="snapshot")
            self.qmp.command("migrate", uri="fd:snapshot")
            deadline = time.monotonic() + 600
            while True:
                status = self.qmp.command("query-migrate")
                said = status.get("status") if isinstance(status, dict) else None
                if said == "completed":
                    break
                if said in ("failed", "cancelled") or time.monotonic() > deadline:
                    raise RuntimeError(f"saving the VM's state: {status}")
                time.sleep(0.2)
            copies = []
            for disk in self.machine.disks:  # paused with cache=unsafe: QEMU wrote what it held
                copy = directory / disk.name
                _run("cp", "--sparse=always", str(disk), str(copy))
                copies.append(copy)
        finally:
            self.qmp.command("cont")
        set_clock(self)
        return Snapshot(Machine(self.machine.memory_mib, self.machine.xen, copies, self.machine.host_key,
                                self.machine.smtp_port, self.machine.key), state)

    def ssh(self, command: str, key: Path | None = None, timeout: float = 120,
            user: str = "root") -> subprocess.CompletedProcess[str]:
        """``command`` on the VM.  The test's own root logins share one connection (see ``multiplexing``);
        a login with another key or as another user is a login of its own, every time: what sshd lets
        that key do is what such a test is about."""
        shared = key is None and user == "root" and self.control is not None
        try:
            done = subprocess.run(["ssh", "-i", str(key or self.key), "-p", str(self.port), "-o", "BatchMode=yes",
                                   "-o", f"UserKnownHostsFile={self.known_hosts}", "-o",
                                   "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
                                   *(self.multiplexing() if shared else ()), f"{user}@127.0.0.1", command],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            if shared:  # the connection may be what hangs (a VM that went away without closing it)
                self.close_shared(keep_directory=True)
            raise
        if shared and done.returncode == 255:  # ssh's own failure: the next command logs in afresh
            self.close_shared(keep_directory=True)
        return done

    def multiplexing(self) -> tuple[str, ...]:
        """OpenSSH's connection sharing for the test's root logins.  On the Xen dom0 under TCG a fresh
        login (sshd's re-exec, the key exchange, PAM and logind) cost about 1.8 s of CPU, and a command
        over a shared connection about 0.2 s (docs/testing.md, "Third round"); the tests' waits poll
        every few seconds.  No keepalive: a loaded machine can stall the VM for many seconds, and a
        keepalive would end every command running over the connection.  Instead a shared command that
        times out or fails in ssh itself (255) ends the master, which may be what hangs (a VM that
        rebooted without closing the connection), and the next command opens a new one."""
        return ("-o", "ControlMaster=auto", "-o", f"ControlPath={self.control}/%C", "-o", "ControlPersist=120")

    def close_shared(self, keep_directory: bool = False) -> None:
        """Ends the shared connection's master (it would otherwise outlive the VM by ControlPersist), and
        with the VM its directory."""
        if self.control is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(["ssh", "-o", f"ControlPath={self.control}/%C", "-p", str(self.port), "-O", "exit",
                            "root@127.0.0.1"], capture_output=True, timeout=30, check=False)
        if not keep_directory:
            shutil.rmtree(self.control, ignore_errors=True)


def set_clock(vm: DebianVM) -> None:
    """The guest's wall clock set to this machine's (it stood still while QEMU was paused)."""
    done = vm.ssh(f"date -u -s @{time.time():.3f} >/dev/null", timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"setting the VM's clock: {done.stderr}")


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no QEMU outlives the test


def boot_arguments(memory_mib: int, xen: bool) -> list[str]:
    """QEMU's CPU, memory and boot options: Debian's kernel directly, or Xen with that kernel as dom0.

    Under Xen (docs/testing.md, "Xen under QEMU"): ``-cpu Nehalem`` (dom0 dies early with ``max``,
    and libvirtd's libxl driver finds no CPU model with ``qemu64``), ``xpti=false`` (Xen's Meltdown
    page-table isolation flushes QEMU's soft TLB on every dom0 system call: a quarter of the time),
    the multiboot module list "kernel and its command line, initrd", dom0's console on hvc0 through
    Xen's com1, and no ``-no-reboot``: a reboot of dom0 resets the machine and boots Xen again."""
    vmlinuz, initrd = kernel()
    if not xen:
        return ["-cpu", "max", "-m", str(memory_mib), "-no-reboot", "-kernel", vmlinuz, "-initrd", initrd,
                "-append", "root=/dev/vda rw console=ttyS0 panic=-1 net.ifnames=0"]
    dom0_mib = memory_mib // 2
    return ["-cpu", "Nehalem", "-m", str(memory_mib), "-kernel", str(XEN_CACHE / "xen"),
            "-append", f"dom0_mem={dom0_mib}M,max:{dom0_mib}M console=com1 com1=115200,8n1 xpti=false",
            "-initrd", f"{vmlinuz} root=/dev/vda rw console=hvc0 panic=-1 net.ifnames=0,{initrd}"]


def _mail_relay(smtp_port: int | None) -> str:
    """QEMU's guestfwd: each connection to 10.0.2.100:25 runs tests/vm/smtp_relay.py to the server."""
    if smtp_port is None:
        return ""
    relay = REPO / "tests/vm/smtp_relay.py"
    return f",guestfwd=tcp:10.0.2.100:25-cmd:{sys.executable} {relay} 127.0.0.1 {smtp_port}"


@contextlib.contextmanager
def debian_vm(workdir: Path, memory_mib: int = 1536, boot_timeout: float = 300,
              xen: bool = False, smtp_port: int | None = None, extra_disks: int = 0) -> Iterator[DebianVM]:
    """A booted Debian 12 VM reachable over SSH; ``xen``: a Xen dom0 with Debian's Xen 4.17;
    ``smtp_port``: the VM's 10.0.2.100:25 reaches that SMTP server on host loopback;
    ``extra_disks``: blank sparse 64 MiB virtio disks after the root disk (vdb, vdc, ...)."""
    rootfs, key, host_key = image(xen)
    disk = workdir / "disk.img"
    _run("cp", "--sparse=always", str(rootfs), str(disk))
    disks = [disk]
    for number in range(extra_disks):
        blank = workdir / f"extra{number}.img"
        with blank.open("wb") as handle:
            handle.truncate(64 << 20)
        disks.append(blank)
    with _running(workdir, Machine(memory_mib, xen, disks, host_key, smtp_port, key), boot_timeout) as vm:
        yield vm


@contextlib.contextmanager
def from_snapshot(workdir: Path, snapshot: Snapshot, smtp_port: int | None = None,
                  timeout: float = 600) -> Iterator[DebianVM]:
    """The snapshot's VM running again from the instant it was taken, on the snapshot's disks (used in
    place: a snapshot serves one VM); ``smtp_port``: its mail relay's server, if not the original's."""
    machine = Machine(snapshot.machine.memory_mib, snapshot.machine.xen, snapshot.machine.disks,
                      snapshot.machine.host_key, smtp_port if smtp_port is not None else snapshot.machine.smtp_port,
                      snapshot.machine.key)
    with _running(workdir, machine, timeout, incoming=snapshot.state) as vm:
        set_clock(vm)
        yield vm


@contextlib.contextmanager
def _running(workdir: Path, machine: Machine, boot_timeout: float,
             incoming: Path | None = None) -> Iterator[DebianVM]:
    """QEMU on ``machine``; ``incoming``: a saved state, which QEMU reads from a descriptor it inherits
    (``fd:``, no shell)."""
    port = free_port()
    known = workdir / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {' '.join(machine.host_key.split()[:2])}\n")
    console = workdir / "console.log"
    qmp_path = workdir / "qmp.sock"
    qmp_path.unlink(missing_ok=True)
    drives: list[str] = []
    for number, path in enumerate(machine.disks[1:]):
        drives += ["-drive", f"file={path},if=none,id=extra{number},format=raw,cache=unsafe",
                   "-device", f"virtio-blk-pci,drive=extra{number},event_idx=off,serial=extra{number}"]
    # the same devices in the same order: a VM started from a snapshot must match the one that wrote it
    argv = ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-smp", "2", "-nographic",
            *boot_arguments(machine.memory_mib, machine.xen),
            # event_idx=off: see "virtio event index" in docs/testing.md
            "-drive", f"file={machine.disks[0]},if=none,id=root,format=raw,cache=unsafe",
            "-device", "virtio-blk-pci,drive=root,event_idx=off", *drives,
            "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22{_mail_relay(machine.smtp_port)}",
            "-device", "virtio-net-pci,netdev=n0,event_idx=off", "-serial", f"file:{console}", "-monitor", "none",
            "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    with contextlib.ExitStack() as ours:  # the state's descriptor: QEMU's own copy is all it needs
        state = ours.enter_context(incoming.open("rb")) if incoming is not None else None
        if state is not None:
            argv += ["-incoming", f"fd:{state.fileno()}"]
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                                   pass_fds=() if state is None else (state.fileno(),))
    vm = DebianVM(port, machine.key, known, console, process, machine)
    try:
        vm.control = Path(tempfile.mkdtemp(prefix="hostagent-ssh-", dir="/tmp"))
        vm.qmp = Qmp(qmp_path, process)
        deadline = time.monotonic() + boot_timeout
        if incoming is not None:  # QEMU reads the state; the machine was paused when it was written
            while True:
                status = vm.qmp.command("query-status")
                said = status.get("status") if isinstance(status, dict) else None
                if said == "running":
                    break
                if said == "paused":
                    vm.qmp.command("cont")
                elif said != "inmigrate" or time.monotonic() > deadline:
                    raise RuntimeError(f"the VM did not resume from its saved state within {boot_timeout:g} s: "
                                       f"{status}")
                time.sleep(0.5)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the VM exited: {console.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                if vm.ssh("true", timeout=30).returncode == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no SSH after {boot_timeout:g} s: {console.read_text(errors='replace')[-2000:]}")
            time.sleep(2)
        yield vm
    finally:
        if vm.qmp is not None:
            vm.qmp.close()
        process.kill()
        process.wait(timeout=30)
        vm.close_shared()
