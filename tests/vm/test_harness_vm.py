"""The VM harness: a command that hangs on I/O answers with what explains the hang, and disks
get their names in slot order."""

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


def test_scsi_disks_are_named_in_address_order_whatever_order_the_kernel_probed_them() -> None:
    machine = VM(disks=0, scsi_specs=[(16, "label: dos\nstart=2048, type=83\n"), (16, None), (16, None)])
    try:
        sd = "/sys/bus/scsi/drivers/sd"
        # Name them as a parallel probe may: target 2 first, then 1, then 0.
        machine.run(f"for t in 0 1 2; do echo 0:0:$t:0 > {sd}/unbind; done; "
                    f"for t in 2 1 0; do echo 0:0:$t:0 > {sd}/bind; done")
        assert [name for _, name in machine._sd_names()] == ["sdc", "sdb", "sda"]
        machine._name_disks_in_slot_order()
        assert machine._sd_names() == [("0:0:0:0", "sda"), ("0:0:1:0", "sdb"), ("0:0:2:0", "sdc")]
        assert machine.run("ls /dev/sda1").rc == 0  # the partitions are back
    finally:
        machine.close()
