"""What a check gets to work with: the host, its lazily loaded inventory and the clock."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hostagent.host import Host
from hostagent.inventory import Inventory


@dataclass
class CheckContext:
    host: Host
    inventory: Inventory
    now: float = field(default_factory=time.time)

    @classmethod
    def for_host(cls, host: Host) -> CheckContext:
        return cls(host=host, inventory=Inventory(host))
