"""SMART, ERC and `disk tune --apply` against real ATA disks (QEMU AHCI) under Debian's kernel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import wait_for
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


SELFTEST_CONFIG = ('[agent]\nrpc_socket = ""\n[alerts]\nenabled = false\n'
                   '[checks.smart]\nselftest_schedule = "S/../.././.."\nselftest_interval = 1\n')


def selftest_events(vm: VM) -> list[tuple[str, str]]:
    text = vm.run("cat /tmp/selftest/audit.jsonl 2>/dev/null", check=False).stdout
    return [(r["event"], r["disk"]) for r in map(json.loads, text.splitlines()) if r["event"].startswith("selftest")]


def selftest_log(vm: VM, disk: str) -> tuple[int, str | None, bool | None]:
    """The drive's own self-test log: how many entries, and the newest one's type and verdict."""
    log = json.loads(vm.run(f"smartctl --json -l selftest /dev/{disk}", check=False).stdout)
    standard = log["ata_smart_self_test_log"]["standard"]
    newest = (standard.get("table") or [{}])[0]
    return standard.get("count", 0), newest.get("type", {}).get("string"), newest.get("status", {}).get("passed")


def test_the_daemon_runs_self_tests_on_the_ahci_disks_one_member_at_a_time(ata_vm: VM) -> None:
    """An hourly short test (smartd's S/../.././..) on md0's two AHCI disks: QEMU's drives pass a
    self-test at once, so the order of the audit records shows sdb waiting for sda's test to end."""
    counts = {disk: selftest_log(ata_vm, disk)[0] for disk in ("sda", "sdb")}
    ata_vm.run(f"cat > /tmp/selftest.toml <<'EOF'\n{SELFTEST_CONFIG}EOF")
    start = ("python3 -m hostagent --config /tmp/selftest.toml watch --state-dir /tmp/selftest "
             ">/dev/null 2>>/tmp/selftest.err & echo $! > /tmp/selftest.pid")
    ata_vm.run(start)
    wait_for(lambda: selftest_events(ata_vm).count(("selftest-done", "sdb")) == 1, "both self-tests to end", 120)
    assert selftest_events(ata_vm) == [("selftest-start", "sda"), ("selftest-done", "sda"),
                                       ("selftest-start", "sdb"), ("selftest-done", "sdb")]
    for disk in ("sda", "sdb"):  # the drives' own logs
        assert selftest_log(ata_vm, disk) == (counts[disk] + 1, "Short offline", True)
    # the result reached the smart check, which the end of a test runs: a passed test is no finding
    assert not [f for f in check(ata_vm)["findings"] if f["code"] == "smart.selftest_failed"]

    # restarted within the hour: its tests are done, nothing starts again
    ata_vm.run("kill $(cat /tmp/selftest.pid)")  # its parent is the VM's init, which does not reap: wait for its word
    wait_for(lambda: "hostagent watch stopped" in ata_vm.run("cat /tmp/selftest.err").stdout, "the daemon to stop", 60)
    restarted = float(ata_vm.run("date +%s").stdout)
    ata_vm.run(start)
    checked = ("python3 -c \"from hostagent.state import StateStore; "
               "print(StateStore('/tmp/selftest').get('selftest')['checked'])\"")
    wait_for(lambda: float(ata_vm.run(checked).stdout) > restarted + 2, "two looks after the restart", 120)
    ata_vm.run("kill $(cat /tmp/selftest.pid)")
    assert len(selftest_events(ata_vm)) == 4  # nothing started again
    assert "Traceback" not in ata_vm.run("cat /tmp/selftest.err").stdout
