"""The SMART and ERC checks end to end: snapshots with recorded smartctl output, and the live host
with a stub smartctl where the real one cannot show the behaviour (hang, old version, standby)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FIXTURES
from tests.integration.test_cli import hostagent
from tests.snapshots import HostSnapshot

SMART = FIXTURES / "smartctl-json"
HGST = SMART / "smartctl_exporter/HGST_HUS724020ALE640_28.json"
WDRED = SMART / "smartctl_exporter/WDC_WD20EFRX-68EUZN0_17.json"
TOSHIBA = SMART / "smartctl_exporter/sat-Toshiba_MG05ACA..._Enterprise_Capacity_HDD-TOSHIBA_MG05ACA800E-sdw.json"
FAILURE_CODES = {"smart.failed", "smart.prefail", "smart.reallocated", "smart.pending", "smart.uncorrectable"}


def report(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    proc = hostagent("check", "--json", *args, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def codes(result: dict[str, Any], check: str | None = None) -> list[tuple[str, str, str]]:
    return [(f["code"], f["subject"], f["severity"]) for f in result["findings"] if check in (None, f["check"])]


def with_attribute(fixture: Path, attr_id: int, raw: int) -> dict[str, Any]:
    data = json.loads(fixture.read_text())
    for row in data["ata_smart_attributes"]["table"]:
        if row["id"] == attr_id:
            row["raw"] = {"value": raw, "string": str(raw)}
    return data


def mirror(snap: HostSnapshot, degraded: bool, fixture: dict[str, Any] | Path) -> None:
    snap.disk("sda", serial="SDA-1", partitions=("sda1",), timeout=None)  # no ERC question here
    snap.disk("sdb", serial="SDB-1", partitions=("sdb1",), timeout=None)
    members, state = ("sda1[0]", "[2/1] [U_]") if degraded else ("sda1[0] sdb1[1]", "[2/2] [UU]")
    snap.mdstat(f"Personalities : [raid1]\nmd0 : active raid1 {members}\n      976630336 blocks super 1.2 {state}\n\n"
                "unused devices: <none>\n")
    snap.scan([("/dev/sda", "sat"), ("/dev/sdb", "sat")])
    snap.smart("sda", fixture)
    snap.smart("sdb", TOSHIBA)


def test_crc_errors_rising_are_cabling_not_disk_failure(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    first = HostSnapshot(tmp_path / "t1")
    mirror(first, degraded=False, fixture=HGST)  # HGST starts with UDMA_CRC_Error_Count = 12
    rc, result = report("--root", str(first.root), "--state-dir", state)
    assert codes(result, "smart") == [] and rc == 0  # the first run only sets the baseline
    second = HostSnapshot(tmp_path / "t2")
    mirror(second, degraded=False, fixture=with_attribute(HGST, 199, 19))
    rc, result = report("--root", str(second.root), "--state-dir", state)
    assert codes(result, "smart") == [("smart.cabling", "sda", "WARNING")]
    assert not {f["code"] for f in result["findings"]} & FAILURE_CODES
    finding = result["findings"][0]
    assert "7 new interface CRC errors" in finding["summary"]
    assert "cable or backplane slot of sda, not the disk" in finding["remedy"]["what"]
    assert rc == 1


@pytest.mark.parametrize(("degraded", "severity"), [(True, "CRITICAL"), (False, "WARNING")])
def test_pending_growth_on_the_last_in_sync_member(tmp_path: Path, degraded: bool, severity: str) -> None:
    state = str(tmp_path / "state")
    before = HostSnapshot(tmp_path / "before")
    mirror(before, degraded, with_attribute(WDRED, 197, 2))
    report("--root", str(before.root), "--state-dir", state)
    after = HostSnapshot(tmp_path / "after")
    mirror(after, degraded, with_attribute(WDRED, 197, 5))
    _, result = report("--root", str(after.root), "--state-dir", state)
    pending = [f for f in result["findings"] if f["code"] == "smart.pending"]
    assert [(f["subject"], f["severity"]) for f in pending] == [("sda", severity)]
    assert "up 3 since the last check" in pending[0]["summary"]
    assert ("holds the last in-sync copy of md0" in pending[0]["summary"]) is degraded


def test_usb_and_megaraid_disks_and_a_missing_recording(tmp_path: Path) -> None:
    snap = HostSnapshot(tmp_path / "snap")
    snap.disk("sda", serial="SDA-1")
    snap.disk("sdc", "usb", serial="MSK423Y20S3HBC")
    snap.disk("sdd", serial="SDD-1")
    snap.scan([("/dev/sda", "sat"), ("/dev/sdc", "usbjmicron"), ("/dev/sdd", "sat"), ("/dev/bus/6", "sat+megaraid,14")])
    snap.smart("sda", WDRED)
    snap.smart("sdc", SMART / "scrutiny/smart-fail2.json")
    snap.smart("bus-6_sat-megaraid,14", SMART / "telegraf/megaraid-response.json")
    rc, result = report("--root", str(snap.root))
    found = codes(result, "smart")
    assert ("smart.failed", "sdc", "CRITICAL") in found
    assert ("smart.unreadable", "sdd", "UNKNOWN") in found
    assert not [c for c in found if c[1] in ("sda", "bus-6_sat-megaraid,14")]
    unreadable = next(f for f in result["findings"] if f["subject"] == "sdd")
    assert "_commands/smartctl/sdd.json" in unreadable["summary"]
    assert rc == 2
    assert {d["name"]: d["transport"] for d in result["inventory"]["disks"]} == {
        "sda": "ata", "sdc": "usb", "sdd": "ata"}


# -- the live host, with a stub smartctl ---------------------------------------------------

STUB = """#!/bin/sh
echo "$*" >> "{log}"
if [ "{mode}" = old ]; then echo "smartctl 6.6 2016-05-31 r4324"; echo "=======> UNRECOGNIZED OPTION: json=c"; exit 1; fi
case "$1" in --scan-open) echo '{scan}'; exit 0;; esac
case "{mode}" in
  hang) exec sleep 600;;
  standby) case "$*" in *"-n never"*) cat "{healthy}"; exit 0;; esac
           echo '{{"json_format_version":[1,0],"smartctl":{{"version":[7,3],"exit_status":2,"messages":[{{"string":"Device is in STANDBY mode, exit(2)","severity":"information"}}]}}}}'; exit 2;;
esac
"""


def stub_env(tmp_path: Path, mode: str, scan_type: str = "sat", **smart_config: object) -> tuple[dict[str, str], Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "smartctl.log"
    scan = json.dumps({"json_format_version": [1, 0], "smartctl": {"version": [7, 3], "exit_status": 0},
                       "devices": [{"name": "/dev/loop0", "type": scan_type, "protocol": "ATA"}]})
    stub = bindir / "smartctl"
    stub.write_text(STUB.format(log=log, scan=scan, mode=mode, healthy=WDRED))
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    settings = "\n".join(f"{k} = {json.dumps(v)}" for k, v in smart_config.items())
    config = tmp_path / "hostagent.toml"
    config.write_text(f'[agent]\nstate_dir = "{tmp_path / "state"}"\n[disks]\ninclude = ["loop0"]\n'
                      f"[checks.smart]\n{settings}\n")
    return {"PATH": f"{bindir}:{os.environ['PATH']}", "HOSTAGENT_CONFIG": str(config)}, log


def test_live_virtio_disk_is_unavailable_not_an_error() -> None:
    rc, result = report()
    smart_check = next(c for c in result["checks"] if c["name"] == "smart")
    assert smart_check["error"] is None
    virtio = [d["name"] for d in result["inventory"]["disks"] if d["transport"] == "virtio"]
    assert virtio, "this test expects the machine's virtio disk"
    for name in virtio:
        assert ("smart.unavailable", name, "INFO") in codes(result, "smart")
    assert rc == 0


def test_hanging_smartctl_is_killed_and_the_other_checks_complete(tmp_path: Path) -> None:
    env, log = stub_env(tmp_path, "hang", timeout=1.0)
    rc, result = report(env=env)
    by_name = {c["name"]: c for c in result["checks"]}
    [hung] = [f for f in result["findings"] if f["subject"] == "loop0"]
    assert (hung["code"], hung["severity"]) == ("smart.unreadable", "UNKNOWN")
    assert "smartctl --json=c -x -n standby -d sat /dev/loop0: no answer within 1 s; killed" in hung["summary"]
    assert by_name["smart"]["status"] == "UNKNOWN"
    assert all(c["error"] is None for c in result["checks"])  # md, smart and erc all completed
    assert rc == 3
    assert "/dev/loop0" in log.read_text()


def test_old_smartctl_is_unknown_with_a_clear_message(tmp_path: Path) -> None:
    env, _ = stub_env(tmp_path, "old")
    rc, result = report(env=env)
    error = next(c for c in result["checks"] if c["name"] == "smart")["error"]
    assert "smartmontools 7.0 or newer is required" in error
    assert rc == 3


def test_missing_smartctl_is_unknown(tmp_path: Path) -> None:
    env, _ = stub_env(tmp_path, "old")
    env["PATH"] = str(tmp_path / "empty")
    rc, result = report(env=env)
    assert next(c for c in result["checks"] if c["name"] == "smart")["error"] == "smartctl: command not found"
    assert rc == 3


def test_standby_disk_is_not_woken_until_it_was_skipped_enough(tmp_path: Path) -> None:
    env, log = stub_env(tmp_path, "standby", scan_type="usbjmicron", max_standby_skips=2)
    for _ in range(2):
        rc, result = report(env=env)
        assert ("smart.standby", "loop0", "INFO") in codes(result, "smart") and rc == 0
    rc, result = report(env=env)
    assert not [c for c in codes(result, "smart") if c[1] == "loop0"]
    runs = [line for line in log.read_text().splitlines() if "/dev/loop0" in line]
    assert runs == ["--json=c -x -n standby -d usbjmicron /dev/loop0"] * 2 + [
        "--json=c -x -n never -d usbjmicron /dev/loop0"]


# -- ERC / kernel timeout ------------------------------------------------------------------

ERC = {
    "unsupported": {"ata_sct_capabilities": {"value": 1, "error_recovery_control_supported": False}},
    "disabled": {"ata_sct_erc": {"read": {"enabled": False}, "write": {"enabled": False}}},
    "enabled": {"ata_sct_erc": {"read": {"enabled": True, "deciseconds": 70},
                                "write": {"enabled": True, "deciseconds": 70}}},
}


def erc_snapshot(root: Path, erc: str, timeout: int = 30, in_array: bool = True) -> HostSnapshot:
    snap = HostSnapshot(root)
    snap.disk("sda", serial="SDA-1", partitions=("sda1",), timeout=timeout)
    snap.disk("sdb", serial="SDB-1", partitions=("sdb1",), timeout=timeout)
    level = "raid1" if in_array else "raid0"
    state = " [2/2] [UU]" if in_array else " 512k chunks"
    snap.mdstat(f"Personalities : [{level}]\nmd0 : active {level} sda1[0] sdb1[1]\n      1000 blocks super 1.2{state}\n")
    snap.scan([("/dev/sda", "sat"), ("/dev/sdb", "sat")])
    for disk in ("sda", "sdb"):
        snap.smart(disk, WDRED)
        body = {"json_format_version": [1, 0], "smartctl": {"version": [7, 3], "exit_status": 0}, **ERC[erc]}
        snap.command("smartctl", f"{disk}.scterc.json", json.dumps(body))
    return snap


@pytest.mark.parametrize(("erc", "timeout", "in_array", "expected"), [
    ("unsupported", 30, True, ["sysfs-write", "/sys/block/sda/device/timeout", "180"]),
    ("disabled", 30, True, ["smartctl", "-l", "scterc,70,70", "/dev/sda"]),
    ("enabled", 30, True, None),
    ("unsupported", 180, True, None),
    ("unsupported", 30, False, None),
])
def test_timeout_mismatch(tmp_path: Path, erc: str, timeout: int, in_array: bool, expected: list[str] | None) -> None:
    snap = erc_snapshot(tmp_path / "s", erc, timeout, in_array)
    _, result = report("--root", str(snap.root))
    found = [f for f in result["findings"] if f["code"] == "disk.timeout_mismatch" and f["subject"] == "sda"]
    if expected is None:
        assert found == []
    else:
        assert [(f["severity"], f["remedy"]["commands"]) for f in found] == [("WARNING", [expected])]
        assert "md0" in found[0]["summary"]


def test_disk_tune_is_a_dry_run_and_never_applies_to_a_snapshot(tmp_path: Path) -> None:
    snap = erc_snapshot(tmp_path / "s", "disabled")
    dry = hostagent("disk", "tune", "--root", str(snap.root))
    assert dry.returncode == 0
    assert "[dry run] sda:" in dry.stdout and "$ smartctl -l scterc,70,70 /dev/sda" in dry.stdout
    assert "$ smartctl -l scterc,70,70 /dev/sdb" in dry.stdout
    assert "nothing was changed" in dry.stdout
    refused = hostagent("disk", "tune", "--apply", "--root", str(snap.root))
    assert refused.returncode == 3
    assert "is a snapshot: nothing can be applied to it" in refused.stderr


def test_disk_status_shows_arrays_health_and_trend(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    first = HostSnapshot(tmp_path / "a")
    mirror(first, degraded=True, fixture=with_attribute(WDRED, 197, 2))
    report("--root", str(first.root), "--state-dir", state)
    second = HostSnapshot(tmp_path / "b")
    mirror(second, degraded=True, fixture=with_attribute(WDRED, 197, 6))
    proc = hostagent("disk", "status", "--root", str(second.root), "--state-dir", state, "--json")
    rows = {r["disk"]: r for r in json.loads(proc.stdout)}
    assert rows["sda"]["arrays"] == ["md0:sda1 (in_sync)"]
    assert rows["sda"]["health"] == "PASSED"
    assert rows["sda"]["status"] == "CRITICAL"
    assert rows["sda"]["attributes"]["pending"] == 6
    assert rows["sda"]["trend"] == {"ata.197": 4}
    assert rows["sdb"]["arrays"] == []
    text = hostagent("disk", "status", "--root", str(second.root), "--state-dir", state).stdout
    assert text.splitlines()[0].split()[:3] == ["DISK", "TRANSPORT", "MODEL"]
    assert "ata.197+4" in text


def _reshaped(change: Any) -> dict[str, Any]:
    data = json.loads(WDRED.read_text())
    change(data)
    return data


MALFORMED = {
    "attributes a list": lambda d: d.__setitem__("ata_smart_attributes", []),
    "table a string": lambda d: d["ata_smart_attributes"].__setitem__("table", "x"),
    "row a string": lambda d: d["ata_smart_attributes"]["table"].__setitem__(0, "x"),
    "raw a string": lambda d: d["ata_smart_attributes"]["table"][0].__setitem__("raw", "x"),
    "id not a number": lambda d: d["ata_smart_attributes"]["table"][0].__setitem__("id", "x"),
    "status a list": lambda d: d.__setitem__("smart_status", []),
    "messages a number": lambda d: d["smartctl"].__setitem__("messages", 7),
    "self-test log a list": lambda d: d.__setitem__("ata_smart_self_test_log", []),
    "self-test table a table": lambda d: d.__setitem__("ata_smart_self_test_log", {"standard": {"table": {}}}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_smartctl_output_is_unreadable_naming_the_file(tmp_path: Path, case: str) -> None:
    """smartctl JSON of a shape no version prints: disk status (which the daemon publishes for the
    RPC) shows the disk as unreadable, and check is UNKNOWN; never a traceback or a silent OK."""
    snap = HostSnapshot(tmp_path / "s")
    mirror(snap, degraded=False, fixture=_reshaped(MALFORMED[case]))
    status = hostagent("disk", "status", "--json", "--root", str(snap.root))
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    row = {r["disk"]: r for r in json.loads(status.stdout)}["sda"]
    assert row["status"] == "UNKNOWN" and row["health"].startswith("unreadable: ") and "sda" in row["health"], row
    code, result = report("--root", str(snap.root))  # (asserts no traceback)
    assert code == 3
    assert any(f["severity"] == "UNKNOWN" and f["subject"] == "sda" for f in result["findings"]), result["findings"]
