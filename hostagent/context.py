"""What a check gets to work with: the host, its lazily loaded inventory, state and the clock."""

from __future__ import annotations

import time
from typing import Any

from hostagent.host import Host
from hostagent.inventory import Inventory
from hostagent.records import field, record
from hostagent.state import StateStore

# ctx.volatile[RECHECK]: present only in a daemon that runs checks again on request (hostagent watch,
# not --once); a check that waits for a state to settle puts check -> time.monotonic() deadline in it
RECHECK = "recheck"


@record
class CheckContext:
    host: Host
    inventory: Inventory
    state: StateStore = field(default_factory=lambda: StateStore(None))
    now: float = field(default_factory=time.time)
    examined: dict[str, tuple[int, str]] = field(default_factory=dict)  # check -> (how many, of what)
    # what the daemon keeps in memory from one run to the next, for values that change every
    # second (too often for the state store); None in a one-shot run
    volatile: dict[str, Any] | None = None
    # measured values for perfdata and metrics: check -> subject -> name -> value ("sdb" ->
    # {"temperature_celsius": 38}); names carry their unit
    readings: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def examine(self, check: str, count: int, unit: str) -> None:
        """What a check looked at: 0 reads as "nothing to check", never as a clean bill of health."""
        self.examined[check] = (count, unit)

    def record(self, check: str, subject: str, values: dict[str, float]) -> None:
        """Values measured on ``subject``, reported with the check's result."""
        if values:
            self.readings.setdefault(check, {})[subject] = values

    def recheck_by(self, check: str, deadline: float | None) -> bool:
        """Ask the daemon to run ``check`` again by ``deadline`` (time.monotonic(); None: no need).
        False when nothing will (a one-shot run): the check must then say what it sees now."""
        rechecks = self.volatile.get(RECHECK) if self.volatile is not None else None
        if rechecks is None:
            return False
        if deadline is None:
            rechecks.pop(check, None)
        else:
            rechecks[check] = deadline
        return True

    @classmethod
    def for_host(
        cls, host: Host, state: StateStore | None = None, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()
    ) -> CheckContext:
        return cls(host=host, inventory=Inventory(host, include, exclude), state=state or StateStore(None))
