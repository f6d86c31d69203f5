"""The bad inputs of docs/reliability.md's parser table, each as a snapshot checked by the real CLI in
a child process with a memory limit (prlimit --as) and a timeout: every one ends as a clean
UNKNOWN naming the file, never a hang, a traceback, an "internal error" or a silent OK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.snapshots import HostSnapshot

REPO = Path(__file__).resolve().parent.parent.parent
MEMORY = 1 << 30  # 1 GiB of address space: the 999999999999-slot array once took 6.4 GB in 10 s
RAID1 = ("Personalities : [raid1]\nmd0 : active raid1 sdb1[1] sda1[0]\n"
         "      1046528 blocks super 1.2 [2/2] [UU]\n\nunused devices: <none>\n")
FIXTURE_SMART = REPO / "tests/fixtures/smartctl-json/qemu/ide-hd-a.json"


def hostagent(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["prlimit", f"--as={MEMORY}", sys.executable, "-m", "hostagent", *argv],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout)


def md_sysfs(snap: HostSnapshot, **attrs: str) -> None:
    values = {"level": "raid1", "array_state": "clean", "raid_disks": "2", "degraded": "0", "sync_action": "idle",
              "metadata_version": "1.2", **attrs}
    for attr, value in values.items():
        snap.write(f"sys/block/md0/md/{attr}", value + "\n")
    for slot, member in enumerate(("sda1", "sdb1")):
        snap.write(f"sys/block/md0/md/dev-{member}/state", "in_sync\n")
        snap.write(f"sys/block/md0/md/dev-{member}/slot", f"{attrs.get('slot_' + member, slot)}\n")


def sysfs_row(**attrs: str) -> Callable[[HostSnapshot], None]:
    def build(snap: HostSnapshot) -> None:
        snap.mdstat(RAID1)
        md_sysfs(snap, **attrs)
    return build


def mdstat_row(text: str) -> Callable[[HostSnapshot], None]:
    return lambda snap: snap.mdstat(text)


def fifo_mdstat(snap: HostSnapshot) -> None:
    (snap.root / "proc").mkdir(parents=True, exist_ok=True)
    os.mkfifo(snap.root / "proc/mdstat")  # nobody ever writes it: an open that waited would hang


def zero_mdstat(snap: HostSnapshot) -> None:
    (snap.root / "proc").mkdir(parents=True, exist_ok=True)
    os.symlink("/dev/zero", snap.root / "proc/mdstat")


def slot_row(snap: HostSnapshot) -> None:
    snap.mdstat(RAID1)
    md_sysfs(snap)
    snap.write("sys/block/md0/md/dev-sdb1/slot", "99999999999999\n")


# row, how to build the snapshot, the text the UNKNOWN finding must hold
ROWS: list[tuple[str, Callable[[HostSnapshot], None], str]] = [
    ("sysfs raid_disks = 999999999999", sysfs_row(raid_disks="999999999999"), "raid_disks:1: 999999999999 is outside"),
    ("raid10 layout 255/255 with 200,000 disks", sysfs_row(level="raid10", raid_disks="200000", layout="65535"),
     "raid_disks:1: 200000 is outside"),
    ("raid10 layout 255/255 on 4 disks", sysfs_row(level="raid10", raid_disks="4", layout="65535"),
     "layout:1: raid10 layout 0xffff: 255 near and 255 far copies on 4 disks"),
    ("/proc/mdstat as a FIFO", fifo_mdstat, "/proc/mdstat: not a regular file"),
    ("/proc/mdstat -> /dev/zero", zero_mdstat, "/proc/mdstat: not a regular file"),
    ("degraded = 1e20", sysfs_row(degraded="1e20"), "degraded:1: expected a number, got '1e20'"),
    ("negative degraded", sysfs_row(degraded="-1"), "degraded:1: expected a number, got '-1'"),
    ("degraded above raid_disks", sysfs_row(degraded="3"), "degraded:1: 3 is outside 0..2"),
    ("a slot of 99999999999999", slot_row, "dev-sdb1/slot:1: 99999999999999 is outside 0..1"),
    ("the digit '²'", sysfs_row(degraded="²"), "degraded:1: expected a number, got '²'"),
    ("a 5,000-digit number", sysfs_row(mismatch_cnt="9" * 5000), "mismatch_cnt:1: expected a number, got '999"),
    ("mdstat [999999999999/1]", mdstat_row(RAID1.replace("[2/2] [UU]", "[999999999999/1] [U]")),
     "md0: raid disks: 999999999999 is outside"),
    ("mdstat blocks of 5,000 digits", mdstat_row(RAID1.replace("1046528", "9" * 5000)),
     "proc/mdstat:3: md0: blocks: expected a number"),
]


@pytest.mark.parametrize(("row", "build", "message"), ROWS, ids=[r[0] for r in ROWS])
def test_bad_md_input_is_a_clean_unknown_naming_the_file(tmp_path: Path, row: str,
                                                         build: Callable[[HostSnapshot], None], message: str) -> None:
    snap = HostSnapshot(tmp_path / "root")
    build(snap)
    result = hostagent("check", "--root", str(snap.root), "--only", "md,hung", "--json")
    assert result.returncode == 3, (row, result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "internal error" not in result.stdout, result.stdout
    failures = [f for f in json.loads(result.stdout)["findings"] if f["code"] == "check.failed"]
    assert failures and all(f["severity"] == "UNKNOWN" for f in failures)
    assert any(message in f["summary"] for f in failures), (row, [f["summary"] for f in failures])


def test_a_hostname_that_is_dev_zero_is_unknown_not_a_traceback(tmp_path: Path) -> None:
    snap = HostSnapshot(tmp_path / "root")
    snap.mdstat(RAID1)
    (snap.root / "proc/sys/kernel/hostname").unlink()
    os.symlink("/dev/zero", snap.root / "proc/sys/kernel/hostname")
    result = hostagent("check", "--root", str(snap.root), "--only", "md")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.splitlines()[1].startswith("hostagent on unknown: OK")


SMART_ROWS = [
    ("smartctl JSON nested 100,000 deep", lambda doc: '{"smartctl": ' + "[" * 100_000 + "]" * 100_000 + "}",
     "JSON nested deeper than"),
    ("attributes of the wrong type", lambda doc: json.dumps({**doc, "ata_smart_attributes": {"table": {"id": 5}}}),
     "ata_smart_attributes.table: expected a list"),
    ("a log of the wrong type", lambda doc: json.dumps({**doc, "ata_smart_self_test_log": [1, 2]}),
     "ata_smart_self_test_log"),
    ("a table that is null", lambda doc: json.dumps({**doc, "ata_smart_data": None,
                                                      "ata_smart_attributes": {"table": [None]}}),
     "ata_smart_attributes.table[0]"),
]


@pytest.mark.parametrize(("row", "mangle", "message"), SMART_ROWS, ids=[r[0] for r in SMART_ROWS])
def test_bad_smartctl_output_is_unknown_in_check_and_an_error_in_disk_status(
        tmp_path: Path, row: str, mangle: Callable[[dict[str, object]], str], message: str) -> None:
    snap = HostSnapshot(tmp_path / "root")
    snap.mdstat(RAID1)
    snap.disk("sda")
    snap.scan([("/dev/sda", "sat")])
    snap.command("smartctl", "sda.json", mangle(json.loads(FIXTURE_SMART.read_text())))
    check = hostagent("check", "--root", str(snap.root), "--only", "smart", "--json")
    assert check.returncode == 3 and "internal error" not in check.stdout, (row, check.stdout[-2000:])
    summaries = [f["summary"] for f in json.loads(check.stdout)["findings"]]
    assert any(message in s and "sda" in s for s in summaries), (row, summaries)
    status = hostagent("disk", "status", "--root", str(snap.root))
    assert "Traceback" not in status.stderr, status.stderr
    assert message in status.stdout + status.stderr, (row, status.stdout, status.stderr)


def test_a_recorded_exit_code_of_binary_bytes_is_a_parse_error_naming_the_file(tmp_path: Path) -> None:
    snap = HostSnapshot(tmp_path / "root")
    snap.mdstat(RAID1)
    snap.disk("sda")
    snap.scan([("/dev/sda", "sat")])
    snap.command("smartctl", "sda.json", FIXTURE_SMART.read_text())
    (snap.root / "_commands/smartctl/sda.json.rc").write_bytes(b"\xff\xfe\x00\x9c")
    result = hostagent("check", "--root", str(snap.root), "--only", "smart", "--json")
    summaries = [f["summary"] for f in json.loads(result.stdout)["findings"]]
    assert result.returncode == 3 and "internal error" not in result.stdout, summaries
    assert any("sda.json.rc:1: exit code" in s for s in summaries), summaries


def test_hostagent_log_reads_torn_and_binary_lines_as_torn(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    good = json.dumps({"time": "2026-12-04T06:00:00+00:00", "event": "alert", "kind": "new", "code": "md.degraded",
                       "subject": "md0"})
    (state / "audit.jsonl").write_bytes(good.encode() + b'\n{"time": "2026-12-04T06:01:00+00:00", "eve\n'
                                        + b"\xff\xfe binary\n[1, 2]\n" + good.encode() + b"\n")
    config = tmp_path / "hostagent.toml"
    config.write_text("")
    text = hostagent("--config", str(config), "log", "--state-dir", str(state))
    assert text.returncode == 0 and "Traceback" not in text.stderr, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 5 and lines[0].endswith("new md.degraded") and lines[4] == lines[0], lines
    assert sum(line.startswith("(torn record:") for line in lines) == 3, lines
    as_json = hostagent("--config", str(config), "log", "--json", "--state-dir", str(state))
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [("torn" in r) for r in records] == [False, True, True, True, False]
