"""A QEMU VM running Debian's own kernel with real md, dm and mdadm, driven from pytest.

The VM boots a busybox initramfs that also holds mdadm, dmsetup, the VM's Python and this
working tree's agent; /init loads the md/dm/virtio modules and serves commands as JSON lines
on the second serial port.  The base image is cached under .cache/vm (``make clean``
removes it); each VM gets a run directory there that is removed when it stops, and
directories of runs whose pytest died are removed by the next run.
"""

from __future__ import annotations

import compileall
import contextlib
import ctypes
import hashlib
import importlib
import importlib.metadata
import itertools
import json
import os
import py_compile
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "vm"
RUNS = CACHE / "runs"
HERE = Path(__file__).resolve().parent
MODULES = ["virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod", "ahci", "md_mod", "raid1", "raid10",
           "crc32c_generic", "raid456", "dm_mod", "dm_delay", "dm_flakey", "ext4", "virtio_net", "nvme",
           "vfat", "nls_cp437", "nls_ascii", "nls_utf8", "efivarfs"]
ON_DEMAND = ["scsi_debug"]  # copied in, loaded by a test with its own parameters (it makes a disk when loaded)
TOOLS = ("mdadm", "dmsetup", "smartctl", "grub-install", "mke2fs", "sfdisk", "sgdisk", "wipefs", "blkid", "blockdev",
         "mkfs.fat", "mcopy", "mdir", "mdeltree", "efibootmgr")
DATA_DIRS = ("/usr/lib/grub/i386-pc", "/usr/lib/grub/x86_64-efi")
GCONV = ("gconv-modules", "gconv-modules.cache", "gconv-modules.d", "IBM850.so", "IBM437.so")
# UEFI guests: Debian's OVMF (without Secure Boot); each VM gets its own copy of the variable store
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
AGENT_DEPENDENCIES = ("apscheduler", "tzlocal", "pyudev", "sqlalchemy", "typing_extensions")
PYTHON = "/usr/bin/python3.11"
PY_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "distutils",
           "site-packages", "dist-packages", "unittest", "config-3.11-x86_64-linux-gnu", "venv"}
BOOT_TIMEOUT = 120.0
POWEROFF_TIMEOUT = 5.0
_serial = itertools.count()


class VMError(RuntimeError):
    """The VM could not be built, booted or driven; the message says why."""


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str


def kernel_version() -> str:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    if not kernels:
        raise VMError("no /boot/vmlinuz-*: install linux-image-amd64 (make test does)")
    return kernels[-1].name.removeprefix("vmlinuz-")


def _need(tool: str) -> str:
    path = shutil.which(tool) or next((p for p in (f"/sbin/{tool}", f"/usr/sbin/{tool}", f"/bin/{tool}")
                                      if os.path.exists(p)), None)
    if path is None:
        raise VMError(f"{tool} not found: install the VM test packages (make test does)")
    return path


def _libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs.append(parts[2])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def module_order(kver: str, modules: Sequence[str] = MODULES) -> list[str]:
    """The .ko files of these modules and their dependencies, dependencies first."""
    order: list[str] = []

    def visit(name: str) -> None:
        path = subprocess.run(["modinfo", "-k", kver, "-n", name], capture_output=True, text=True).stdout.strip()
        if not path or path.startswith("(builtin)") or path in order:
            return
        deps = subprocess.run(["modinfo", "-k", kver, "-F", "depends", name], capture_output=True,
                              text=True).stdout.strip()
        for dep in filter(None, deps.split(",")):
            visit(dep)
        if path not in order:
            order.append(path)

    for module in modules:
        visit(module)
    return order


def _copy(src: str, root: Path) -> None:
    dest = root / src.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), dest)


def _cpio(stage: Path, out: Path) -> None:
    names = subprocess.run(["find", "."], cwd=stage, capture_output=True, check=True).stdout
    with out.open("wb") as handle:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=stage, input=names, stdout=handle, check=True)


def base_image() -> Path:
    """The cached initramfs with busybox, mdadm, dmsetup, Python and the kernel modules."""
    kver = kernel_version()
    recipe = f"{kver}|{sys.version}|{(HERE / 'init.sh').read_text()}|{Path(__file__).read_text()}"
    return _cached_cpio("base", recipe, lambda stage: _fill_base(stage, kver))


def _cached_cpio(name: str, recipe: str, fill: Callable[[Path], None]) -> Path:
    """``.cache/vm/<name>-<hash of recipe>.cpio``, built once by ``fill`` in a stage of this process's
    own and renamed into place whole (two processes building it at once each get a whole file)."""
    image = CACHE / f"{name}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}.cpio"
    if image.exists():
        return image
    CACHE.mkdir(parents=True, exist_ok=True)
    stage = CACHE / f"{name}-stage-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        fill(stage)
        tmp = image.with_suffix(f".{os.getpid()}.tmp")
        _cpio(stage, tmp)
        tmp.rename(image)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return image


def _fill_base(stage: Path, kver: str) -> None:
    busybox = _need("busybox")
    (stage / "bin").mkdir(parents=True)
    shutil.copy2(busybox, stage / "bin/busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox" and not (stage / "bin" / applet).exists():
            (stage / "bin" / applet).symlink_to("busybox")
    for tool in (*TOOLS, PYTHON):
        link = stage / "bin" / Path(tool).name
        if link.is_symlink():  # the real tool, not busybox's smaller applet (blkid -p, wipefs)
            link.unlink()
        path = _need(tool)
        for lib in _libraries(path):
            _copy(lib, stage)
        _copy(path, stage)
    (stage / "usr/bin/python3").symlink_to("python3.11")
    mke2fs = Path(_need("mke2fs"))
    (stage / str(mke2fs.parent).lstrip("/") / "mkfs.ext4").symlink_to("mke2fs")
    for name in GCONV:  # mtools converts FAT names through iconv (codepage 850), as on a full host
        source = Path("/usr/lib/x86_64-linux-gnu/gconv") / name
        target = stage / str(source).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    for data in DATA_DIRS:
        shutil.copytree(data, stage / data.lstrip("/"), ignore=shutil.ignore_patterns("monolithic"))
    pylib = Path("/usr/lib/python3.11")
    shutil.copytree(pylib, stage / "usr/lib/python3.11", symlinks=True,
                    ignore=lambda d, names: [n for n in names if n in PY_SKIP and Path(d) == pylib])
    for extension in sorted((pylib / "lib-dynload").glob("*.so")):  # _sqlite3, _ssl, ... need their libraries
        for lib in _libraries(str(extension)):
            if not (stage / lib.lstrip("/")).exists():
                _copy(lib, stage)
    order = module_order(kver)
    on_demand = [m for m in module_order(kver, ON_DEMAND) if m not in order]
    order += [m for m in on_demand if Path(m).name.split(".")[0] not in ON_DEMAND]  # their dependencies
    (stage / "lib/modules").mkdir(parents=True)
    for module in order + on_demand:
        shutil.copy2(module, stage / "lib/modules")
    (stage / "etc").mkdir(exist_ok=True)
    (stage / "etc/modules.order").write_text("\n".join(Path(m).name for m in order) + "\n")
    shutil.copy2(HERE / "init.sh", stage / "init")
    (stage / "init").chmod(0o755)
    for lib in ("lib", "lib64", "usr/lib"):
        (stage / lib).mkdir(parents=True, exist_ok=True)


def _compile(tree: Path) -> None:
    """Bytecode for every module under ``tree``, so the VM's Python (the same 3.11) loads instead of
    compiling: under TCG a first ``import hostagent`` compiled for seconds after every boot.
    Unchecked hashes: the sources travel with their bytecode, built together, and never change in
    the VM, so the interpreter need not read each source again to check it."""
    compileall.compile_dir(tree, quiet=2, workers=1, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def dependencies_image() -> Path:
    """The packages the daemon needs, from this environment (CPython 3.11), with their bytecode and
    the libraries their extensions link: cached like the base image, keyed by the packages' versions
    and by each library file as it is now (a host upgrade of libc builds it again)."""
    sources = [Path(importlib.import_module(name).__file__ or "") for name in AGENT_DEPENDENCIES]
    extensions = [so for source in sources if source.name == "__init__.py" for so in source.parent.rglob("*.so")]
    libraries = sorted({library for so in extensions for library in _libraries(str(so))})
    identities = [(library, os.stat(library).st_size, os.stat(library).st_mtime_ns) for library in libraries]
    versions = [f"{name}={importlib.metadata.version(name)}" for name in AGENT_DEPENDENCIES]
    recipe = f"{sys.version}|{versions}|{identities}|{Path(__file__).read_text()}"

    def fill(stage: Path) -> None:
        for source in sources:
            if source.name == "__init__.py":
                shutil.copytree(source.parent, stage / "opt/hostagent" / source.parent.name,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:  # a single-module distribution
                shutil.copy2(source, stage / "opt/hostagent" / source.name)
        for library in libraries:  # compiled parts (SQLAlchemy's) need their libraries
            _copy(library, stage)
        _compile(stage / "opt/hostagent")
    return _cached_cpio("deps", recipe, fill)


def agent_image(run_dir: Path) -> Path:
    """A small cpio with this working tree's agent (with its bytecode) and the guest server,
    appended to the base and the dependencies."""
    stage = run_dir / "agent-stage"
    for package in ("hostagent", "checks"):
        shutil.copytree(REPO / package, stage / "opt/hostagent" / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    _compile(stage / "opt/hostagent")
    shutil.copy2(HERE / "guest_server.py", stage / "opt/guest_server.py")
    out = run_dir / "agent.cpio"
    _cpio(stage, out)
    shutil.rmtree(stage)
    return out


def remove_stale_runs() -> None:
    """Remove run directories (and their QEMU) left by a test process that was killed."""
    if not RUNS.exists():
        return
    for run in RUNS.iterdir():
        owner = int(run.name.split("-")[0]) if run.name.split("-")[0].isdigit() else 0
        if owner and Path(f"/proc/{owner}").exists():
            continue
        pidfile = run / "qemu.pid"
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        shutil.rmtree(run, ignore_errors=True)


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class VM:
    """A running VM with ``disks`` sparse virtio disks of ``disk_mib`` MiB each."""

    def __init__(self, disks: int = 2, disk_mib: int = 64, memory_mib: int = 512, sata_disks: int = 0,
                 disk_layout: str | None = None, scsi_disks: int = 0, smtp_port: int | None = None,
                 scsi_specs: Sequence[tuple[int, str | None]] = (),
                 sata_specs: Sequence[tuple[int, str | None]] = (), event_idx: bool = False,
                 nvme_disks: int = 0, firmware: str = "bios") -> None:
        """``scsi_specs``/``sata_specs``: one (MiB, sfdisk layout or None for blank) per SCSI/SATA
        disk, instead of ``scsi_disks``/``sata_disks`` disks of ``disk_mib`` with ``disk_layout``.
        ``event_idx``: let the virtio devices use event index (only ``tests.vm.soak`` does).
        ``nvme_disks``: disks on QEMU's emulated NVMe controllers (nvme0n1, ...), one controller each.
        ``firmware``: "bios" (SeaBIOS) or "uefi" (OVMF, which starts the kernel through its EFI stub)."""
        remove_stale_runs()
        self.run_dir = RUNS / f"{os.getpid()}-{next(_serial)}"
        self.run_dir.mkdir(parents=True)
        self.disks = [self.run_dir / f"disk{i}.img" for i in range(disks)]
        self.sata_disks = [self.run_dir / f"sata{i}.img" for i in range(len(sata_specs) or sata_disks)]
        self.scsi_disks = [self.run_dir / f"scsi{i}.img" for i in range(len(scsi_specs) or scsi_disks)]
        self.nvme_disks = [self.run_dir / f"nvme{i}.img" for i in range(nvme_disks)]
        self._specs = {"scsi": list(scsi_specs), "sata": list(sata_specs)}
        self._proc: subprocess.Popen[bytes] | None = None
        self._cmd: socket.socket | None = None
        self._qmp: socket.socket | None = None
        self._ids = itertools.count(1)
        self._buffer = b""
        self._layout = disk_layout
        self._smtp_port = smtp_port
        self._partitions = 0  # how many partitions the disk layouts make: the guest must show them all
        self._event_idx = "on" if event_idx else "off"
        self._firmware = firmware
        try:
            self._boot(disk_mib, memory_mib)
        except BaseException:
            self.close()
            raise

    @property
    def console(self) -> str:
        path = self.run_dir / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _boot(self, disk_mib: int, memory_mib: int) -> None:
        qemu = _need("qemu-system-x86_64")
        initrd = self.run_dir / "initrd.cpio"
        with initrd.open("wb") as out:
            for part in (base_image(), dependencies_image(), agent_image(self.run_dir)):
                out.write(part.read_bytes())
        argv = [
            qemu, "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "1", "-m", str(memory_mib),
            "-display", "none", "-no-reboot", "-nodefaults", "-monitor", "none",
            "-kernel", f"/boot/vmlinuz-{kernel_version()}", "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 rdinit=/init loglevel=4",
            "-serial", f"file:{self.run_dir / 'console.log'}",
            "-chardev", f"socket,id=cmd,path={self.run_dir / 'cmd.sock'},server=on,wait=off",
            "-serial", "chardev:cmd",
            "-qmp", f"unix:{self.run_dir / 'qmp.sock'},server=on,wait=off",
            "-pidfile", str(self.run_dir / "qemu.pid"),
        ]
        if self._firmware == "uefi":
            argv += uefi_firmware(self.run_dir)
        # event_idx=off on every virtio device: see "virtio event index" in docs/testing.md
        event_idx = f"event_idx={self._event_idx}"
        buses = [(self.disks, "disk", f"virtio-blk-pci,drive={{node}},id=vd{{i}},serial=disk{{i}},{event_idx}"),
                 (self.scsi_disks, "scsi", "scsi-hd,drive={node},bus=scsi0.0,scsi-id={i},lun=0,serial=SCSI{i}"),
                 (self.sata_disks, "sata", "ide-hd,drive={node},bus=ahci0.{i},serial=SATA{i},model=QEMU-SATA-{i}"),
                 (self.nvme_disks, "nvme", "nvme,drive={node},serial=NVME{i},id=nvmec{i}")]
        if self.scsi_disks:  # sdX on the real sd driver, behind virtio-scsi
            argv += ["-device", f"virtio-scsi-pci,id=scsi0,{event_idx}"]
        if self.sata_disks:  # sdX through libata, behind an emulated AHCI controller
            argv += ["-device", "ahci,id=ahci0"]
        for disks, prefix, device in buses:
            for i, disk in enumerate(disks):
                specs = self._specs.get(prefix)
                mib, layout = specs[i] if specs else (disk_mib, self._layout)
                argv += self._disk(disk, f"{prefix}{i}", device.format(node=f"{prefix}{i}", i=i), mib, layout)
        if self._smtp_port is not None:
            # The guest's only network: 10.0.2.100:25 relayed to an SMTP server on host loopback.
            relay = f"cmd:{sys.executable} {HERE / 'smtp_relay.py'} 127.0.0.1 {self._smtp_port}"
            argv += ["-netdev", f"user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:25-{relay}",
                     "-device", f"virtio-net-pci,netdev=net0,{event_idx}"]
        log = (self.run_dir / "qemu.stderr").open("wb")
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                      preexec_fn=_die_with_parent)
        self._cmd = self._connect("cmd.sock")
        hello = self._read_hello(BOOT_TIMEOUT)
        if not hello.get("ready"):
            raise VMError(f"unexpected first message from the VM: {hello}")
        self._qmp = self._connect("qmp.sock")
        self._qmp_read(10)
        self.qmp("qmp_capabilities")
        # the kernel unpacks what fits and boots on: a short initramfs shows later as a missing module
        unpacked = self.run("dmesg | grep -m1 'Initramfs unpacking failed' || true", timeout=30).stdout.strip()
        if unpacked:
            raise VMError(f"{unpacked}: the initramfs ({initrd.stat().st_size >> 20} MiB) does not fit in "
                          f"{memory_mib} MiB with this firmware; give the VM more memory")
        self._wait_for_block_devices()
        self._name_disks_in_slot_order()
        if self._smtp_port is not None:
            self.run("ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0")

    def _wait_for_block_devices(self) -> None:
        """Wait until the guest shows every disk and every partition: the kernel probes SCSI and
        SATA disks asynchronously, so the command server can be up before they are."""
        disks = len(self.disks) + len(self.scsi_disks) + len(self.sata_disks) + len(self.nvme_disks)
        self.run(f"until [ $(ls -d /sys/block/vd* /sys/block/sd* /sys/block/nvme* 2>/dev/null | wc -l) = {disks} ] && "
                 f"[ $(ls /sys/class/block/*/partition 2>/dev/null | wc -l) = {self._partitions} ]; do sleep 0.1; done",
                 timeout=BOOT_TIMEOUT)

    def _name_disks_in_slot_order(self) -> None:
        """Make sda, sdb, ... follow the SCSI address (host:channel:target:lun) of each disk, so
        that scsi0/sata0 is sda.  The sd driver probes disks in parallel and names them in the
        order its probes happen to run; binding them again one by one, in address order, gives
        each the next free name."""
        names = self._sd_names()
        wanted = [f"sd{chr(97 + i)}" for i in range(len(names))]
        if [name for _, name in names] == wanted:
            return
        sd = "/sys/bus/scsi/drivers/sd"
        self.run("".join(f"echo {address} > {sd}/unbind; " for address, _ in names)
                 + "".join(f"echo {address} > {sd}/bind; " for address, _ in names), timeout=BOOT_TIMEOUT)
        self._wait_for_block_devices()
        if [name for _, name in self._sd_names()] != wanted:
            raise VMError(f"the guest named its SCSI disks out of address order: {self._sd_names()}")

    def _sd_names(self) -> list[tuple[str, str]]:
        """(SCSI address, disk name) of every disk the sd driver holds, in address order."""
        listing = self.run("for d in /sys/bus/scsi/drivers/sd/*:*; do [ -d $d/block ] && echo ${d##*/} $(ls $d/block); "
                           "done; true").stdout.split()
        pairs = list(zip(listing[::2], listing[1::2], strict=True))
        return sorted(pairs, key=lambda pair: [int(part) for part in pair[0].split(":")])

    def _disk(self, path: Path, node: str, device: str, mib: int, layout: str | None) -> list[str]:
        """A sparse image under a blkdebug layer (so writes can be held), named ``node`` for QMP."""
        with path.open("wb") as handle:
            handle.truncate(mib * 1024 * 1024)
        if layout:  # sfdisk works on the image file itself, before the guest sees it
            subprocess.run(["sfdisk", "-q", str(path)], input=layout.encode(), check=True, capture_output=True)
            table = subprocess.run(["sfdisk", "--json", str(path)], check=True, capture_output=True, text=True)
            self._partitions += len(json.loads(table.stdout)["partitiontable"]["partitions"])
        return ["-blockdev", f"driver=file,filename={path},node-name={node}-file,cache.direct=off,cache.no-flush=on",
                "-blockdev", f"driver=blkdebug,image={node}-file,node-name={node}-debug",
                "-blockdev", f"driver=raw,file={node}-debug,node-name={node}",
                "-device", device]

    def _connect(self, name: str) -> socket.socket:
        deadline = time.monotonic() + 30
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise VMError(f"QEMU exited with {self._proc.returncode}: "
                              f"{(self.run_dir / 'qemu.stderr').read_text(errors='replace')}")
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(self.run_dir / name))
                return sock
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise VMError(f"QEMU did not open {name}") from None
                time.sleep(0.05)

    def _read_hello(self, timeout: float) -> dict[str, Any]:
        """The guest server's first message.  UEFI firmware writes its console to every serial port,
        the command port too, until the kernel takes them over: what comes before the first JSON
        object is the firmware's."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                line, rest = self._buffer.split(b"\n", 1)
                if b'{"' in line:
                    self._buffer = line[line.index(b'{"'):] + b"\n" + rest
                    return self._read_message(1)
                self._buffer = rest
            self._receive(deadline, timeout)

    def _read_message(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            self._receive(deadline, timeout)
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def _receive(self, deadline: float, timeout: float) -> None:
        """Whatever the command port has by ``deadline``, added to the buffer."""
        assert self._cmd is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise VMError(f"no answer from the VM within {timeout:g} s; console:\n{self.console[-3000:]}")
        self._cmd.settimeout(remaining)
        try:
            chunk = self._cmd.recv(65536)
        except TimeoutError:
            return
        if not chunk:
            raise VMError(f"the VM closed its command port; console:\n{self.console[-3000:]}")
        self._buffer += chunk

    def run(self, cmd: str, timeout: float = 60, check: bool = True) -> Result:
        """Run a shell command inside the VM."""
        assert self._cmd is not None
        request_id = next(self._ids)
        self._cmd.sendall(json.dumps({"id": request_id, "cmd": cmd, "timeout": timeout}).encode() + b"\n")
        reply = self._read_message(timeout + 30)
        if reply.get("id") != request_id:
            raise VMError(f"reply for request {reply.get('id')}, expected {request_id}")
        result = Result(reply["rc"], reply["stdout"], reply["stderr"])
        if check and result.rc != 0:
            raise VMError(f"in the VM, `{cmd}` exited {result.rc}:\n{result.stdout}\n{result.stderr}")
        return result

    def hostagent(self, args: str, timeout: float = 60) -> Result:
        return self.run(f"python3 -m hostagent {args}", timeout=timeout, check=False)

    def _qmp_read(self, timeout: float) -> dict[str, Any]:
        assert self._qmp is not None
        self._qmp.settimeout(timeout)
        data = b""
        while True:
            while b"\n" in data:
                line, data = data.split(b"\n", 1)
                message: dict[str, Any] = json.loads(line)
                if "event" not in message:
                    return message
            chunk = self._qmp.recv(65536)
            if not chunk:
                raise VMError("QMP connection closed")
            data += chunk

    def qmp(self, command: str, **arguments: Any) -> Any:
        assert self._qmp is not None
        self._qmp.sendall(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        reply = self._qmp_read(30)
        if "error" in reply:
            raise VMError(f"QMP {command}: {reply['error']}")
        return reply.get("return")

    def hmp(self, command: str) -> str:
        out: str = self.qmp("human-monitor-command", **{"command-line": command})
        return out

    def break_writes(self, disk: int | str, tag: str = "A") -> None:
        """Hold every write to a disk inside QEMU (a hang the guest's counters can see).

        ``disk`` is a virtio disk's index, or a node name such as "scsi0"."""
        node = f"disk{disk}" if isinstance(disk, int) else disk
        self.hmp(f'qemu-io {node} "break write_aio {tag}"')

    def resume_writes(self, tag: str = "A") -> None:
        nodes = [f"{prefix}{i}" for prefix, disks in (("disk", self.disks), ("scsi", self.scsi_disks),
                                                      ("sata", self.sata_disks), ("nvme", self.nvme_disks))
                 for i in range(len(disks))]
        for node in nodes:
            self.hmp(f'qemu-io {node} "resume {tag}"')

    def error_table(self, node: str) -> None:
        """Remap a whole disk to an error target, as ``dmsetup load --table "0 S error"`` and
        ``dmsetup resume`` would: from now on every read and write the guest sends it fails with
        EIO.  ``node`` is a node name such as "scsi1".  The guest keeps the disk, its partitions
        and its slot, as a dying disk that still answers its controller does."""
        rules = [{"event": event, "errno": 5, "once": False, "immediately": True}
                 for event in ("read_aio", "write_aio")]
        self.qmp("blockdev-add", driver="blkdebug", **{"node-name": f"{node}-error", "image": f"{node}-debug",
                                                         "inject-error": rules})
        self.qmp("blockdev-reopen", options=[{"driver": "raw", "node-name": node, "file": f"{node}-error"}])

    def close(self) -> None:
        """Power off; QEMU is killed if it does not stop in time. Removes the run directory."""
        self.shutdown()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def shutdown(self) -> None:
        """Power the guest off (its disks stay in the run directory until close)."""
        if self._cmd is not None and self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(OSError):
                self._cmd.sendall(json.dumps({"id": 0, "cmd": "sync; poweroff -f", "timeout": 5}).encode() + b"\n")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=POWEROFF_TIMEOUT)
        for sock in (self._cmd, self._qmp):
            if sock is not None:
                sock.close()
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._proc.terminate()
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._cmd = self._qmp = None

    def __enter__(self) -> VM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serial_menu(entry: str) -> str:
    """A grub.cfg whose only menu entry, ``entry``, shows on the serial console that
    ``boot_from_disk`` watches."""
    return ("serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\nset timeout=60\n"
            f'menuentry "{entry}" {{\n    echo ok\n}}\n')


def uefi_firmware(run_dir: Path) -> list[str]:
    """QEMU arguments for OVMF, with a fresh copy of its variable store in ``run_dir``."""
    for path in (OVMF_CODE, OVMF_VARS):
        if not Path(path).is_file():
            raise VMError(f"{path} is missing: install Debian's ovmf package (make apt does)")
    variables = run_dir / "OVMF_VARS.fd"
    shutil.copy(OVMF_VARS, variables)
    return ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={variables}"]


def boot_from_disk(image: Path, expect: str, timeout: float = 120.0, firmware: str = "bios") -> str:
    """Boot QEMU's firmware (SeaBIOS, or OVMF with ``firmware="uefi"`` and empty variables) from
    ``image`` alone (no -kernel) and return the serial console once ``expect`` appears on it;
    raises VMError with the console if it never does."""
    qemu = _need("qemu-system-x86_64")
    console = image.with_suffix(".console")
    argv = [qemu, "-machine", "q35,accel=tcg", "-cpu", "max", "-m", "256", "-display", "none", "-nodefaults",
            "-no-reboot", "-monitor", "none", "-serial", f"file:{console}",
            "-drive", f"file={image},if=virtio,format=raw,cache=unsafe"]
    if firmware == "uefi":
        argv += uefi_firmware(image.parent)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=_die_with_parent)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            text = console.read_text(errors="replace") if console.exists() else ""
            if expect in text:
                return text
            time.sleep(0.5)
        text = console.read_text(errors="replace") if console.exists() else ""
        raise VMError(f"{image.name} did not show {expect!r} within {timeout:g} s; console:\n{text[-2000:]}")
    finally:
        proc.kill()
        proc.wait(timeout=10)
        console.unlink(missing_ok=True)
