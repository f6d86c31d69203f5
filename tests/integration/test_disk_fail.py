"""hostagent disk fail: the ladder as a dry run, and the interlocks, on snapshots."""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_cli import hostagent
from tests.snapshots import HostSnapshot


def snapshot(root: Path, members: str, slots: str) -> HostSnapshot:
    snap = HostSnapshot(root)
    snap.disk("sda", partitions=("sda1",))
    snap.disk("sdb", partitions=("sdb1",))
    snap.mdstat(f"Personalities : [raid1]\nmd0 : active raid1 {members}\n      1000 blocks super 1.2 {slots}\n")
    return snap


def test_dry_run_shows_the_whole_ladder(tmp_path: Path) -> None:
    snap = snapshot(tmp_path / "s", "sda1[0] sdb1[1]", "[2/2] [UU]")
    proc = hostagent("disk", "fail", "/dev/sdb1", "--root", str(snap.root))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:4] == [
        "[dry run] $ mdadm --manage /dev/md0 --fail /dev/sdb1",
        "[dry run] $ sysfs-write /sys/block/sdb/device/state offline",
        "[dry run] $ sysfs-write /sys/block/sdb/device/delete 1",
        "[dry run] $ mdadm --manage /dev/md0 --remove failed",
    ]
    assert "dry run: nothing was changed" in proc.stdout


def test_the_last_in_sync_member_is_refused(tmp_path: Path) -> None:
    snap = snapshot(tmp_path / "s", "sda1[0]", "[2/1] [U_]")
    proc = hostagent("disk", "fail", "sda1", "--root", str(snap.root))
    assert proc.returncode == 3
    assert "refusing to fail sda1 in md0: sda1 holds the last in-sync copy of some of md0's data" in proc.stderr


def test_unknown_member_and_applying_to_a_snapshot(tmp_path: Path) -> None:
    snap = snapshot(tmp_path / "s", "sda1[0] sdb1[1]", "[2/2] [UU]")
    unknown = hostagent("disk", "fail", "sdc1", "--root", str(snap.root))
    assert unknown.returncode == 3 and "sdc1 is not a member in any array" in unknown.stderr
    applied = hostagent("disk", "fail", "sdb1", "--apply", "--root", str(snap.root))
    assert applied.returncode == 3 and "nothing can be applied to it" in applied.stderr
    act = hostagent("check", "--act", "--root", str(snap.root))
    assert act.returncode == 3 and "--act changes the host" in act.stderr


CRAFTED = "sdq;touch${IFS}PWNED;"


def test_a_crafted_member_name_never_reaches_a_command(tmp_path: Path) -> None:
    """A snapshot whose mdstat or sysfs names a device with shell syntax: a clear error naming the
    file, and no step is planned (the name once reached ``sh -c`` in the ladder's dry run)."""
    snap = snapshot(tmp_path / "s", f"sda1[0] {CRAFTED}[1]", "[2/2] [UU]")
    proc = hostagent("disk", "fail", "sda1", "--root", str(snap.root))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "mdstat" in proc.stderr and "cannot read member" in proc.stderr, proc.stderr
    assert "sysfs-write" not in proc.stdout and "PWNED" not in proc.stdout

    listed = snapshot(tmp_path / "l", "sda1[0] sdb1[1]", "[2/2] [UU]")
    listed.write(f"sys/block/{CRAFTED}/size", "8\n")
    proc = hostagent("disk", "fail", "sdb1", "--root", str(listed.root))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "/sys/block" in proc.stderr and "is not a kernel device name" in proc.stderr, proc.stderr
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


def test_a_device_argument_outside_the_kernels_naming_is_refused(tmp_path: Path) -> None:
    snap = snapshot(tmp_path / "s", "sda1[0] sdb1[1]", "[2/2] [UU]")
    for argv in (["sdb1;id"], ["$(id)"], ["../sdb1"], ["sdb1", "--array", "md0`id`"]):
        proc = hostagent("disk", "fail", *argv, "--root", str(snap.root))
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert "is not a device name" in proc.stderr and "[dry run]" not in proc.stdout, (argv, proc.stderr)
