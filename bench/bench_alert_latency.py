"""Detection latency: from `mdadm --fail` in the VM to the alert, hostagent against mdadm --monitor.

Run: make bench-alert   (boots Debian's kernel under QEMU with an SMTP sink on host loopback)
hostagent: from just before the fail command to the email accepted by the SMTP server (host clock).
mdadm --monitor (the anchor): from the fail to its --program being called (guest clock), with its
default delay (60 s) and with --delay 1.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aiosmtpd.controller import Controller  # noqa: E402

from tests.integration.test_alerts import Sink, free_port  # noqa: E402
from tests.vm.conftest import md_session  # noqa: E402
from tests.vm.harness import VM  # noqa: E402
from tests.vm.test_watch import start_watch  # noqa: E402

RUNS = 3


class TimedSink(Sink):
    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        result = await super().handle_DATA(server, session, envelope)
        self.messages[-1]["at"] = time.time()
        return result


def hostagent_latency(vm: VM, sink: TimedSink) -> float:
    with md_session(vm) as md:
        members = md.members(2)
        md.create("1", members)
        start_watch(md)
        time.sleep(3)
        before = len(sink.messages)
        start = time.time()
        md.fail("md0", members[1])
        while len(sink.messages) == before:
            time.sleep(0.05)
        return sink.messages[before]["at"] - start


def monitor_latency(vm: VM, delay: int | None) -> float:
    with md_session(vm) as md:
        members = md.members(2)
        md.create("1", members)
        md.vm.run("printf '#!/bin/sh\\ncut -d\" \" -f1 /proc/uptime >> /tmp/told\\n' > /tmp/prog && chmod +x /tmp/prog")
        option = f"--delay {delay}" if delay else ""
        md.vm.run(f"mdadm --monitor /dev/md0 --program /tmp/prog {option} >/dev/null 2>&1 & "
                  "echo $! > /tmp/agent.pid")
        time.sleep(3)
        start = float(md.vm.run(f"cut -d' ' -f1 /proc/uptime; mdadm --manage /dev/md0 --fail {members[1]} "
                                ">/dev/null").stdout.split()[0])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            told = md.vm.run("head -n1 /tmp/told", check=False)
            if told.rc == 0 and told.stdout.strip():
                return float(told.stdout) - start
            time.sleep(0.2)
        return float("inf")


def main() -> None:
    sink = TimedSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        with VM(disks=2, smtp_port=controller.port) as vm:
            rows = {
                "hostagent watch (event-driven), fail to email accepted": [hostagent_latency(vm, sink)
                                                                          for _ in range(RUNS)],
                "mdadm --monitor --delay 1, fail to --program called": [monitor_latency(vm, 1) for _ in range(RUNS)],
                "mdadm --monitor (default delay 60 s), fail to --program called": [monitor_latency(vm, None)],
            }
    finally:
        controller.stop()
    print("| who | median | runs |")
    print("|---|---|---|")
    for who, values in rows.items():
        print(f"| {who} | {statistics.median(values):.2f} s | {', '.join(f'{v:.2f}' for v in values)} |")


if __name__ == "__main__":
    main()
