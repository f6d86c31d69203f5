"""SMART judgment on real smartctl output, each case changed only where the case needs it (named
in the test): a SMART command that failed without a verdict, CRC errors with link errors in this
power cycle, attributes the drive flags as rates, the ATA error log, and the documented codes
no other test produces (smart.uncorrectable, smart.prefail in the past, scsi.grown_defects)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from tests.integration.test_smart import HGST, SMART, WDRED, codes, mirror, report
from tests.snapshots import HostSnapshot

KINGSTON = SMART / "smartctl_exporter/sat-Phison_Driven_SSDs-KINGSTON_SA400M8120G-sda.json"
CRUCIAL_M4 = SMART / "scrutiny-starosdev/smart-ata-issue587-realssd-m4.json"
SEAGATE = SMART / "smartctl_exporter/ST3500418AS_12.json"
HITACHI_SAS = SMART / "smartctl_exporter/HITACHI_H109060SESUN600G_10.json"


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def attribute(data: dict[str, Any], attr_id: int) -> dict[str, Any]:
    return next(row for row in data["ata_smart_attributes"]["table"] if row["id"] == attr_id)


def check(tmp_path: Path, name: str, sda: dict[str, Any] | Path, state: str | None = None,
          degraded: bool = False) -> tuple[int, dict[str, Any]]:
    snap = HostSnapshot(tmp_path / name)
    mirror(snap, degraded, sda)
    return report("--root", str(snap.root), *(["--state-dir", state] if state else []))


def no_verdict() -> dict[str, Any]:
    """The Kingston's real report (exit status 4: a SMART command failed) as it reads when the
    failed command was SMART RETURN STATUS itself: smartctl then prints no verdict."""
    data = load(KINGSTON)
    assert data["smartctl"]["exit_status"] == 4
    del data["smart_status"]
    return data


def test_a_failed_smart_command_without_a_verdict_is_never_ok(tmp_path: Path) -> None:
    rc, result = check(tmp_path, "member", no_verdict())
    [finding] = [f for f in result["findings"] if f["subject"] == "sda"]
    assert (finding["code"], finding["severity"]) == ("smart.command_failed", "WARNING")  # sda holds md0:sda1
    assert "no health verdict; it holds md0:sda1" in finding["summary"]
    assert rc == 1

    loose = HostSnapshot(tmp_path / "loose")  # the same disk outside any array: UNKNOWN
    loose.disk("sdc", serial="SDC-1", timeout=None)
    loose.scan([("/dev/sdc", "sat")])
    loose.smart("sdc", no_verdict())
    rc, result = report("--root", str(loose.root), "--only", "smart")
    assert codes(result) == [("smart.command_failed", "sdc", "UNKNOWN")] and rc == 3


def test_the_verdict_when_there_is_one_stands(tmp_path: Path) -> None:
    _, result = check(tmp_path, "kingston", KINGSTON)  # exit 4 but PASSED: the failed command was another
    assert not [c for c in codes(result, "smart") if c[0] == "smart.command_failed"]


def with_phy_counters(data: dict[str, Any], icrc: int) -> dict[str, Any]:
    """The Crucial m4's real SATA phy event counters, with ICRC failures set to ``icrc``."""
    data = copy.deepcopy(data)
    counters = copy.deepcopy(load(CRUCIAL_M4)["sata_phy_event_counters"])
    next(row for row in counters["table"] if row["id"] == 1)["value"] = icrc
    data["sata_phy_event_counters"] = counters
    return data


def test_crc_errors_with_link_errors_this_power_cycle_warn_on_first_sight(tmp_path: Path) -> None:
    rc, result = check(tmp_path, "evidence", with_phy_counters(load(HGST), icrc=3), str(tmp_path / "s1"))
    [finding] = [f for f in result["findings"] if f["code"] == "smart.cabling"]
    assert finding["severity"] == "WARNING" and finding["subject"] == "sda"
    assert "12 interface CRC errors, and 3 damaged transfers on the link since this power-on" in finding["summary"]
    assert rc == 1
    # the same history with a clean link now (the m4's one COMRESET at boot is not a link error): a baseline
    _, result = check(tmp_path, "history", with_phy_counters(load(HGST), icrc=0), str(tmp_path / "s2"))
    assert not [f for f in result["findings"] if f["code"] == "smart.cabling"]


def test_an_attribute_flagged_as_a_rate_is_not_read_as_a_count(tmp_path: Path) -> None:
    """Attribute 196 flagged R (0x08) with a packed raw value, as some drives report it."""
    data = load(WDRED)
    row = attribute(data, 196)
    row["flags"].update(value=row["flags"]["value"] | 0x08, error_rate=True,
                        string=row["flags"]["string"][:3] + "R" + row["flags"]["string"][4:])
    row["raw"] = {"value": 3 << 32 | 17, "string": "17 0 3"}
    _, result = check(tmp_path, "rate", data)
    assert not [f for f in result["findings"] if f["code"] == "smart.reallocated"], result["findings"]
    readings = next(c for c in result["checks"] if c["name"] == "smart")["readings"]["sda"]
    assert readings["reallocated_sectors"] == 0  # attribute 5 is still read
    # the same raw value without the R flag is a reallocation count: the flag alone makes the difference
    row["flags"].update(value=row["flags"]["value"] & ~0x08, error_rate=False)
    _, result = check(tmp_path, "count", data)
    assert [f["severity"] for f in result["findings"] if f["code"] == "smart.reallocated"] == ["WARNING"]


def error_log(count: int) -> dict[str, Any]:
    """An extended comprehensive error log in smartctl's JSON shape (ataprint.cpp), newest first:
    an uncorrectable read at LBA 0x1a2b3c4 + n for each error n."""
    table = [{
        "error_number": n, "log_index": n % 4, "lifetime_hours": 41000 + n,
        "device_state": {"value": 1, "string": "active or idle"},
        "completion_registers": {"error": 64, "status": 81, "count": 0, "lba": 0x1A2B3C4 + n, "device": 64,
                                 "device_control": 0},
        "error_description": f"Error: UNC at LBA = 0x{0x1A2B3C4 + n:08x} = {0x1A2B3C4 + n}",
        "previous_commands": [
            {"registers": {"command": 0xEF, "features": 16, "count": 0, "lba": 0, "device": 160, "device_control": 8},
             "powerup_milliseconds": 1200, "command_name": "SET FEATURES [Enable SATA feature]"},
            {"registers": {"command": 0x60, "features": 8, "count": 8, "lba": 0x1A2B3C4 + n, "device": 64,
                           "device_control": 8},
             "powerup_milliseconds": 1300, "command_name": "READ FPDMA QUEUED"},
        ],
    } for n in range(count, max(0, count - 8), -1)]
    return {"extended": {"revision": 1, "sectors": 2, "count": count, "logged_count": min(count, 8), "table": table}}


def test_new_ata_errors_are_reported_with_lba_and_command(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    data = load(WDRED)
    data["ata_smart_error_log"] = error_log(2)
    _, result = check(tmp_path, "before", data, state)
    assert not [f for f in result["findings"] if f["code"] == "smart.error_log"]  # history: the baseline
    data["ata_smart_error_log"] = error_log(3)
    rc, result = check(tmp_path, "after", data, state)
    [finding] = [f for f in result["findings"] if f["code"] == "smart.error_log"]
    assert finding["summary"] == (f"sda: 1 new ATA error(s) logged; the newest: READ FPDMA QUEUED at LBA {0x1A2B3C7} "
                                  f"(Error: UNC at LBA = 0x01a2b3c7 = {0x1A2B3C7})")
    assert "error 3 at 41003 h" in finding["detail"] and "error 2 " not in finding["detail"]
    assert rc == 1


def test_uncorrectable_and_past_prefailure_are_reported(tmp_path: Path) -> None:
    """The Seagate ST3500418AS's real report, with 3 reported-uncorrectable errors and Spin_Up_Time
    marked as failed in the past (smartctl then also sets exit status bit 5)."""
    data = load(SEAGATE)
    attribute(data, 187)["raw"] = {"value": 3, "string": "3"}
    attribute(data, 3)["when_failed"] = "past"
    data["smartctl"]["exit_status"] |= 0b100000
    _, result = check(tmp_path, "seagate", data)
    found = {f["code"]: f for f in result["findings"] if f["subject"] == "sda"}
    assert found["smart.uncorrectable"]["severity"] == "WARNING"
    assert found["smart.uncorrectable"]["summary"] == "sda: errors reported uncorrectable (Reported_Uncorrect=3)"
    assert found["smart.prefail"]["severity"] == "WARNING"
    assert found["smart.prefail"]["summary"] == ("sda: pre-failure attribute 3 Spin_Up_Time was at or below its "
                                                 "threshold in the past")


def test_grown_defects_on_a_sas_disk(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    snap = HostSnapshot(tmp_path / "before")
    snap.disk("sda", "sas", serial="SAS-1", partitions=("sda1",), timeout=None)
    snap.disk("sdb", "sas", serial="SAS-2", partitions=("sdb1",), timeout=None)
    snap.mdstat("Personalities : [raid1]\nmd0 : active raid1 sda1[0] sdb1[1]\n      1000 blocks super 1.2 [2/2] [UU]\n")
    snap.scan([("/dev/sda", "scsi"), ("/dev/sdb", "scsi")])
    data = load(HITACHI_SAS)
    assert data["scsi_grown_defect_list"] == 0
    snap.smart("sdb", data)
    data["scsi_grown_defect_list"] = 7
    snap.smart("sda", data)
    rc, result = report("--root", str(snap.root), "--state-dir", state, "--only", "smart")
    assert codes(result) == [("scsi.grown_defects", "sda", "WARNING")] and rc == 1
    assert result["findings"][0]["summary"] == "sda: 7 grown defects"
