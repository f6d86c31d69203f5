"""The VM's command server: a command that hangs on I/O answers with what explains the hang."""

from __future__ import annotations

import re

import pytest

from tests.vm.harness import VM

pytestmark = pytest.mark.vm


def test_a_command_hung_on_io_reports_its_output_and_the_blocked_tasks() -> None:
    machine = VM(disks=1)
    try:
        machine.break_writes(0)  # QEMU holds the write: dd sleeps in D state until resumed
        hung = machine.run("echo started; dd if=/dev/zero of=/dev/vda bs=4k count=1 oflag=direct", timeout=5,
                           check=False)
        assert hung.rc == 124
        assert hung.stdout == "started\n"  # the output so far is kept
        assert "[timed out after 5 s]" in hung.stderr
        assert re.search(r"^pid \d+ dd in D state:$", hung.stderr, re.M), hung.stderr
        assert "blk" in hung.stderr.split("dd in D state:", 1)[1].split("\n\n", 1)[0], hung.stderr  # its kernel stack
        assert "kernel log:" in hung.stderr
        machine.resume_writes()
        assert machine.run("echo alive").stdout == "alive\n"  # the server answers the next request
    finally:
        machine.close()
