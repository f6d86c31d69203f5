"""disk replace planning over snapshots: identification by name, serial and slot, the refusals,
the dry-run plan, and resuming from a journal.  The VM test (tests/vm/test_replace.py) does it for real."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from hostagent.actions import AuditLog
from hostagent.commands.disk_replace import (
    ArrayPlan,
    Journal,
    follow_resync,
    link_evidence,
    member_steps,
    partition_steps,
    plan,
    replace,
    smart_evidence,
)
from hostagent.config import Config
from hostagent.errors import ActionRefused, HostagentError
from hostagent.host import Host
from hostagent.sources.smartctl import SmartReport, parse_smartctl
from tests.helpers import FIXTURES
from tests.snapshots import HostSnapshot

SECTORS = 3907029168
DUMP = """label: dos
label-id: 0x1a2b3c4d
device: /dev/sda
unit: sectors
sector-size: 512

/dev/sda1 : start=        2048, size=     1048576, type=fd
/dev/sda2 : start=     1050624, size=  3905978544, type=fd
"""


def host_with_failed_sdb(root: Path, *, sdb_failed: bool = True) -> HostSnapshot:
    snap = HostSnapshot(root)
    snap.disk("sda", serial="WD-GOOD", partitions=("sda1", "sda2"))
    snap.disk("sdb", serial="WD-DEAD", partitions=("sdb1", "sdb2"))
    snap.disk("sdc", serial="WD-NEW", model="NEW DISK")
    snap.disk("sdd", serial="WD-SMALL", sectors=SECTORS // 2)
    snap.disk("sde", serial="WD-USED")
    flag, state = ("(F)", "[2/1] [U_]") if sdb_failed else ("", "[2/2] [UU]")
    snap.mdstat("Personalities : [raid1]\n"
                f"md0 : active raid1 sda1[0] sdb1[1]{flag}\n      523264 blocks super 1.2 {state}\n\n"
                f"md1 : active raid1 sda2[0] sdb2[1]{flag}\n      1952857088 blocks super 1.2 {state}\n\n"
                "unused devices: <none>\n")
    for index, disk in enumerate(("sda", "sdb", "sdc", "sdd", "sde"), start=1):
        snap.link(f"dev/disk/by-path/pci-0000:00:1f.2-ata-{index}", f"../../{disk}")
    for disk in ("sdc", "sdd"):
        snap.command("blkid", f"blkid-{disk}", "", rc=2)
    snap.command("blkid", "blkid-sde", "DEVNAME=/dev/sde\nUUID=1234\nTYPE=ext4\n")
    snap.command("sfdisk", "sfdisk-dump-sda", DUMP)
    return snap


def test_identifies_disks_arrays_and_slots(tmp_path: Path) -> None:
    host = Host(host_with_failed_sdb(tmp_path).root)
    the_plan = plan(host, "WD-DEAD", "/dev/sdc", wipe=False, journal=None)  # old by serial, new by path
    assert (the_plan.old.name, the_plan.new.name, the_plan.template.name) == ("sdb", "sdc", "sda")
    assert the_plan.old.slots == ("pci-0000:00:1f.2-ata-2",) and the_plan.new.slots == ("pci-0000:00:1f.2-ata-3",)
    assert "NEW DISK, serial WD-NEW" in the_plan.new.describe()
    assert [(a.array, a.number, a.template_member, a.new_member, a.old_members) for a in the_plan.arrays] == [
        ("md0", 1, "sda1", "sdc1", ("sdb1",)), ("md1", 2, "sda2", "sdc2", ("sdb2",))]
    by_path = plan(host, "disk/by-path/pci-0000:00:1f.2-ata-2", "sdc", wipe=False, journal=None)
    assert by_path.old.name == "sdb"


def test_steps_copy_the_table_and_add_every_partition(tmp_path: Path) -> None:
    host = Host(host_with_failed_sdb(tmp_path).root)
    the_plan = plan(host, "sdb", "sdc", wipe=False, journal=None)
    partition = partition_steps(host, the_plan, 10)
    assert [s.argv for s in partition] == [("sfdisk", "--no-reread", "--wipe", "always", "/dev/sdc"),
                                           ("blockdev", "--rereadpt", "/dev/sdc")]
    table = partition[0].stdin or ""
    assert "label-id" not in table and "device:" not in table  # a fresh disk identifier
    assert "/dev/sda2 : start=     1050624, size=  3905978544, type=fd" in table
    assert [s.argv for s in member_steps(the_plan)] == [
        ("mdadm", "--manage", "/dev/md0", "--remove", "failed", "detached"),
        ("mdadm", "--manage", "/dev/md0", "--add", "/dev/sdc1"),
        ("mdadm", "--manage", "/dev/md1", "--remove", "failed", "detached"),
        ("mdadm", "--manage", "/dev/md1", "--add", "/dev/sdc2")]


@pytest.mark.parametrize(("old", "new", "message"), [
    ("sdb", "sdd", "/dev/sdd (1000199467008 bytes) is smaller than /dev/sda (2000398934016 bytes)"),
    ("sdb", "sde", "/dev/sde is not blank: ext4 on /dev/sde"),
    ("sdb", "sdb", "is the old disk"),
    ("sdb", "sdz", "--new sdz: no such disk"),
])
def test_refusals(tmp_path: Path, old: str, new: str, message: str) -> None:
    host = Host(host_with_failed_sdb(tmp_path).root)
    with pytest.raises(HostagentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(host, old, new, wipe=False, journal=None)


def test_wipe_erases_a_used_disk_first(tmp_path: Path) -> None:
    host = Host(host_with_failed_sdb(tmp_path).root)
    the_plan = plan(host, "sdb", "sde", wipe=True, journal=None)
    assert the_plan.notes == ["--wipe: erasing ext4 on /dev/sde"]
    assert partition_steps(host, the_plan, 10)[0].argv == ("wipefs", "--all", "/dev/sde")


def test_an_old_disk_still_in_sync_is_refused(tmp_path: Path) -> None:
    host = Host(host_with_failed_sdb(tmp_path, sdb_failed=False).root)
    with pytest.raises(ActionRefused, match="sdb1 of sdb is still in sync in md0: fail it first"):
        plan(host, "sdb", "sdc", wipe=False, journal=None)
    failed = Host(host_with_failed_sdb(tmp_path / "b").root)
    with pytest.raises(ActionRefused, match="holds its last in-sync copy: that is not the failed disk"):
        plan(failed, "sda", "sdc", wipe=False, journal=None)


def test_dry_run_prints_the_plan_and_writes_no_journal(tmp_path: Path) -> None:
    host = Host(host_with_failed_sdb(tmp_path / "host").root)
    lines: list[str] = []
    result = replace(host, Config(), "sdb", "sdc", apply=False, wipe=False, read_mib=16, selftest=True,
                     state_dir=str(tmp_path / "state"), say=lines.append, progress=lambda *a: None)
    text = "\n".join(lines)
    assert "old disk  /dev/sdb: TEST DISK, serial WD-DEAD" in text and "pci-0000:00:1f.2-ata-2" in text
    assert "vet /dev/sdc: SMART health and a short self-test, a 16 MiB read test" in text
    assert "then: follow the resync" in text and "then: install the bootloader" in text
    assert [o.applied for o in result.steps] == [False] * 6 and result.error is None
    assert not (tmp_path / "state/audit.jsonl").exists()
    with pytest.raises(ActionRefused, match="snapshot"):
        replace(host, Config(), "sdb", "sdc", apply=True, wipe=False, read_mib=16, selftest=True,
                state_dir=str(tmp_path / "state"), say=lines.append, progress=lambda *a: None)


def test_resuming_skips_the_refusals_for_our_own_partitions(tmp_path: Path) -> None:
    snap = host_with_failed_sdb(tmp_path / "host")
    snap.command("blkid", "blkid-sdc", "PTTYPE=dos\n")  # partitioned by the interrupted run
    host = Host(snap.root)
    with pytest.raises(ActionRefused, match="not blank"):
        plan(host, "sdb", "sdc", wipe=False, journal=None)
    audit = AuditLog(tmp_path / "state")
    journal = Journal(audit, "sdc")
    journal.record("vetted")
    journal.record("partitioned")
    resumed = plan(host, "sdb", "sdc", wipe=False, journal=Journal(audit, "sdc").data)
    assert resumed.new.name == "sdc"
    events = [json.loads(line) for line in (tmp_path / "state/audit.jsonl").read_text().splitlines()]
    assert [(e["event"], e["new"], e["phase"]) for e in events] == [("replace.phase", "sdc", "vetted"),
                                                                    ("replace.phase", "sdc", "partitioned")]


def test_the_journal_is_the_audit_log(tmp_path: Path) -> None:
    """Phases of the new disk since its last replace.done or replace.start-over; other disks' and
    torn lines are passed over."""
    audit = AuditLog(tmp_path)
    Journal(audit, "sdc").record("vetted", plan={"old": {"name": "sdb"}}, vetting={"verdict": "ok"})
    Journal(audit, "sdd").record("vetted")
    audit.record({"event": "replace.done", "new": "sdc"})
    assert Journal(audit, "sdc").done == [] and Journal(audit, "sdd").done == ["vetted"]
    journal = Journal(audit, "sdc")
    journal.record("vetted", vetting={"verdict": "ok"})
    journal.record("partitioned")
    with (tmp_path / "audit.jsonl").open("a") as handle:
        handle.write('{"event": "replace.phase", "new": "sdc", "pha')  # torn by a crash
    again = Journal(audit, "sdc")
    assert again.done == ["vetted", "partitioned"] and again.data["vetting"] == {"verdict": "ok"}
    assert again.skipped == [6]
    again.start_over()
    assert Journal(audit, "sdc").done == [] and again.done == []
    assert Journal(AuditLog(None), "sdc").done == []  # no state directory: nothing to resume


def test_start_over_and_a_journal_of_another_old_disk(tmp_path: Path) -> None:
    snap = host_with_failed_sdb(tmp_path / "host")
    host = Host(snap.root)
    journal = Journal(AuditLog(tmp_path / "state"), "sdc")
    journal.record("vetted", plan={"old": {"name": "sda"}, "arrays": []}, vetting={"verdict": "ok", "evidence": [],
                                                                                   "smart": False})
    kwargs: dict[str, Any] = dict(apply=False, wipe=False, read_mib=16, selftest=False,
                                  state_dir=str(tmp_path / "state"), progress=lambda *a: None)
    with pytest.raises(ActionRefused, match=r"unfinished replacement of sda by sdc, not of sdb.*--start-over"):
        replace(host, Config(), "sdb", "sdc", say=lambda line: None, **kwargs)
    lines: list[str] = []
    result = replace(host, Config(), "sdb", "sdc", say=lines.append, start_over=True, **kwargs)
    assert "--start-over: the recorded progress (vetted) would be set aside" in lines and result.error is None
    assert Journal(AuditLog(tmp_path / "state"), "sdc").done == ["vetted"]  # a dry run records nothing


@pytest.mark.parametrize(("member", "disk"), [("sdb1", "sdb"), ("nvme0n1p2", "nvme0n1"), ("sdp1", "sdp"),
                                              ("xvda3", "xvda")])
def test_the_disk_of_a_member_that_left_sysfs(tmp_path: Path, member: str, disk: str) -> None:
    from hostagent.commands.disk_replace import _disk_of

    assert _disk_of(Host(HostSnapshot(tmp_path).root), member) == disk


def test_locate_by_enclosure_led_or_by_slot(tmp_path: Path) -> None:
    from hostagent.actions import AuditLog
    from hostagent.commands.disk_replace import locate

    snap = host_with_failed_sdb(tmp_path)
    host = Host(snap.root)
    where, steps, how = locate(host, "WD-DEAD", apply=False, off=False, audit=AuditLog(None), timeout=5)
    assert where.name == "sdb" and steps == [] and "no LED control" in how
    snap.write("sys/block/sdb/device/enclosure_device:Slot 02/locate", "0\n")
    _, steps, how = locate(host, "sdb", apply=False, off=False, audit=AuditLog(None), timeout=5)
    assert how == "sysfs enclosure" and [o.applied for o in steps] == [False]
    assert steps[0].step.argv == ("tee", "/sys/block/sdb/device/enclosure_device:Slot 02/locate")
    assert steps[0].step.stdin == "1\n"


def smart_sample(name: str) -> SmartReport:
    return parse_smartctl((FIXTURES / "smartctl-json" / name).read_text(), name)


@pytest.mark.parametrize(("name", "doa", "evidence"), [
    ("qemu/ide-hd-a.json", False, "SMART overall health: PASSED, no reallocated"),
    ("smartctl_exporter/WDC_WD20EFRX-68EUZN0_17.json", False, "SMART overall health: PASSED"),
    ("scrutiny/smart-fail2.json", True, "SMART overall health: FAILED"),
    ("scrutiny/smart-fail2.json", True, "attribute 5 (reallocated sectors) = 1975 on a new disk"),
    ("scrutiny/smart-fail2.json", True, "attribute 197 (pending sectors) = 8 on a new disk"),
    ("scrutiny/smart-fail2.json", True, "self-test log: Extended offline: Completed: read failure at 4 h"),
    ("smartctl_exporter/ST3500418AS_12.json", True, "attribute 5 (reallocated sectors) = 304 on a new disk"),
    ("smartctl_exporter/nvme-null-SAMSUNG_MZWLL3T2HAJQ-00005-nvme0.json", True, "SMART overall health: FAILED"),
])
def test_dead_on_arrival_signs_in_real_smart_data(name: str, doa: bool, evidence: str) -> None:
    found_doa, found = smart_evidence(smart_sample(name))
    assert found_doa is doa
    assert any(line.startswith(evidence) for line in found), found


def test_a_rising_crc_counter_means_the_cable_or_slot() -> None:
    """The HGST sample has 12 interface CRC errors; the "after" report is that sample with more."""
    before = smart_sample("smartctl_exporter/HGST_HUS724020ALE640_28.json")
    attributes = dict(before.attributes)
    attributes[199] = dataclasses.replace(attributes[199], raw=15, raw_string="15")
    after = dataclasses.replace(before, attributes=attributes)
    rose = "CRC error count (attribute 199) rose from 12 to 15 during the test"
    assert link_evidence(before, after) == (True, [rose])
    assert link_evidence(before, before) == (False, ["CRC error count (attribute 199) stayed at 12"])
    qemu = smart_sample("qemu/ide-hd-a.json")  # no attribute 199: nothing to say either way
    assert link_evidence(qemu, qemu) == (False, [])
    assert link_evidence(before, None) == (False, [])


def test_the_resync_is_shown_with_percent_speed_and_eta(tmp_path: Path) -> None:
    """A real recovery line (pymdstat's mdstat.05: 12.6%, 33440K/sec, finish=127.5min)."""
    snap = HostSnapshot(tmp_path)
    snap.mdstat((FIXTURES / "mdstat/pymdstat/mdstat.05").read_text())
    base = plan(Host(host_with_failed_sdb(tmp_path / "plan").root), "sdb", "sdc", wipe=False, journal=None)
    the_plan = dataclasses.replace(base, arrays=[ArrayPlan("md127", 1, "sdg1", "sdh1", ())])
    shown: list[tuple[str, str]] = []

    class Shown(Exception):
        pass

    def progress(item: str, text: str, final: bool) -> None:
        shown.append((item, text))
        raise Shown  # one round is enough: the snapshot never finishes its recovery

    with pytest.raises(Shown):
        follow_resync(Host(snap.root), the_plan, progress, poll=0)
    assert shown == [("md127", "recover 12.6%, 32.7 MiB/s, about 127 min 30 s left")]


def test_resuming_after_the_old_disk_was_pulled(tmp_path: Path) -> None:
    """The journal names the old disk when it is gone from the kernel and given by serial."""
    snap = HostSnapshot(tmp_path / "host")
    snap.disk("sda", serial="WD-GOOD", partitions=("sda1", "sda2"))
    snap.disk("sdc", serial="WD-NEW", partitions=("sdc1", "sdc2"))
    snap.mdstat("Personalities : [raid1]\n"
                "md0 : active raid1 sdc1[2] sda1[0]\n      523264 blocks super 1.2 [2/2] [UU]\n\n"
                "md1 : active raid1 sdc2[2] sda2[0]\n      1952857088 blocks super 1.2 [2/1] [U_]\n"
                "      [=>...................]  recovery =  9.1% (177724416/1952857088) finish=151.6min "
                "speed=195081K/sec\n\nunused devices: <none>\n")
    journal = Journal(AuditLog(tmp_path / "state"), "sdc")
    recorded = {"old": {"name": "sdb"}, "arrays": [{"array": "md0"}, {"array": "md1"}]}
    for phase in ("vetted", "partitioned", "added"):
        journal.record(phase, plan=recorded)
    resumed = plan(Host(snap.root), "WD-DEAD", "sdc", wipe=False, journal=journal.data)
    assert (resumed.old.name, resumed.old.present) == ("sdb", False)
    assert [(a.array, a.new_member) for a in resumed.arrays] == [("md0", "sdc1"), ("md1", "sdc2")]
