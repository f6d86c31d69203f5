"""Probe reads: one aligned O_DIRECT read of a member by ``dd``, in a detached child process.

A read that never completes is how a hang looks when the block counters show nothing
(dm suspend, a stuck flush).  The child is detached and tracked through the state store, so
neither a one-shot check nor the daemon ever waits on it; at most one probe per device is
outstanding, however long a hang lasts.  ``dd`` costs about a millisecond of CPU, where a
Python child cost about 25 ms (bench/bench_hung_cost.py): cheap enough to probe every member
every 2 s.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
from pathlib import Path

from hostagent.host import Host
from hostagent.records import record
from hostagent.state import StateStore

PROBE_BYTES = 4096
RESULT_MAX = 4096  # dd's report is three short lines
_COPIED = re.compile(r"copied, ([0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?) s")  # coreutils "s,", busybox "seconds,"
_ENV = {"LC_ALL": "C", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


@record(frozen=True)
class ProbeStatus:
    outstanding_s: float | None  # how long the current probe has been running, None if none is
    last_ok: bool | None = None
    last_seconds: float | None = None
    last_error: str | None = None


def parse_report(text: str) -> tuple[bool, float | None, str | None]:
    """(ok, seconds, error) from what ``dd`` wrote to stderr for a one-block copy."""
    ok = re.search(r"^1\+0 records in$", text, re.MULTILINE) is not None
    match = _COPIED.search(text)
    seconds = float(match.group(1)) if match else None
    error = None if ok else (text.strip().splitlines() or ["no report"])[0][:200]
    return ok, seconds, error


class Prober:
    def __init__(self, host: Host, state: StateStore, directory: Path, min_interval: float) -> None:
        self.host, self.state, self.directory, self.min_interval = host, state, directory, min_interval

    def poll(self, device: str, now: float) -> ProbeStatus:
        """Collect a finished probe, start a new one when due, and report the outstanding one."""
        key = f"hung.probe.{device}"
        record = self.state.get(key)
        if record is not None and not _well_formed(record):  # not what _start writes: forget it
            self.state.put(key, None)
            record = None
        finished: tuple[bool, float | None, str | None] | None = None
        if record is not None:
            if _alive(record["pid"], record.get("since")):
                return ProbeStatus(now - record["started"])
            result = Path(record["result"])
            try:
                with result.open("rb") as handle:
                    finished = parse_report(handle.read(RESULT_MAX).decode(errors="replace"))
            except OSError as err:
                finished = (False, None, f"probe report {result}: {err.strerror or err}")
            result.unlink(missing_ok=True)
            self.state.put(key, None)
            self.state.put(f"hung.probe_done.{device}", now)
        done_at = self.state.get(f"hung.probe_done.{device}")
        if not isinstance(done_at, int | float) or now - done_at >= self.min_interval:
            self._start(device, key, now)
        if finished is None:
            return ProbeStatus(None)
        ok, seconds, error = finished
        return ProbeStatus(None, ok, seconds, error)

    def _start(self, device: str, key: str, now: float) -> None:
        sectors = (self.host.read_optional(f"/sys/class/block/{device}/size") or "0").strip()
        blocks = max(int(sectors) * 512 // PROBE_BYTES if sectors.isdigit() else 1, 1)
        block = random.randrange(blocks)  # a varying offset defeats caches in front
        self.directory.mkdir(parents=True, exist_ok=True)
        result = self.directory / f"{device}.{int(now * 1000)}.{os.getpid()}.out"
        with result.open("wb") as report:
            proc = subprocess.Popen(
                ["dd", f"if={self.host.path(f'/dev/{device}')}", "of=/dev/null", f"bs={PROBE_BYTES}", "count=1",
                 f"skip={block}", "iflag=direct"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=report, env=_ENV,
                start_new_session=True,
            )
        self.state.put(key, {"pid": proc.pid, "since": _start_time(proc.pid), "started": now, "result": str(result)})
        _CHILDREN[proc.pid] = proc  # a long-running agent reaps it in _alive; a one-shot check leaves it


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _well_formed(record: object) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("pid"), int) and record["pid"] > 0
            and isinstance(record.get("started"), int | float) and isinstance(record.get("result"), str)
            and isinstance(record.get("since"), str | None))


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read(4096).rsplit(")", 1)[-1].split()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22): with the pid, it names one process."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _alive(pid: int, since: str | None) -> bool:
    """Whether the probe process still runs (a probe started by an earlier run is not our child,
    and its pid may since name another process)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    fields = _stat_fields(pid)
    if not fields or fields[0] == "Z":
        return False
    return since is None or (len(fields) > 19 and fields[19] == since)
