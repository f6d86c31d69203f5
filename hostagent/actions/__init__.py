"""Everything that changes the system.  Each step is a value (what, why, exact argv), runs in
a child process with a timeout, is recorded in the audit log, and is a dry run unless
``apply`` is set.  Nothing is ever applied to a snapshot.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import stat
from pathlib import Path
from typing import Any

from hostagent.durable import exclusive, fsync_directory
from hostagent.errors import ActionRefused, HostagentError
from hostagent.host import Host
from hostagent.records import record

AUDIT_FILE = "audit.jsonl"


@record(frozen=True)
class Step:
    action: str  # e.g. "disk.tune"
    subject: str  # e.g. "sda"
    what: str
    argv: tuple[str, ...]
    stdin: str | None = None  # the command's input, e.g. a partition table for sfdisk


@record(frozen=True)
class Outcome:
    step: Step
    applied: bool
    returncode: int | None = None
    output: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.applied or (self.error is None and self.returncode == 0)

    def to_json(self) -> dict[str, Any]:
        return {"action": self.step.action, "subject": self.step.subject, "what": self.step.what,
                "argv": list(self.step.argv), "stdin": self.step.stdin, "applied": self.applied,
                "returncode": self.returncode, "output": self.output, "error": self.error}


AUDIT_MAX_BYTES = 8 << 20
AUDIT_KEEP = 5
MAX_AUDIT_LINE = 1 << 20  # a longer line is torn or not ours: shown as such, never loaded


class AuditLog:
    """Append-only JSON lines: who did what, when, with which command and outcome.

    Every record is appended and fsync'd under a lock shared by all writers (the daemon, the CLI,
    the maintenance worker).  When the file reaches ``max_bytes`` it is rotated first: audit.jsonl
    becomes audit.jsonl.1, and so on, and the oldest beyond ``keep`` is removed.
    """

    def __init__(self, directory: str | os.PathLike[str] | None, max_bytes: int = AUDIT_MAX_BYTES,
                 keep: int = AUDIT_KEEP) -> None:
        self.path = Path(directory) / AUDIT_FILE if directory is not None else None
        self.max_bytes, self.keep = max_bytes, keep

    @classmethod
    def configured(cls, directory: str | os.PathLike[str] | None, agent: Any) -> AuditLog:
        """With the rotation settings of ``[agent]`` (audit_max_bytes, audit_keep)."""
        return cls(directory, agent.audit_max_bytes, agent.audit_keep)

    def record(self, event: dict[str, Any]) -> None:
        if self.path is None:
            return
        entry = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                 "actor": _actor(), **event}
        line = json.dumps(entry, default=str).encode() + b"\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with exclusive(self.path.with_name(AUDIT_FILE + ".lock"), wait=10):
                self._rotate_if_full()
                with self.path.open("a+b") as handle:
                    if handle.seek(0, os.SEEK_END) > 0:
                        handle.seek(-1, os.SEEK_END)
                        if handle.read(1) != b"\n":  # a line torn by a crash: ours starts on a line of its own
                            line = b"\n" + line
                    handle.write(line)
                    handle.flush()
                    os.fsync(handle.fileno())
        except (OSError, HostagentError) as err:
            raise HostagentError(f"audit log {self.path}: {getattr(err, 'strerror', None) or err}; "
                                 "nothing was changed") from None

    def _rotate_if_full(self) -> None:
        assert self.path is not None
        try:
            if self.path.stat().st_size < self.max_bytes:
                return
        except FileNotFoundError:
            return
        for index in range(self.keep, 0, -1):
            older = self.path.with_name(f"{AUDIT_FILE}.{index}")
            if index == self.keep:
                older.unlink(missing_ok=True)
            elif older.exists():
                older.rename(self.path.with_name(f"{AUDIT_FILE}.{index + 1}"))
        if self.keep > 0:
            self.path.rename(self.path.with_name(f"{AUDIT_FILE}.1"))
        else:
            self.path.unlink()
        fsync_directory(self.path.parent)


def read_audit(directory: str | os.PathLike[str], last: int) -> list[tuple[str, dict[str, Any] | None]]:
    """The last ``last`` records, oldest first, across the rotated files: (line, record), with
    ``None`` for a line that is torn, too long or not a JSON object."""
    base = Path(directory) / AUDIT_FILE
    found: list[tuple[str, dict[str, Any] | None]] = []
    files = [base] + [base.with_name(f"{AUDIT_FILE}.{i}") for i in range(1, 100)]
    for path in files:
        if len(found) >= last:
            break
        try:
            data = _tail(path, MAX_AUDIT_LINE * 4 if last > 1000 else MAX_AUDIT_LINE + last * 4096)
        except FileNotFoundError:
            if path != base:
                break
            continue
        except OSError as err:
            raise HostagentError(f"audit log {path}: {err.strerror or err}") from None
        lines = [line for line in data.decode("utf-8", errors="replace").split("\n") if line.strip()]
        found = [(line, _entry(line)) for line in lines[-(last - len(found)):]] + found
    return found[-last:] if last > 0 else []


def _tail(path: Path, limit: int) -> bytes:
    """At most the last ``limit`` bytes of a regular file (a partial first line is dropped)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        size = os.fstat(fd).st_size
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file")
        start = max(size - limit, 0)
        os.lseek(fd, start, os.SEEK_SET)
        chunks, remaining = [], size - start
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return data.split(b"\n", 1)[1] if start > 0 and b"\n" in data else data


def _entry(line: str) -> dict[str, Any] | None:
    if len(line) > MAX_AUDIT_LINE:
        return None
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return entry if isinstance(entry, dict) else None


def _actor() -> str:
    """Who acts: the account and uid, and the operator behind sudo when there is one."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = "?"
    sudo = os.environ.get("SUDO_USER")
    via = os.environ.get("HOSTAGENT_VIA")  # set by the daemon for a request that came over RPC
    return f"{name} (uid {uid})" + (f" via sudo by {sudo}" if sudo else "") + (f" for {via}" if via else "")


def perform(host: Host, steps: list[Step], *, apply: bool, audit: AuditLog, timeout: float) -> list[Outcome]:
    """Run (or, without ``apply``, only show) the steps in order; stop at the first failure."""
    if apply and host.is_snapshot:
        raise ActionRefused(f"{host.root} is a snapshot: nothing can be applied to it")
    outcomes = []
    for step in steps:
        if not apply:
            outcomes.append(Outcome(step, applied=False))
            continue
        audit.record({"event": "start", **Outcome(step, applied=True).to_json()})
        try:
            result = host.run(step.argv[0], list(step.argv[1:]), name=f"{step.action}-{step.subject}",
                              timeout=timeout, stdin=step.stdin)
            outcome = Outcome(step, True, result.returncode, (result.stdout + result.stderr).strip())
        except HostagentError as err:
            outcome = Outcome(step, True, None, "", str(err))
        audit.record({"event": "done", **outcome.to_json()})
        outcomes.append(outcome)
        if not outcome.ok:
            break
    return outcomes
