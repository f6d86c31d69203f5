"""hostagent/maintenance/faults.py: a test's pause point holds the process while its marker exists, and
lets it go on once the test removes the marker (a pause of fixed length raced the test on a loaded
machine: the Xen killed story's kill came after the pause had run out, and the worker rebooted)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CODE = "from hostagent.maintenance import faults\nfaults.point('before-reboot')\nprint('went on', flush=True)\n"


def test_the_pause_holds_while_its_marker_exists_and_ends_when_it_is_removed(tmp_path: Path) -> None:
    env = {**os.environ, "HOSTAGENT_TEST_PAUSE": "before-reboot", "HOSTAGENT_TEST_PAUSE_DIR": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-I", "-c", CODE], env=env, cwd=REPO, stdout=subprocess.PIPE,
                               text=True)
    try:
        marker = tmp_path / "before-reboot"
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the point was never reached"
            time.sleep(0.05)
        assert marker.read_text().strip() == str(process.pid)
        time.sleep(1)  # held: not ended by itself in the meantime
        assert process.poll() is None
        marker.unlink()
        out, _ = process.communicate(timeout=60)  # a generous bound for the 0.2 s step, not a timing claim
        assert process.returncode == 0 and out == "went on\n"
    finally:
        process.kill()
        process.wait()


def test_without_the_variable_a_point_does_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSTAGENT_TEST_PAUSE")}
    done = subprocess.run([sys.executable, "-I", "-c", CODE], env={**env, "HOSTAGENT_TEST_PAUSE_DIR": str(tmp_path)},
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout == "went on\n" and list(tmp_path.iterdir()) == []
