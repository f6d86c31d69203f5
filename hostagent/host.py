"""Host: every read of proc, sys, dev and every external command goes through here.

A Host is rooted at ``root`` ("/" for the live machine, or a snapshot directory).  In a
snapshot, command outputs are replayed from ``<root>/_commands/<tool>/<name>`` instead of
being run (docs/snapshot-format.md).  A Host built with ``record_to`` copies everything it
reads into that directory, which is how ``hostagent collect`` builds a snapshot that
reproduces the same findings offline.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from hostagent.durable import read_bounded
from hostagent.errors import CommandTimeout, ParseError, ProbeUnavailable
from hostagent.records import record

COMMANDS_DIR = "_commands"
MAX_READ = 8 << 20  # no file or recorded output a check reads is near this: /proc/mdstat of 1,000 arrays is ~200 KiB
DEFAULT_COMMAND_TIMEOUT = 30.0
# After killing a timed-out command, how long to wait for it to be reaped.  A process in
# uninterruptible sleep (D state, a hung disk) cannot die; we leave it rather than hang too.
REAP_GRACE = 2.0
# A step that writes one sysfs attribute names this pseudo-tool: ``("sysfs-write", path, value)``.
# The write is done by Python in a child process (a write to a hung device's attribute can block
# for good), never through a shell.  The value ends in a newline, as echo writes it: SCSI's
# device/state accepts "offline\n" and refuses "offline" (EINVAL).
SYSFS_WRITE = "sysfs-write"
_SYSFS_PATH = re.compile(r"/sys/[A-Za-z0-9_.:+!/-]+")
_SYSFS_WRITER = (
    "import os, sys\n"
    "path, value = sys.argv[1], sys.argv[2]\n"
    "try:\n"
    "    fd = os.open(path, os.O_WRONLY)\n"
    "    try:\n"
    "        os.write(fd, value.encode() + b'\\n')\n"
    "    finally:\n"
    "        os.close(fd)\n"
    "except OSError as err:\n"
    "    sys.stderr.write(f'{path}: {err.strerror}\\n')\n"
    "    sys.exit(1)\n"
)


def sysfs_write(path: str, value: str) -> tuple[str, str, str]:
    """The argv of a step that writes ``value`` to the sysfs attribute ``path``."""
    if not _SYSFS_PATH.fullmatch(path) or ".." in path.split("/") or not value.isprintable() or not value:
        raise ProbeUnavailable(f"{path!r} = {value!r}: not a sysfs attribute and value hostagent writes")
    return (SYSFS_WRITE, path, value)


@record(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class Host:
    def __init__(
        self,
        root: str | os.PathLike[str] = "/",
        *,
        record_to: str | os.PathLike[str] | None = None,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> None:
        self.root = Path(root).resolve()
        self.is_snapshot = self.root != Path("/")
        self.command_timeout = command_timeout
        self._record_to = Path(record_to).resolve() if record_to is not None else None

    def __repr__(self) -> str:
        return f"Host(root={str(self.root)!r})"

    # -- files ---------------------------------------------------------------------------

    def path(self, path: str) -> Path:
        """The real location of the absolute host path ``path`` ("/proc/mdstat")."""
        if not path.startswith("/"):
            raise ValueError(f"host paths are absolute, got {path!r}")
        return self.root / path.lstrip("/")

    def read_text(self, path: str) -> str:
        """Read a text file; a missing file raises FileNotFoundError, other faults ProbeUnavailable."""
        return self.read_bytes(path).decode("utf-8", errors="replace")

    def read_bytes(self, path: str) -> bytes:
        """A regular file's bytes, at most MAX_READ: a FIFO, a device or an endless file where a file is
        expected (a hostile snapshot, a broken /proc) is ProbeUnavailable, never a hang."""
        real = self.path(path)
        try:
            data = read_bounded(real, MAX_READ, follow=True)
        except FileNotFoundError:
            raise
        except NotADirectoryError as err:
            raise FileNotFoundError(errno.ENOENT, "not found", path) from err
        except PermissionError as err:
            raise ProbeUnavailable(f"{path}: permission denied (run as root)") from err
        except OSError as err:
            raise ProbeUnavailable(f"{path}: {err.strerror or err}") from err
        except ValueError as err:
            raise ProbeUnavailable(f"{real}: {err}") from err
        self._record_file(path, data)
        return data

    def read_optional(self, path: str) -> str | None:
        """Like read_text, but a missing file is None ("no data is not an error")."""
        try:
            return self.read_text(path)
        except FileNotFoundError:
            return None

    def listdir(self, path: str) -> list[str]:
        """Sorted entries of a directory; a missing directory is empty."""
        real = self.path(path)
        try:
            names = sorted(os.listdir(real))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except PermissionError as err:
            raise ProbeUnavailable(f"{path}: permission denied (run as root)") from err
        if self._record_to is not None:
            snapshot_dir = self._snapshot_path(path)
            snapshot_dir.mkdir(parents=True, exist_ok=True)
            for name in names:  # links (slaves/vda, /sys/block/sda) are what a listing is read for
                entry = real / name
                if entry.is_symlink() and not os.path.lexists(snapshot_dir / name):
                    os.symlink(os.readlink(entry), snapshot_dir / name)
        return names

    def readlink(self, path: str) -> str | None:
        real = self.path(path)
        try:
            target = os.readlink(real)
        except (FileNotFoundError, NotADirectoryError, OSError):
            return None
        if self._record_to is not None:
            parent, name = path.rstrip("/").rsplit("/", 1)
            dest = self._snapshot_path(parent or "/") / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.is_symlink() and not dest.exists():
                os.symlink(target, dest)
        return target

    def exists(self, path: str) -> bool:
        real = self.path(path)
        found = real.exists()
        if found and self._record_to is not None:
            if real.is_dir():
                self._snapshot_path(path).mkdir(parents=True, exist_ok=True)
            elif not self._snapshot_path(path).exists():
                self._record_file(path, b"")
        return found

    def hostname(self) -> str:
        for source in ("/proc/sys/kernel/hostname", "/etc/hostname"):
            try:
                name = self.read_text(source).strip()
            except (FileNotFoundError, ProbeUnavailable):
                continue
            if name:
                return name
        return "unknown"

    def _record_file(self, path: str, data: bytes) -> None:
        if self._record_to is None:
            return
        dest = self._snapshot_path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)

    def _snapshot_path(self, path: str) -> Path:
        """Where ``path`` lives in the snapshot being recorded, mirroring its symlinks.

        sysfs is full of symlinks (/sys/block/sda -> ../devices/.../block/sda); each
        symlinked component is recreated in the snapshot with the same target, and the
        content is stored at the resolved place, so the snapshot reads like the live tree.
        """
        assert self._record_to is not None
        live, snap = str(self.root), str(self._record_to)
        for part in [p for p in path.split("/") if p]:
            live_next, snap_next = os.path.join(live, part), os.path.join(snap, part)
            if os.path.islink(live_next):
                target = os.readlink(live_next)
                if not os.path.lexists(snap_next):
                    os.makedirs(snap, exist_ok=True)
                    os.symlink(target, snap_next)
                if target.startswith("/"):
                    live = os.path.normpath(os.path.join(self.root, target.lstrip("/")))
                    snap = os.path.normpath(os.path.join(self._record_to, target.lstrip("/")))
                else:
                    live = os.path.normpath(os.path.join(live, target))
                    snap = os.path.normpath(os.path.join(snap, target))
            else:
                live, snap = live_next, snap_next
        return Path(snap)

    # -- block devices -------------------------------------------------------------------

    def open_device(self, path: str, timeout: float | None = None) -> DeviceReader:
        """Random-access reads of a block device (live: in a child process; snapshot: a sparse file)."""
        if self.is_snapshot:
            return SnapshotDevice(self, path)
        return LiveDevice(self, path, self.command_timeout if timeout is None else timeout)

    def _record_range(self, path: str, offset: int, data: bytes) -> None:
        if self._record_to is None or not data:
            return
        dest = self._snapshot_path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "r+b" if dest.exists() else "w+b") as handle:
            os.pwrite(handle.fileno(), data, offset)

    # -- commands ------------------------------------------------------------------------

    def run(
        self, tool: str, args: list[str], *, name: str, timeout: float | None = None, stdin: str | None = None
    ) -> CommandResult:
        """Run ``tool args`` in a child process with a timeout, or replay it from a snapshot.

        ``name`` identifies the output inside the snapshot: ``_commands/<tool>/<name>``.
        """
        argv = (tool, *args)
        if self.is_snapshot:
            return self._replay(argv, tool, name)
        seconds = self.command_timeout if timeout is None else timeout
        if tool == SYSFS_WRITE:
            if len(args) != 2:
                raise ProbeUnavailable(f"{SYSFS_WRITE} takes a path and a value, not {args!r}")
            sysfs_write(*args)  # refuses anything but a plain /sys path
            try:
                done = run_command((sys.executable, "-I", "-S", "-c", _SYSFS_WRITER, *args), timeout=seconds)
            except CommandTimeout:
                raise CommandTimeout(f"{' '.join(argv)}: no answer within {seconds:g} s; killed") from None
            result = CommandResult(argv, done.returncode, done.stdout, done.stderr)
        else:
            result = run_command(argv, timeout=seconds, stdin=stdin)
        self._record_command(tool, name, result)
        return result

    def _replay(self, argv: tuple[str, ...], tool: str, name: str) -> CommandResult:
        base = self.root / COMMANDS_DIR / tool / name

        def recorded(path: Path) -> str | None:
            try:
                return read_bounded(path, MAX_READ, follow=True).decode("utf-8", errors="replace")
            except FileNotFoundError:
                return None
            except (OSError, ValueError) as err:
                raise ProbeUnavailable(f"{path}: {getattr(err, 'strerror', None) or err}") from None

        stdout = recorded(base)
        if stdout is None:
            raise ProbeUnavailable(f"snapshot {self.root} has no recorded output of {' '.join(argv)} "
                                   f"(expected {base})")
        rc_file = base.with_name(base.name + ".rc")
        rc_text = (recorded(rc_file) or "0").strip()
        if not re.fullmatch(r"-?[0-9]{1,3}", rc_text):
            raise ParseError(str(rc_file), 1, f"exit code {rc_text[:40]!r} is not a number from -255 to 999")
        stderr = recorded(base.with_name(base.name + ".stderr")) or ""
        return CommandResult(argv, int(rc_text), stdout, stderr)

    def _record_command(self, tool: str, name: str, result: CommandResult) -> None:
        if self._record_to is None:
            return
        base = self._record_to / COMMANDS_DIR / tool / name
        base.parent.mkdir(parents=True, exist_ok=True)
        base.write_text(result.stdout)
        if result.returncode != 0:
            base.with_name(base.name + ".rc").write_text(f"{result.returncode}\n")
        if result.stderr:
            base.with_name(base.name + ".stderr").write_text(result.stderr)


def run_command(argv: tuple[str, ...], *, timeout: float, stdin: str | None = None) -> CommandResult:
    """Run argv in its own process group; on timeout kill the group and never block on it.
    ``stdin`` is the child's whole input (for ``sfdisk``), else it reads /dev/null."""
    if shutil.which(argv[0]) is None:
        raise ProbeUnavailable(f"{argv[0]}: command not found")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            env={**os.environ, "LC_ALL": "C"},
        )
    except OSError as err:
        raise ProbeUnavailable(f"{argv[0]}: cannot run: {err.strerror or err}") from err
    try:
        out, err_out = proc.communicate(None if stdin is None else stdin.encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        # A child stuck in D state cannot be reaped: abandon it rather than hang with it.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=REAP_GRACE)
        raise CommandTimeout(
            f"{' '.join(argv)}: no answer within {timeout:g} s; killed"
        ) from None
    return CommandResult(
        argv,
        proc.returncode,
        out.decode("utf-8", errors="replace"),
        err_out.decode("utf-8", errors="replace"),
    )


class DeviceReader(abc.ABC):
    path: str

    @abc.abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer at the end of the device)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device."""

    def __enter__(self) -> DeviceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SnapshotDevice(DeviceReader):
    """A device captured as a (sparse) file at <root>/dev/<name>; also what disk images are."""

    def __init__(self, host: Host, path: str) -> None:
        self.path = path
        try:
            self._file = open(host.path(path), "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise ProbeUnavailable(f"{path}: not in the snapshot {host.root}") from None
        except OSError as err:
            raise ProbeUnavailable(f"{path}: cannot open: {err.strerror or err}") from None

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._file.fileno(), length, offset)

    def close(self) -> None:
        self._file.close()


_READ_SERVER = """
import os, struct, sys
try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
except OSError as err:
    sys.stderr.write(err.strerror or str(err)); sys.exit(1)
inp, out = sys.stdin.buffer, sys.stdout.buffer
while True:
    request = inp.read(16)
    if len(request) < 16:
        break
    offset, length = struct.unpack("<QQ", request)
    try:
        data = os.pread(fd, length, offset)
        out.write(struct.pack("<q", len(data)) + data)
    except OSError as err:
        message = (err.strerror or str(err)).encode()
        out.write(struct.pack("<q", -len(message) - 1) + message)
    out.flush()
"""


class LiveDevice(DeviceReader):
    """Reads served by a child process, so a hung device hangs the child, never the agent."""

    def __init__(self, host: Host, path: str, timeout: float) -> None:
        import sys

        self.path, self._host, self._timeout = path, host, timeout
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-I", "-c", _READ_SERVER, str(host.path(path))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )

    def _take(self, count: int, deadline: float) -> bytes:
        import select
        import time

        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        chunks, got = [], 0
        while got < count:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(remaining, 0))
            if not ready:
                self._kill()
                raise CommandTimeout(f"{self.path}: a read did not finish within {self._timeout:g} s; "
                                     "the device may be hung")
            chunk = os.read(fd, count - got)
            if not chunk:
                assert self._proc.stderr is not None
                self._proc.wait(timeout=REAP_GRACE)
                reason = self._proc.stderr.read().decode(errors="replace").strip() or "reader exited"
                self._proc = None
                raise ProbeUnavailable(f"{self.path}: cannot read: {reason}")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def read(self, offset: int, length: int) -> bytes:
        import struct
        import time

        if self._proc is None:
            raise ProbeUnavailable(f"{self.path}: reader is gone after an earlier failure")
        assert self._proc.stdin is not None
        deadline = time.monotonic() + self._timeout
        try:
            self._proc.stdin.write(struct.pack("<QQ", offset, length))
            self._proc.stdin.flush()
        except BrokenPipeError:
            self._take(1, deadline)  # raises with the child's reason
        (size,) = struct.unpack("<q", self._take(8, deadline))
        if size < 0:
            message = self._take(-size - 1, deadline).decode(errors="replace")
            raise ProbeUnavailable(f"{self.path}: read at byte {offset}: {message}")
        data = self._take(size, deadline)
        self._host._record_range(self.path, offset, data)
        return data

    def _kill(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=REAP_GRACE)  # a child in D state is left behind, not waited for
            self._proc = None

    def close(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                assert self._proc.stdin is not None
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=REAP_GRACE)
            except subprocess.TimeoutExpired:
                self._kill()
            self._proc = None
