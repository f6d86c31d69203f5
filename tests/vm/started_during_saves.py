"""A maintenance on real QEMU guests whose first save starts another guest, in a child process.

``python -m tests.vm.started_during_saves ROOT STATE NAME``: the embedded driver may be held by one
process at a time, so the run (``run.run_now``) and the restore (``run.resume_after_boot``) happen
here, with a backend whose first save defines and starts guest NAME (as a customer's panel would)
and waits for it to print.  The reboot command records which guests run at that moment; the host
does not go down.  The last line printed is JSON: the journal and that list.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from hostagent.config import MaintenanceConfig
from hostagent.hypervisor.libvirt_backend import LibvirtHypervisor
from hostagent.maintenance.journal import Journal, JournalStore
from hostagent.maintenance.preflight import Preflight, plan
from hostagent.maintenance.run import resume_after_boot, run_now
from tests import guests


class StartsOne(LibvirtHypervisor):
    def __init__(self, uri: str, root: Path, name: str) -> None:
        super().__init__(uri)
        self.root, self.newcomer = root, name

    def save(self, name: str, image: str) -> str:
        if self.newcomer:
            newcomer, self.newcomer = self.newcomer, ""
            console = self.root / "consoles" / f"{newcomer}.log"
            self._conn.defineXML(guests.domain_xml(newcomer, 128, console, self.root / "initrd.gz")).create()
            deadline = time.monotonic() + 120
            while not guests.uptimes(console) and time.monotonic() < deadline:
                time.sleep(0.5)
        return super().save(name, image)


def main() -> None:
    root, state, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    hypervisor = StartsOne(guests.uri(root), root, name)
    config = MaintenanceConfig(uri=guests.uri(root), save_dir=str(root / "lib/qemu/save"), concurrency=1)
    store = JournalStore(state / "maintenance")
    running = sorted(g.name for g in hypervisor.guests() if g.running)
    journal = store.create(Journal.new(time.time(), "started during the saves", running))
    at_reboot: list[list[str]] = []

    def reboot() -> None:
        at_reboot.append(sorted(g.name for g in hypervisor.guests() if g.running))

    def preflight() -> Preflight:
        return Preflight(guests=tuple(plan(g) for g in hypervisor.guests()))

    run_now(store, journal, hypervisor, preflight, config, reboot)
    resume_after_boot(store, hypervisor, config)
    print(json.dumps({"journal": store.load(journal.id).to_json(), "at_reboot": at_reboot}), flush=True)
    os._exit(0)  # libvirt's embedded driver: no clean-up at exit


if __name__ == "__main__":
    main()
