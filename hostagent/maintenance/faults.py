"""Fault points that only tests turn on, to kill the daemon or a worker at a known moment.

With ``HOSTAGENT_TEST_PAUSE=<point>`` in its environment, a process that reaches that point writes
``<HOSTAGENT_TEST_PAUSE_DIR>/<point>`` (its pid) and waits there while that file exists, at most
``PAUSE`` seconds: the test kills it there, or removes the file to let it go on.  A wait of fixed
length raced the test on a loaded machine (a pause of 120 s ran out before the test's kill landed, and
the process went on to reboot); without the variable (always, outside tests) a point costs one
dictionary look-up.
Points: ``notices-sent`` (daemon), ``preflight``, ``before-reboot`` and ``before-restore`` (worker).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE = 3600.0
STEP = 0.2


def point(name: str) -> None:
    if os.environ.get("HOSTAGENT_TEST_PAUSE") != name:
        return
    marker = Path(os.environ.get("HOSTAGENT_TEST_PAUSE_DIR", "/tmp")) / name
    marker.write_text(f"{os.getpid()}\n")
    deadline = time.monotonic() + PAUSE
    while marker.exists() and time.monotonic() < deadline:
        time.sleep(STEP)
