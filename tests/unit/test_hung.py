"""Hung-member logic without a VM: direction-aware stuck counters, interlocks, device layers,
kernel messages, and detection across two looks at a snapshot."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from checks import hung
from hostagent.actions.hung import device_layer, refusals
from hostagent.context import CheckContext
from hostagent.host import Host
from hostagent.inventory import MdArray, MdMember, MdSync
from hostagent.probe import Prober, ProbeStatus, parse_report
from hostagent.sources.blockstat import BlockStat, parse_stat
from hostagent.sources.kmsg import about, parse_record
from hostagent.state import StateStore
from tests.snapshots import HostSnapshot, member_dir, sata_mirror


def test_stat_fields() -> None:
    # /sys/block/sdv/stat from the prometheus/procfs fixture tree (17 fields, kernel 5.5+)
    text = (Path(__file__).parent.parent / "fixtures/diskstats/prometheus-procfs/sys-block-sdv-stat").read_text()
    stat = parse_stat(text, "sdv/stat")
    fields = [int(f) for f in text.split()]
    assert (stat.reads, stat.writes, stat.in_flight, stat.io_ticks_ms) == (fields[0], fields[4], fields[8], fields[9])


def stat(reads: int, writes: int, flying: tuple[int, int] | None = (0, 0), read_ms: int = 0,
         write_ms: int = 0) -> BlockStat:
    pending = sum(flying) if flying else 0
    return BlockStat(reads, writes, pending, 0, flying[0] if flying else None, flying[1] if flying else None,
                     read_ms, write_ms)


def looks(*samples: tuple[float, BlockStat], crawl_ms: float = 5000, idle_after: float = 20) -> dict[str, Any]:
    clock = None
    for now, sample in samples:
        clock = hung.advance(clock, sample, now, crawl_ms, idle_after)
    assert clock is not None
    return clock


def test_a_stall_is_dated_from_the_first_look_that_saw_the_io_in_flight() -> None:
    clock = looks((100, stat(120, 50, (0, 1))), (101, stat(125, 50, (0, 1))), (130, stat(130, 50, (0, 1))))
    # reads still complete; the write seen at 100 never did: outstanding for at least 30 s
    assert hung.clock_ages(clock, 130)[0] == 30
    assert clock["reads"]["stalled"] is None


def test_io_issued_between_two_looks_starts_the_clock_at_the_later_one() -> None:
    clock = looks((100, stat(120, 50)), (105, stat(120, 50, (0, 1))), (110, stat(120, 50, (0, 1))))
    assert hung.clock_ages(clock, 110)[0] == 5


def test_any_completion_stops_the_stall_clock() -> None:
    clock = looks((100, stat(120, 50, (0, 1))), (110, stat(120, 50, (0, 1))), (111, stat(120, 51, (0, 1))))
    assert hung.clock_ages(clock, 111)[0] == 0


def test_without_an_inflight_file_the_totals_are_used() -> None:
    clock = looks((100, stat(120, 50, None)), (110, stat(120, 50, None)))
    assert hung.clock_ages(clock, 110)[0] == 0  # nothing pending
    held = BlockStat(120, 50, 1, 0)
    clock = looks((100, held), (110, held), (125, held))
    assert hung.clock_ages(clock, 125)[0] == 25


def test_a_crawl_is_dated_from_its_first_slow_completion_and_lasts_across_the_gaps() -> None:
    # a dm-delay member: 20 s per write, nothing ever shown in flight (bio-based)
    first = looks((100, stat(0, 10, write_ms=100)), (121, stat(0, 11, write_ms=20_100)))
    stalled, crawling, per_io = hung.clock_ages(first, 121)
    assert (stalled, crawling, per_io) == (0, 20, 20_000)
    gap = looks((100, stat(0, 10, write_ms=100)), (121, stat(0, 11, write_ms=20_100)),
                (125, stat(0, 11, write_ms=20_100)))
    assert hung.clock_ages(gap, 125)[1] == 24
    fast = looks((100, stat(0, 10, write_ms=100)), (121, stat(0, 11, write_ms=20_100)),
                 (122, stat(0, 12, write_ms=20_110)))
    assert hung.clock_ages(fast, 122)[1] == 0
    idle = looks((100, stat(0, 10, write_ms=100)), (121, stat(0, 11, write_ms=20_100)),
                 (142, stat(0, 11, write_ms=20_100)))
    assert hung.clock_ages(idle, 142)[1] == 0  # nothing in flight or done for idle_after: over


def test_heavy_healthy_load_is_neither_stalled_nor_crawling() -> None:
    samples = [(100.0 + i, stat(0, 10 + 200 * i, (0, 32), write_ms=150 * 200 * i)) for i in range(60)]
    clock = looks(*samples)
    assert hung.clock_ages(clock, 159) == (0, 0, None)


def test_counters_that_go_backwards_start_over() -> None:
    clock = looks((100, stat(120, 50, (0, 1))), (110, stat(120, 50, (0, 1))), (120, stat(3, 1, (0, 1))))
    assert hung.clock_ages(clock, 120)[0] == 0


def test_dd_reports() -> None:
    coreutils = "1+0 records in\n1+0 records out\n4096 bytes (4.1 kB, 4.0 KiB) copied, 0.000220879 s, 18.5 MB/s\n"
    assert parse_report(coreutils) == (True, 0.000220879, None)
    assert parse_report("1+0 records in\n1+0 records out\n") == (True, None, None)  # busybox without the third line
    ok, _, error = parse_report("dd: error reading '/dev/sdb': Input/output error\n0+0 records in\n")
    assert not ok and error == "dd: error reading '/dev/sdb': Input/output error"
    assert parse_report("") == (False, None, "no report")


def test_a_probe_is_a_real_dd_read(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/vdz").write_bytes(b"x" * 65536)
    (tmp_path / "sys/class/block/vdz").mkdir(parents=True)
    (tmp_path / "sys/class/block/vdz/size").write_text("128\n")
    prober = Prober(Host(tmp_path), StateStore(None), tmp_path / "probes", 0)
    assert prober.poll("vdz", 1000.0) == ProbeStatus(None)  # nothing to report yet: one is started
    for _ in range(200):
        status = prober.poll("vdz", 1001.0)
        if status.last_ok is not None:
            break
        time.sleep(0.01)
    # O_DIRECT on the test's filesystem either works or is refused; either way dd's answer is read
    assert status.last_ok is True or "Invalid argument" in (status.last_error or "")
    assert list((tmp_path / "probes").iterdir()) == [next((tmp_path / "probes").iterdir())]  # the next one's


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
    snap = sata_mirror(tmp_path)
    snap.write("sys/devices/virtual/block/md0/md/array_state", "write-pending\n")
    snap.link("sys/block/md0", "../devices/virtual/block/md0")
    state = StateStore(None)
    config = hung.Config(hung_after=30)
    first = CheckContext(Host(tmp_path), CheckContext.for_host(Host(tmp_path)).inventory, state, now=1000.0)
    assert hung.run(first, config) == []
    (member_dir(tmp_path, "sdb") / "inflight").write_text("0 1\n")  # a write held; nothing completes
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


def test_the_daemon_sampler_runs_the_check_the_second_a_clock_reaches_hung_after(tmp_path: Path) -> None:
    sata_mirror(tmp_path)
    host, state, volatile = Host(tmp_path), StateStore(None), {}  # type: ignore[var-annotated]
    config = hung.Config()

    def at(now: float) -> CheckContext:
        return CheckContext(host, CheckContext.for_host(host).inventory, state, now=now, volatile=volatile)

    assert hung.run(at(1000.0), config) == []
    assert volatile["hung.members"] == ["sda1", "sdb1"]
    (member_dir(tmp_path, "sdb") / "inflight").write_text("0 1\n")
    due = [(now, hung.sample(at(now), config)) for now in (1001.0, 1002.0, 1020.0, 1021.0, 1022.0)]
    assert due == [(1001.0, []), (1002.0, []), (1020.0, []), (1021.0, ["sdb1"]), (1022.0, ["sdb1"])]
    [finding] = hung.run(at(1021.5), config)
    assert finding.subject == "md0/sdb1" and "none completed for 20 s" in finding.detail
    assert hung.sample(at(1023.0), config) == []  # reported: not asked for again every second


def test_scsi_and_nvme_layers_end_held_io_before_taking_the_device_away(tmp_path: Path) -> None:
    snap = HostSnapshot(tmp_path)
    snap.disk("sda")
    snap.disk("sdb", timeout=180)  # disk tune's timeout for a disk without ERC
    scsi = device_layer(Host(tmp_path), "sda", [])
    assert scsi.steps == (("sysfs-write", "/sys/block/sda/device/state", "offline"),)
    assert scsi.fallback == (("sysfs-write", "/sys/block/sda/device/delete", "1"),)
    assert scsi.settle == 2 * 30 + 5  # a cache flush may take twice the command timeout
    assert device_layer(Host(tmp_path), "sdb", []).settle == 120  # the daemon's loop waits no longer
    pci = "devices/pci0000:00/0000:00:03.0"
    for name, fabrics in (("nvme0", False), ("nvme1", True)):
        snap.write(f"sys/{pci}/nvme/{name}/{name}n1/size", "131072\n")
        snap.write(f"sys/{pci}/nvme/{name}/reset_controller", "")
        if fabrics:
            snap.write(f"sys/{pci}/nvme/{name}/delete_controller", "")
        snap.link(f"sys/{pci}/nvme/{name}/{name}n1/device", f"../../{name}")
        snap.link(f"sys/block/{name}n1", f"../{pci}/nvme/{name}/{name}n1")
        snap.link(f"sys/class/block/{name}n1", f"../../{pci}/nvme/{name}/{name}n1")
        snap.link(f"sys/class/nvme/{name}", f"../../{pci}/nvme/{name}")
    pcie, fabric = device_layer(Host(tmp_path), "nvme0n1", []), device_layer(Host(tmp_path), "nvme1n1", [])
    assert pcie.steps == (("sysfs-write", "/sys/class/nvme/nvme0/reset_controller", "1"),)
    # the kernel gives a PCIe controller no delete_controller: its PCI function is removed instead
    assert pcie.fallback == (("sysfs-write", "/sys/class/nvme/nvme0/device/remove", "1"),)
    assert fabric.fallback == (("sysfs-write", "/sys/class/nvme/nvme1/delete_controller", "1"),)


def test_a_stored_clock_of_another_shape_starts_over(tmp_path: Path) -> None:
    sata_mirror(tmp_path)
    host, state = Host(tmp_path), StateStore(None)
    for junk in ({"t": "yesterday", "reads": 3}, [1, 2], {"t": 1.0, "reads": {}, "writes": None}, "x"):
        state.put("hung.clock.sdb1", junk)
        ctx = CheckContext(host, CheckContext.for_host(host).inventory, state, now=1000.0)
        assert hung.run(ctx, hung.Config()) == []
        assert state.get("hung.clock.sdb1")["t"] == 1000.0  # a fresh clock replaced it


def test_a_probe_record_of_another_shape_is_forgotten(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/vdz").write_bytes(b"x" * 8192)
    state = StateStore(None)
    prober = Prober(Host(tmp_path), state, tmp_path / "probes", 0)
    for junk in ({"pid": "1"}, [1], {"pid": 1, "started": 0.0}, 7):
        state.put("hung.probe.vdz", junk)
        state.put("hung.probe_done.vdz", "junk")
        assert prober.poll("vdz", 1000.0) == ProbeStatus(None)  # no outstanding probe; a new one started
        assert state.get("hung.probe.vdz")["pid"] > 0


def test_a_member_far_slower_than_its_usual_is_slow_not_hung(tmp_path: Path) -> None:
    """disk.slow: sdb1 goes from 10 ms to 800 ms of busy time per completed I/O; nothing is stuck."""
    sata_mirror(tmp_path)
    host, state = Host(tmp_path), StateStore(None)

    def run_at(now: float, sdb: str) -> list[Any]:
        (member_dir(tmp_path, "sdb") / "stat").write_text(sdb)
        return hung.run(CheckContext(host, CheckContext.for_host(host).inventory, state, now=now), hung.Config())

    # fields: reads, merges, sectors, read ms, writes, merges, sectors, write ms, in flight, io_ticks ms
    assert run_at(1000.0, "100 0 800 100 50 0 400 50 0 1000 150 0 0 0 0 0 0\n") == []
    assert run_at(1060.0, "150 0 1200 600 150 0 1200 550 0 2500 1150 0 0 0 0 0 0\n") == []  # 10 ms: the usual
    [finding] = run_at(1120.0, "155 0 1240 4600 155 0 1240 4550 0 10500 9150 0 0 0 0 0 0\n")
    assert (finding.code, finding.subject, finding.severity.name) == ("disk.slow", "md0/sdb1", "WARNING")
    assert finding.summary == "sdb1 in md0 takes 800 ms per I/O, 80x its usual 10.0 ms"
