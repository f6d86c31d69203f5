"""Probe reads: one aligned O_DIRECT read of a member, in a detached child process.

A read that never completes is how a hang looks when the block counters show nothing
(dm suspend, a stuck flush).  The child is detached and tracked through the state store, so
neither a one-shot check nor the daemon ever waits on it; at most one probe per device is
outstanding, however long a hang lasts.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hostagent.host import Host
from hostagent.state import StateStore

PROBE_BYTES = 4096
_PROBE = """
import json, mmap, os, sys, time
device, offset, result = sys.argv[1], int(sys.argv[2]), sys.argv[3]
start = time.monotonic()
try:
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
    buffer = mmap.mmap(-1, 4096)
    os.preadv(fd, [buffer], offset)
    outcome = {"ok": True}
except OSError as err:
    outcome = {"ok": False, "error": err.strerror or str(err)}
outcome["seconds"] = time.monotonic() - start
tmp = result + ".tmp"
with open(tmp, "w") as handle:
    json.dump(outcome, handle)
os.replace(tmp, result)
"""


@dataclass(frozen=True)
class ProbeStatus:
    outstanding_s: float | None  # how long the current probe has been running, None if none is
    last_ok: bool | None = None
    last_seconds: float | None = None
    last_error: str | None = None


class Prober:
    def __init__(self, host: Host, state: StateStore, directory: Path, min_interval: float) -> None:
        self.host, self.state, self.directory, self.min_interval = host, state, directory, min_interval

    def poll(self, device: str, now: float) -> ProbeStatus:
        """Collect a finished probe, start a new one when due, and report the outstanding one."""
        key = f"hung.probe.{device}"
        record = self.state.get(key)
        last: dict[str, object] = {}
        if record is not None:
            result = Path(record["result"])
            if result.exists():
                last = json.loads(result.read_text())
                result.unlink(missing_ok=True)
                self.state.put(key, None)
                self.state.put(f"hung.probe_done.{device}", now)
                record = None
            elif _alive(record["pid"]):
                return ProbeStatus(now - record["started"])
            else:
                self.state.put(key, None)
                record = None
        done_at = self.state.get(f"hung.probe_done.{device}") or 0
        if now - done_at >= self.min_interval:
            self._start(device, key, now)
        ok = last.get("ok")
        seconds = last.get("seconds")
        error = last.get("error")
        return ProbeStatus(None, ok if isinstance(ok, bool) else None,
                           float(seconds) if isinstance(seconds, int | float) else None,
                           str(error) if error else None)

    def _start(self, device: str, key: str, now: float) -> None:
        sectors = (self.host.read_optional(f"/sys/class/block/{device}/size") or "0").strip()
        blocks = max(int(sectors) * 512 // PROBE_BYTES if sectors.isdigit() else 1, 1)
        offset = random.randrange(blocks) * PROBE_BYTES  # a varying offset defeats caches in front
        self.directory.mkdir(parents=True, exist_ok=True)
        result = self.directory / f"{device}.{int(now * 1000)}.json"
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _PROBE, str(self.host.path(f"/dev/{device}")), str(offset), str(result)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.state.put(key, {"pid": proc.pid, "started": now, "result": str(result)})
        _CHILDREN[proc.pid] = proc  # a long-running agent reaps it in _alive; a one-shot check leaves it


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _alive(pid: int) -> bool:
    """Whether the probe process still runs (a probe started by an earlier run is not our child)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"
