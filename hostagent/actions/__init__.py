"""Everything that changes the system.  Each step is a value (what, why, exact argv), runs in
a child process with a timeout, is recorded in the audit log, and is a dry run unless
``apply`` is set.  Nothing is ever applied to a snapshot.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostagent.errors import ActionRefused, HostagentError
from hostagent.host import Host

AUDIT_FILE = "audit.jsonl"


@dataclass(frozen=True)
class Step:
    action: str  # e.g. "disk.tune"
    subject: str  # e.g. "sda"
    what: str
    argv: tuple[str, ...]
    stdin: str | None = None  # the command's input, e.g. a partition table for sfdisk


@dataclass(frozen=True)
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


class AuditLog:
    """Append-only JSON lines: who did what, when, with which command and outcome."""

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.path = Path(directory) / AUDIT_FILE if directory is not None else None

    def record(self, event: dict[str, Any]) -> None:
        if self.path is None:
            return
        entry = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                 "actor": _actor(), **event}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self.path.open("a+b") as handle:
                line = json.dumps(entry).encode() + b"\n"
                if handle.seek(0, os.SEEK_END) > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":  # a line torn by a crash: ours starts on a line of its own
                        line = b"\n" + line
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            raise HostagentError(f"audit log {self.path}: {err.strerror or err}; nothing was changed") from None


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
