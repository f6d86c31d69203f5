"""Persistent files that survive crashes, full disks and concurrent writers.

- ``write_durable``: a unique temporary name in the same directory, fsync'd, renamed over the
  target, and the directory fsync'd; on any error the temporary file is removed.
- ``exclusive``: an ``flock`` on a lock file, waited for with a deadline (a writer that hangs
  cannot hang every other one).
- ``read_bounded``: a regular file read with a size cap (a FIFO or ``/dev/zero`` never hangs the
  reader or fills its memory).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from hostagent.errors import HostagentError

LOCK_WAIT = 30.0


class LockTimeout(HostagentError):
    """Another process held the lock past the deadline."""


def write_durable(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably; raises OSError, leaving no temporary file."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(lock_path: Path, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing) for the block."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            if time.monotonic() > deadline:
                raise LockTimeout(f"{lock_path}: held by another process for over {wait:g} s")
            time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def read_bounded(path: Path, limit: int, follow: bool = False) -> bytes:
    """A regular file's bytes, refusing anything else and anything over ``limit`` bytes (OSError or
    ValueError).  O_NONBLOCK: opening a FIFO never waits for a writer.  ``follow``: the last path
    component may be a symlink (sysfs), as long as it leads to a regular file."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise ValueError(f"larger than {limit} bytes")
            chunks.append(chunk)
    finally:
        os.close(fd)
