"""Hung-member logic without a VM: direction-aware stuck counters, interlocks, device layers,
kernel messages, and detection across two looks at a snapshot."""

from __future__ import annotations

from pathlib import Path

from checks import hung
from hostagent.actions.hung import device_layer, refusals
from hostagent.context import CheckContext
from hostagent.host import Host
from hostagent.inventory import MdArray, MdMember, MdSync
from hostagent.sources.blockstat import BlockStat, parse_stat
from hostagent.sources.kmsg import about, parse_record
from hostagent.state import StateStore
from tests.snapshots import HostSnapshot


def test_stat_fields() -> None:
    # /sys/block/sdv/stat from the prometheus/procfs fixture tree (17 fields, kernel 5.5+)
    text = (Path(__file__).parent.parent / "fixtures/diskstats/prometheus-procfs/sys-block-sdv-stat").read_text()
    stat = parse_stat(text, "sdv/stat")
    fields = [int(f) for f in text.split()]
    assert (stat.reads, stat.writes, stat.in_flight, stat.io_ticks_ms) == (fields[0], fields[4], fields[8], fields[9])


def test_stuck_looks_at_each_direction() -> None:
    last = {"completed": 150, "reads": 100, "writes": 50}
    held_write = BlockStat(reads=120, writes=50, in_flight=1, io_ticks_ms=0, in_flight_reads=0, in_flight_writes=1)
    assert hung.stuck(held_write, last)  # reads still complete, the write does not
    moving = BlockStat(reads=120, writes=51, in_flight=1, io_ticks_ms=0, in_flight_reads=0, in_flight_writes=1)
    assert not hung.stuck(moving, last)
    idle = BlockStat(reads=100, writes=50, in_flight=0, io_ticks_ms=0, in_flight_reads=0, in_flight_writes=0)
    assert not hung.stuck(idle, last)


def mirror(*states: tuple[str, ...], level: str = "raid1") -> MdArray:
    members = tuple(MdMember(f"sd{chr(97 + i)}1", i, s) for i, s in enumerate(states))
    degraded = sum(1 for s in states if "in_sync" not in s)
    return MdArray("md0", level, "clean", None, len(states), degraded, members, MdSync("idle"))


def test_interlocks() -> None:
    healthy = mirror(("in_sync",), ("in_sync",))
    assert refusals(healthy, healthy.members[1], set()) == []
    degraded = mirror(("faulty",), ("in_sync",))
    reasons = refusals(degraded, degraded.members[1], set())
    assert any("last in-sync copy" in r for r in reasons) and any("also hung or failing" in r for r in reasons)
    both_hung = mirror(("in_sync",), ("in_sync",), ("in_sync",))
    assert any("sdb1 of md0 is also hung" in r for r in refusals(both_hung, both_hung.members[0], {"sdb1"}))
    rebuilding = mirror(("in_sync",), ("in_sync",), ("rebuilding",))
    assert refusals(rebuilding, rebuilding.members[2], set()) == ["md0 is recovering onto sdc1"]


def test_device_layers(tmp_path: Path) -> None:
    snap = HostSnapshot(tmp_path)
    snap.disk("sda", partitions=("sda1",))
    snap.disk("vdb", "virtio")
    snap.write("sys/devices/virtual/block/dm-3/dm/name", "m1\n")
    snap.write("sys/devices/virtual/block/dm-3/size", "131072\n")
    snap.link("sys/class/block/dm-3", "../../devices/virtual/block/dm-3")
    host = Host(tmp_path)
    assert device_layer(host, "dm-3", []).steps == (("dmsetup", "load", "m1", "--table", "0 131072 error"),
                                                   ("dmsetup", "resume", "m1"))
    assert device_layer(host, "sda1", []).steps[0] == ("sysfs-write", "/sys/block/sda/device/state", "offline")
    virtio = device_layer(host, "vdb", [])
    assert virtio.kind == "none" and "nothing inside this host can error out" in virtio.note
    # sda also holds the last in-sync copy of another array: the disk is left in place
    other = MdArray("md9", "raid1", "clean", None, 2, 1,
                    (MdMember("sda2", 0, ("in_sync",)), MdMember("sdz2", 1, ("faulty",))), MdSync("idle"))
    sda = "devices/pci0000:00/0000:00:1f.2/ata1/host1/target1:0:0/1:0:0:0/block/sda"
    snap.write(f"sys/{sda}/sda2/partition", "2\n")
    snap.link("sys/class/block/sda2", f"../../{sda}/sda2")
    held = device_layer(host, "sda1", [other])
    assert held.kind == "none" and "last in-sync copy in md9" in held.note


def test_kernel_messages() -> None:
    records = [parse_record("3,1234,5678901,-;INFO: task kworker/0:1:42 blocked for more than 120 seconds."),
               parse_record("3,1235,5678999,-;blk_update_request: I/O error, dev sdb, sector 2048 op 0x1:(WRITE)"),
               parse_record(" SUBSYSTEM=block")]
    assert records[2] is None
    messages = [r for r in records if r]
    assert about(messages, ("sdb",)) == ["blk_update_request: I/O error, dev sdb, sector 2048 op 0x1:(WRITE)"]


def test_detection_across_two_looks(tmp_path: Path) -> None:
    snap = HostSnapshot(tmp_path)
    snap.disk("sda", partitions=("sda1",))
    snap.disk("sdb", partitions=("sdb1",))
    snap.mdstat("Personalities : [raid1]\nmd0 : active raid1 sda1[0] sdb1[1]\n      1000 blocks super 1.2 [2/2] [UU]\n")
    snap.write("sys/devices/virtual/block/md0/md/array_state", "write-pending\n")
    snap.link("sys/block/md0", "../devices/virtual/block/md0")
    base = "sys/devices/pci0000:00/0000:00:1f.2/ata{n}/host{n}/target{n}:0:0/{n}:0:0:0/block/{d}/{d}1"
    for n, d in ((1, "sda"), (2, "sdb")):
        snap.write(base.format(n=n, d=d) + "/stat", "100 0 800 10 50 0 400 10 0 20 20 0 0 0 0 0 0\n")
        snap.write(base.format(n=n, d=d) + "/inflight", "0 0\n")
    state = StateStore(None)
    config = hung.Config(hung_after=30)
    first = CheckContext(Host(tmp_path), CheckContext.for_host(Host(tmp_path)).inventory, state, now=1000.0)
    assert hung.run(first, config) == []
    snap.write(base.format(n=2, d="sdb") + "/inflight", "0 1\n")  # a write held; nothing completes
    later = CheckContext(Host(tmp_path), CheckContext.for_host(Host(tmp_path)).inventory, state, now=1010.0)
    assert hung.run(later, config) == []  # stuck for 0 s: the first stuck look starts the clock
    last = CheckContext(Host(tmp_path), CheckContext.for_host(Host(tmp_path)).inventory, state, now=1045.0)
    [finding] = hung.run(last, config)
    assert (finding.code, finding.subject) == ("disk.hung", "md0/sdb1")
    assert "1 I/O in flight and none completed for 35 s" in finding.detail
    assert "md0 array_state: write-pending (writes are blocked)" in finding.detail
    assert finding.remedy is not None and finding.remedy.commands[0] == ("mdadm", "--manage", "/dev/md0", "--fail",
                                                                         "/dev/sdb1")
    assert hung.disk_is_hung(last, "sdb") and not hung.disk_is_hung(last, "sda")
