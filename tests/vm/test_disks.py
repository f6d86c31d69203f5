"""SMART, ERC and `disk tune --apply` against real ATA disks (QEMU AHCI) under Debian's kernel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.vm.harness import VM


@pytest.fixture(scope="module")
def ata_vm() -> Iterator[VM]:
    machine = VM(disks=0, sata_disks=2)
    try:
        machine.run("mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 --assume-clean "
                    "/dev/sda /dev/sdb")
        yield machine
    finally:
        machine.close()


def check(vm: VM, *args: str) -> dict[str, Any]:
    result = vm.hostagent("check --json --state-dir /tmp/state " + " ".join(args))
    assert result.rc in (0, 1, 2), result
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_ata_disks_are_inventoried_with_their_array(ata_vm: VM) -> None:
    report = check(ata_vm)
    disks = {d["name"]: d for d in report["inventory"]["disks"]}
    assert disks["sda"]["transport"] == "ata" and disks["sda"]["model"] == "QEMU-SATA-0"
    assert disks["sda"]["arrays"] == ["md0:sda"] and disks["sdb"]["arrays"] == ["md0:sdb"]
    smart_check = next(c for c in report["checks"] if c["name"] == "smart")
    assert smart_check["error"] is None
    assert not [f for f in report["findings"] if f["check"] == "smart" and f["severity"] in ("UNKNOWN", "CRITICAL")]


def test_timeout_mismatch_then_tune_apply_fixes_it(ata_vm: VM) -> None:
    report = check(ata_vm)
    mismatched = sorted(f["subject"] for f in report["findings"] if f["code"] == "disk.timeout_mismatch")
    assert mismatched == ["sda", "sdb"]
    dry = ata_vm.hostagent("disk tune --state-dir /tmp/state")
    assert dry.rc == 0 and "$ sysfs-write /sys/block/sda/device/timeout 180" in dry.stdout
    assert ata_vm.run("cat /sys/block/sda/device/timeout").stdout.strip() == "30"  # a dry run changes nothing

    applied = ata_vm.hostagent("disk tune --apply --json --state-dir /tmp/state")
    assert applied.rc == 0, applied
    outcome = json.loads(applied.stdout)
    assert [(s["subject"], s["applied"], s["returncode"]) for s in outcome["steps"]] == [
        ("sda", True, 0), ("sdb", True, 0)]
    assert outcome["remaining"] == []
    assert ata_vm.run("cat /sys/block/sda/device/timeout /sys/block/sdb/device/timeout").stdout.split() == [
        "180", "180"]
    assert not [f for f in check(ata_vm)["findings"] if f["code"] == "disk.timeout_mismatch"]
    audit = [json.loads(line) for line in ata_vm.run("cat /tmp/state/audit.jsonl").stdout.splitlines()]
    assert [(a["event"], a["subject"]) for a in audit] == [("start", "sda"), ("done", "sda"),
                                                           ("start", "sdb"), ("done", "sdb")]
    assert all("(uid 0)" in a["actor"] for a in audit)


def test_disk_status_in_the_vm(ata_vm: VM) -> None:
    rows = {r["disk"]: r for r in json.loads(ata_vm.hostagent("disk status --json --state-dir /tmp/state").stdout)}
    assert rows["sda"]["arrays"] == ["md0:sda (in_sync)"]
    assert rows["sda"]["serial"] == "SATA0"
