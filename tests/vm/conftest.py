"""Fixtures for the VM suite: one VM per test module, arrays torn down after every test."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.vm.harness import VM


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# SIGTERM (a CI timeout, kill) unwinds like Ctrl-C, so fixtures still stop QEMU.
signal.signal(signal.SIGTERM, _interrupt)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/vm/" in str(item.path):
            item.add_marker(pytest.mark.vm)


@pytest.fixture(scope="module")
def vm() -> Iterator[VM]:
    machine = VM(disks=4, disk_mib=64)
    try:
        yield machine
    finally:
        machine.close()


TEARDOWN = (
    "[ -f /tmp/agent.pid ] && kill $(cat /tmp/agent.pid) 2>/dev/null; rm -f /etc/hostagent/hostagent.toml; "
    "for m in $(dmsetup ls 2>/dev/null | cut -f1); do dmsetup resume $m 2>/dev/null; done; "
    "mdadm --stop --scan >/dev/null 2>&1; dmsetup remove_all >/dev/null 2>&1; "
    "echo 200000 > /proc/sys/dev/raid/speed_limit_max; echo 1000 > /proc/sys/dev/raid/speed_limit_min; "
    "for d in /dev/vd?; do dd if=/dev/zero of=$d bs=1M count=2 2>/dev/null; done; rm -rf /tmp/*; true"
)


@pytest.fixture
def md(vm: VM) -> Iterator[MdHelper]:
    with md_session(vm) as helper:
        yield helper


@contextlib.contextmanager
def md_session(vm: VM) -> Iterator[MdHelper]:
    """A clean slate of arrays and dm devices before, and torn down after, whatever happens."""
    vm.resume_writes()
    vm.run(TEARDOWN, timeout=120)
    try:
        yield MdHelper(vm)
    finally:
        vm.resume_writes()
        vm.run(TEARDOWN, timeout=120)


AGENT_LOOP = """#!/bin/sh
# hostagent check with remedies on, once a second: what `hostagent watch` does for hung disks.
while :; do
  python3 -m hostagent check --act --only md,hung --state-dir /tmp/state --json > /tmp/out.tmp 2>/tmp/agent.err
  grep -q '"disk.hung' /tmp/out.tmp && cp /tmp/out.tmp /tmp/hung.json
  mv /tmp/out.tmp /tmp/out.json
  sleep 1
done
"""


class MdHelper:
    """Arrays on dm-linear members over the VM's disks, so a test can hang or fail a member."""

    def __init__(self, vm: VM) -> None:
        self.vm = vm

    def members(self, count: int) -> list[str]:
        names = []
        for i in range(count):
            disk = f"/dev/vd{chr(97 + i)}"
            self.vm.run(f'dmsetup create m{i} --table "0 $(blockdev --getsz {disk}) linear {disk} 0"')
            names.append(f"/dev/mapper/m{i}")
        return names

    def kernel_name(self, member: str) -> str:
        name = member.rsplit("/", 1)[-1]
        return self.vm.run(f"dmsetup info -c -o blkdevname --noheadings {name}").stdout.strip()

    def create(self, level: str, members: list[str], name: str = "md0") -> None:
        self.vm.run(f"mdadm --create /dev/{name} --run --level={level} --raid-devices={len(members)} "
                    f"--metadata=1.2 --assume-clean --bitmap=internal {' '.join(members)}")

    def report(self) -> dict[str, Any]:
        result = self.vm.hostagent("check --json --only md")
        assert result.rc in (0, 1, 2), result
        report: dict[str, Any] = json.loads(result.stdout)
        return report

    def findings(self) -> list[tuple[str, str, str]]:
        return [(f["code"], f["subject"], f["severity"]) for f in self.report()["findings"]]

    def hang(self, index: int) -> None:
        """Suspend dm member m<index>: its I/O queues forever, invisible to the counters."""
        self.vm.run(f"dmsetup suspend --noflush m{index}")

    def error_out(self, index: int) -> None:
        """Swap member m<index> to an error table: queued and new I/O fails with EIO."""
        disk = f"/dev/vd{chr(97 + index)}"
        self.vm.run(f"dmsetup suspend --noflush m{index} 2>/dev/null; "
                    f'dmsetup load m{index} --table "0 $(blockdev --getsz {disk}) error" && dmsetup resume m{index}')

    def restore(self, index: int) -> None:
        """Back to the linear table over the member's disk."""
        disk = f"/dev/vd{chr(97 + index)}"
        self.vm.run(f'dmsetup load m{index} --table "0 $(blockdev --getsz {disk}) linear {disk} 0" '
                    f"&& dmsetup resume m{index}")

    def start_agent(self, hung_after: int = 10, command_timeout: int = 10) -> None:
        """Run the agent loop in the background with a short hung_after (the default is 30 s)."""
        config = (f"[agent]\ncommand_timeout = {command_timeout}\n[checks.hung]\nhung_after = {hung_after}\n"
                  "probe_interval = 1\nunblock_after = 3\n")
        self.vm.run(f"mkdir -p /etc/hostagent && cat > /etc/hostagent/hostagent.toml <<'EOF'\n{config}EOF")
        self.vm.run(f"cat > /tmp/agent-loop.sh <<'EOF'\n{AGENT_LOOP}EOF\nchmod +x /tmp/agent-loop.sh")
        self.vm.run("/tmp/agent-loop.sh >/dev/null 2>&1 & echo $! > /tmp/agent.pid")

    def write_in_background(self, marker: str, count: int = 1, offset_kib: int = 0) -> None:
        """One direct, synced write to md0 that records /proc/uptime in ``marker`` when it returns."""
        self.vm.run(f"(dd if=/dev/urandom of=/dev/md0 bs=4k count={count} seek={offset_kib // 4} oflag=direct "
                    f"conv=fsync,notrunc 2>/dev/null; cat /proc/uptime > {marker}) >/dev/null 2>&1 &")

    def done(self, marker: str) -> bool:
        return self.vm.run(f"cat {marker}", check=False).rc == 0

    def hung_report(self) -> dict[str, Any] | None:
        result = self.vm.run("cat /tmp/hung.json", check=False)
        return json.loads(result.stdout) if result.rc == 0 else None

    def audit(self) -> list[dict[str, Any]]:
        text = self.vm.run("cat /tmp/state/audit.jsonl", check=False).stdout
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def mdstat(self) -> str:
        return self.vm.run("cat /proc/mdstat").stdout

    def fail(self, array: str, member: str) -> None:
        self.vm.run(f"mdadm --manage /dev/{array} --fail {member}")
