"""libvirt's hook: guest starts refused while this boot's maintenance saves its guests or reboots (I1).

libvirtd runs ``/etc/libvirt/hooks/qemu.d/hostagent`` (and ``libxl.d`` for its Xen driver) for every
operation on every domain; the script the Ansible role installs passes only ``prepare begin``, the
step before any start (a fresh boot, a restore from a save image, an incoming migration), to
``hostagent libvirt-hook``, and turns its REFUSED status into the exit 1 that aborts the start (any
other status lets the start through); libvirt hands our message on to whoever asked (a customer's
panel, virsh).

The refusal holds while a maintenance of this boot (the boot id the journal recorded when the saves
began, and again with the reboot command) is in ``saving`` or ``rebooting``: those are the phases in
which a guest that starts would go down with the host. It needs a worker holding the maintenance
(one left behind by a dead worker refuses nothing), except in the ``reboot_wait`` after the reboot
command: the worker exits once ``systemctl reboot`` returns, and the host goes down after. It is a
courtesy that spares the guest that, not the guarantee: the worker's final listing under the lock
(phases.final_listing) saves any guest that started anyway (no hook, an older libvirt, xl, a start
that read the journal an instant before the saves began). So the gate fails open: when it cannot
tell (an unreadable journal, no boot id, a clock it cannot place), it lets the start through and
says why on stderr, which libvirtd logs.

It never calls libvirt (libvirtd waits for the hook: a call back would deadlock) and takes no lock
(the worker holds the maintenance lock through its final listing and the reboot command).

The maintenance's own restores must pass whatever the journal on disk says (I6): a full disk or a
failed audit record leaves it in ``saving`` or ``rebooting`` while the worker restores from memory.
So the worker holds a beacon while it restores (``restoring``): a listening socket in the abstract
namespace, which needs no disk, and which the kernel takes away with the worker.  The hook lets every
start through while the beacon of the maintenance it would refuse for is up.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from hostagent.maintenance.journal import Journal, JournalStore
from hostagent.maintenance.when import TimeRangeError, checked_time
from hostagent.rpc import shown

GATED = ("prepare", "begin")  # libvirt's qemu and libxl hooks: the step before every start
# the exit status that refuses: distinct from 1, which a Python that cannot even start returns, so the
# role's hook script can let every other status through (a broken install must not stop every start)
REFUSED = 10
STAT = "/proc/stat"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
LOCKS = "/proc/locks"
READ_LIMIT = 1 << 20
DEFAULT_REBOOT_WAIT = 900.0  # maintenance.reboot_wait's default, when the configuration cannot be read


def beacon(journal_id: str) -> bytes:
    """The abstract socket address of maintenance ``journal_id``'s restore (Linux: no file, no disk)."""
    return b"\0hostagent-maintenance-restoring-" + journal_id.encode("ascii", "replace")


@contextlib.contextmanager
def restoring(journal_id: str) -> Iterator[None]:
    """Held while the worker brings guests back: the hook lets starts through meanwhile.  Best effort: a
    beacon that cannot be raised (another restore of the same maintenance holds it) changes nothing else.
    A thread answers each knock (accept, close), so the queue never fills."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            sock.bind(beacon(journal_id))
            sock.listen(64)
            threading.Thread(target=_answer, args=(sock,), daemon=True).start()
        yield
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # ends the thread's accept
        sock.close()


def _answer(sock: socket.socket) -> None:
    while True:  # until ``restoring`` shuts the socket down: accept then raises
        try:
            knock, _ = sock.accept()
        except OSError:
            return
        knock.close()


def restore_under_way(journal_id: str) -> bool:
    """Whether the worker of ``journal_id`` is restoring now: its beacon answers, held by root (an abstract
    socket has no file permissions: any local user could bind the name, and only a start would follow)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(2.0)
    try:
        sock.connect(beacon(journal_id))
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                             struct.calcsize("3i")))
    except OSError:
        return False
    finally:
        sock.close()
    return bool(uid == 0)


def worker_holds(store: JournalStore, journal_id: str) -> bool | None:
    """Whether a worker holds maintenance ``journal_id`` (JournalStore.worker's flock), read from
    /proc/locks so that the look takes no lock a starting worker could trip on; None when unknown."""
    try:  # opened, never locked: an flock belongs to the descriptor that took it
        fd = os.open(store.path(journal_id).with_suffix(".worker"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        devices = {(os.major(info.st_dev), os.minor(info.st_dev))} | _superblock_device(fd)
    finally:
        os.close(fd)
    text = _read(LOCKS)
    if text is None:
        return None
    for line in text.splitlines():
        fields = line.split()
        if "->" in fields:  # a waiter's line: "1: -> FLOCK ..."
            continue
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE" \
                and _lock_file(fields[5]) in {(*device, info.st_ino) for device in devices}:
            return True
    return False


def _lock_file(field: str) -> tuple[int, int, int] | None:
    """``MAJ:MIN:INODE`` from /proc/locks (major and minor in hex, the inode in decimal)."""
    try:
        major, minor, inode = field.split(":")
        return int(major, 16), int(minor, 16), int(inode)
    except ValueError:
        return None


def _superblock_device(fd: int) -> set[tuple[int, int]]:
    """The device of the file system's superblock, which /proc/locks names: on btrfs ``st_dev`` is each
    subvolume's own anonymous device, never the superblock's (lsof's lock test fails there alike).  Found
    through the descriptor's mount (``mnt_id`` in /proc/self/fdinfo) and that mount's line in
    /proc/self/mountinfo; empty when either cannot be read."""
    fdinfo = _read(f"/proc/self/fdinfo/{fd}")
    mountinfo = _read("/proc/self/mountinfo")
    if fdinfo is None or mountinfo is None:
        return set()
    mount = next((line.split(":", 1)[1].strip() for line in fdinfo.splitlines() if line.startswith("mnt_id:")), None)
    for line in mountinfo.splitlines():
        fields = line.split()
        if mount is not None and len(fields) > 2 and fields[0] == mount:
            major, _, minor = fields[2].partition(":")
            if major.isdigit() and minor.isdigit():
                return {(int(major), int(minor))}
    return set()


def verdict(journal: Journal | None, boot_id: str | None, booted_at: float | None) -> str | None:
    """Why a start must be refused now, or None (pure).  ``boot_id`` and ``booted_at`` (POSIX time)
    describe the running kernel; either may be unknown (None), and an unknown never refuses."""
    if journal is None:
        return None
    if journal.phase == "rebooting":  # the reboot command ran in the boot it names
        if journal.boot_id is None or boot_id is None or journal.boot_id != boot_id:
            return None
    elif journal.phase == "saving" and journal.boot_id is not None:  # the boot the saves began in
        if boot_id is None or journal.boot_id != boot_id:
            return None
    elif journal.phase == "saving":  # a journal from before the boot id was kept: this boot's clock decides
        began = next((at for phase, at in reversed(journal.history) if phase == "saving"), None)
        if began is None or booted_at is None or began < booted_at:
            return None
    else:
        return None
    return (f"hostagent: maintenance {journal.id} is {'saving' if journal.phase == 'saving' else 'rebooting'} "
            f"this host ({shown(journal.reason, 120)}): guests are not started until its guests are restored")


def boot_time(stat_text: str) -> float | None:
    """``btime`` from /proc/stat (seconds since the epoch when the kernel booted), range-checked."""
    for line in stat_text.splitlines():
        key, _, value = line.partition(" ")
        if key == "btime":
            try:
                return checked_time(int(value.strip()), "btime in /proc/stat")
            except (ValueError, TimeRangeError):
                return None
    return None


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(READ_LIMIT).decode("ascii", "replace")
    except OSError:
        return None


def decide(state_dir: Path, domain: str, operation: str, suboperation: str,
           reboot_wait: float = DEFAULT_REBOOT_WAIT) -> tuple[int, str | None]:
    """The hook's exit status and what it says on stderr.  Never raises: an error lets the start through.
    ``reboot_wait``: maintenance.reboot_wait, how long after the reboot command the host may take to go down."""
    if (operation, suboperation) != GATED:
        return 0, None
    try:
        return _decide(state_dir, domain, reboot_wait)
    except Exception as err:  # the gate fails open, whatever the cause
        return 0, f"hostagent: the start gate failed ({type(err).__name__}); {shown(domain, 80)} may start"


def going_down(journal: Journal, now: float, reboot_wait: float) -> bool:
    """Whether ``journal``'s reboot command was given less than ``reboot_wait`` ago (pure): the worker exits
    once the command returns (``systemctl reboot`` only queues the shutdown), and a guest that starts while
    the host goes down goes down with it, unsaved.  A clock that went back, or a time in the future, is not
    placed: no refusal."""
    issued = journal.reboot_issued
    return journal.phase == "rebooting" and issued is not None and 0 <= now - issued <= reboot_wait


def _decide(state_dir: Path, domain: str, reboot_wait: float) -> tuple[int, str | None]:
    try:
        store = JournalStore(state_dir / "maintenance")
        journals, unreadable = store.scan()
    except Exception as err:  # the gate fails open, whatever the cause
        return 0, f"hostagent: cannot read the maintenance journals ({type(err).__name__}: {shown(str(err))}); " \
                  f"{shown(domain, 80)} may start"
    pending = [j for j in journals if not j.final]
    booted = _read(STAT)
    boot_id = _read(BOOT_ID)
    reason = verdict(pending[0] if pending else None, boot_id.strip() if boot_id else None,
                     boot_time(booted) if booted else None)
    if reason is not None and restore_under_way(pending[0].id):
        return 0, None  # the maintenance's own restores, whatever its journal on disk says
    if reason is not None and not worker_holds(store, pending[0].id) \
            and not going_down(pending[0], time.time(), reboot_wait):  # stuck, or unknown: no refusal
        return 0, (f"hostagent: maintenance {pending[0].id} says {pending[0].phase}, but no worker runs it; "
                   f"{shown(domain, 80)} may start")
    if reason is not None:
        return REFUSED, f"{reason}: {shown(domain, 80)} refused"
    if unreadable:
        return 0, (f"hostagent: {len(unreadable)} maintenance journal(s) unreadable; "
                   f"{shown(domain, 80)} may start")
    return 0, None


def main(state_dir: Path, domain: str, operation: str, suboperation: str,
         reboot_wait: float = DEFAULT_REBOOT_WAIT) -> int:
    status, said = decide(state_dir, domain, operation, suboperation, reboot_wait)
    if status:
        from hostagent.actions import AuditLog

        try:  # I6: the verdict stands whether or not it could be written down
            AuditLog(state_dir).record({"event": "start_refused", "guest": shown(domain, 80), "reason": said})
        except Exception as err:  # an audit that fails changes no verdict
            said = f"{said} (not in the audit log: {type(err).__name__})"
    if said:
        print(said, file=sys.stderr)
    return status
