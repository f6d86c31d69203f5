"""Fault points that only tests turn on, to kill the daemon or a worker at a known moment.

With ``HOSTAGENT_TEST_PAUSE=<point>`` in its environment, a process that reaches that point writes
``<HOSTAGENT_TEST_PAUSE_DIR>/<point>`` (its pid) and waits there for ``PAUSE`` seconds, long enough
to be killed; without the variable (always, outside tests) a point costs one dictionary look-up.
Points: ``notices-sent`` (daemon), ``preflight``, ``before-reboot`` and ``before-restore`` (worker).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE = 120.0


def point(name: str) -> None:
    if os.environ.get("HOSTAGENT_TEST_PAUSE") != name:
        return
    directory = Path(os.environ.get("HOSTAGENT_TEST_PAUSE_DIR", "/tmp"))
    (directory / name).write_text(f"{os.getpid()}\n")
    time.sleep(PAUSE)
