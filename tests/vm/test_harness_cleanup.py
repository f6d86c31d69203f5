"""Killing a VM test mid-run leaves no QEMU process and no run directory behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.vm.harness import remove_stale_runs


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_killed_test_leaves_nothing_behind(tmp_path: Path, sig: signal.Signals) -> None:
    marker = tmp_path / "marker.json"
    output = (tmp_path / "child.log").open("w")  # a file, not a pipe nobody reads: the child never blocks on it
    child = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/vm/probe_sleeper.py"],
        cwd=REPO, env={**os.environ, "HOSTAGENT_PROBE_MARKER": str(marker)},
        stdout=output, stderr=subprocess.STDOUT,
        # a shell's background job inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert _wait(marker.exists, 180), "the probe VM never came up"
        probe = json.loads(marker.read_text())
        run_dir, qemu = Path(probe["run_dir"]), probe["qemu_pid"]
        assert _alive(qemu) and run_dir.exists()
        child.send_signal(sig)
        try:
            child.wait(timeout=120)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the child pytest did not end after {sig.name}; its output:\n"
                                 + (tmp_path / "child.log").read_text()[-3000:]) from None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        output.close()
    assert _wait(lambda: not _alive(qemu), 30), f"QEMU {qemu} survived {sig.name}"
    if sig is signal.SIGKILL:
        # a killed pytest cannot clean up; the next harness start removes what it left
        remove_stale_runs()
    assert not run_dir.exists(), f"{run_dir} left behind after {sig.name}"
