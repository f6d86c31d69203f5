"""A check that examined nothing says so, in text, JSON and Prometheus, and never reads as healthy."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.test_cli import hostagent
from tests.snapshots import HostSnapshot

RAID1 = ("Personalities : [raid1]\nmd0 : active raid1 sdb1[1] sda1[0]\n"
         "      1046528 blocks super 1.2 [2/2] [UU]\n\nunused devices: <none>\n")


def test_a_host_with_nothing_to_check_is_not_a_clean_bill_of_health(tmp_path: Path) -> None:
    snap = HostSnapshot(tmp_path / "root")
    snap.mdstat("Personalities : \nunused devices: <none>\n")
    text = hostagent("check", "--root", str(snap.root)).stdout
    assert "nothing to check: no arrays, disks or interfaces were found" in text and "no problems found" not in text
    assert "smart nothing to check (0 disks)" in text and "md nothing to check (0 arrays)" in text
    report = json.loads(hostagent("check", "--root", str(snap.root), "--json").stdout)
    smart = next(c for c in report["checks"] if c["name"] == "smart")
    assert (smart["items"], smart["unit"], smart["summary"]) == (0, "disks", "nothing to check (0 disks)")
    prom = tmp_path / "check.prom"
    hostagent("check", "--root", str(snap.root), "--prom", str(prom))
    assert 'hostagent_check_items{check="smart",unit="disks"} 0' in prom.read_text()


def test_a_check_that_examined_something_says_how_much(tmp_path: Path) -> None:
    snap = HostSnapshot(tmp_path / "root")
    snap.mdstat(RAID1)
    text = hostagent("check", "--root", str(snap.root), "--only", "md").stdout
    assert "no problems found (1 md array(s))" in text and "md ok (1 array)" in text
    prom = tmp_path / "check.prom"
    hostagent("check", "--root", str(snap.root), "--only", "md", "--prom", str(prom))
    assert 'hostagent_check_items{check="md",unit="arrays"} 1' in prom.read_text()


def test_boot_repair_disk_tune_and_disk_status_with_nothing_to_look_at(tmp_path: Path) -> None:
    snap = HostSnapshot(tmp_path / "root")
    snap.mdstat(RAID1)
    repair = hostagent("boot", "repair", "--root", str(snap.root))
    assert repair.returncode == 0
    assert repair.stdout.startswith("nothing to check (0 boot arrays): no md array holds /, /boot or /boot/efi")
    assert "every member disk of the boot arrays can boot" not in repair.stdout
    as_json = json.loads(hostagent("boot", "repair", "--root", str(snap.root), "--json").stdout)
    assert as_json["examined"] == {"items": 0, "unit": "boot arrays"}
    tune = hostagent("disk", "tune", "--root", str(snap.root)).stdout
    assert tune.startswith("nothing to check (0 disks): no ATA or SAS disk holds a member")
    status = hostagent("disk", "status", "--root", str(snap.root))
    assert status.returncode == 0 and status.stdout == "no disks found (0 disks): nothing to check\n"
