"""Faults injected into a real hostagent process (put this directory first on PYTHONPATH).

HOSTAGENT_TEST_FAULTS is a JSON object:
- ``"check_raises": "smart"``: that check's run() raises RuntimeError;
- ``"inventory_fails": N``: the first N inventory reads of the daemon's cycles raise OSError (a part
  of the cycle outside every check);
- ``"spool_fails": N``: the first N alert spool writes fail with ENOSPC;
- ``"kill_after_spool": true``: SIGKILL right after the first message is spooled (before it is sent
  and before the alert state records it).

Debian's own sitecustomize is loaded first, so nothing of the interpreter's setup is lost.
"""

from __future__ import annotations

import json
import os
import runpy
import sys

for directory in sys.path:  # the system's sitecustomize, shadowed by this one
    candidate = os.path.join(directory, "sitecustomize.py")
    if os.path.isfile(candidate) and os.path.dirname(os.path.abspath(candidate)) != os.path.dirname(
            os.path.abspath(__file__)):
        runpy.run_path(candidate)
        break

FAULTS = json.loads(os.environ.get("HOSTAGENT_TEST_FAULTS", "{}"))

if FAULTS.get("check_raises"):
    import checks

    def raising(ctx: object, config: object) -> list[object]:
        raise RuntimeError(f"injected fault in check {FAULTS['check_raises']}")

    checks.BY_NAME[FAULTS["check_raises"]].run = raising

if FAULTS.get("inventory_fails"):
    from hostagent.inventory import Inventory

    remaining = [int(FAULTS["inventory_fails"])]
    real = Inventory.to_json

    def failing(self: Inventory) -> dict[str, object]:
        if remaining[0] > 0:
            remaining[0] -= 1
            raise OSError(5, "injected I/O error reading the inventory")
        return real(self)

    Inventory.to_json = failing  # type: ignore[method-assign]

if FAULTS.get("spool_fails") or FAULTS.get("kill_after_spool"):
    import signal

    from hostagent.alerts.outbox import Entry, Outbox

    failures = [int(FAULTS.get("spool_fails", 0))]
    real_add = Outbox.add

    def add(self: Outbox, entry: Entry) -> bool:
        if failures[0] > 0:
            failures[0] -= 1
            raise OSError(28, "No space left on device (injected)")
        added = real_add(self, entry)
        if FAULTS.get("kill_after_spool"):  # in the outbox and fsync'd, neither sent nor recorded in the state
            os.kill(os.getpid(), signal.SIGKILL)
        return added

    Outbox.add = add  # type: ignore[method-assign]
