"""md sysfs: every real sample parsed, the kernel's multi-flag states, and sysfs authority."""

from __future__ import annotations

import pytest

from hostagent.errors import ParseError
from hostagent.host import Host
from hostagent.inventory import merge_array, read_arrays
from hostagent.sources.mdstat import parse_mdstat
from hostagent.sources.mdsysfs import parse_md_sysfs
from tests.helpers import FIXTURES

SYSFS_ROOT = FIXTURES / "sysfs-md/prometheus-procfs"

# name: (level, state, raid_disks, degraded_disks, [(device, slot, states)], sync action, progress)
EXPECTED = {
    "md0": ("raid0", "clean", 2, 0, [("sdg", 0, ["in_sync"]), ("sdh", 1, ["in_sync"])], "idle", None),
    "md1": ("raid1", "clean", 2, 0, [("sdi", 0, ["in_sync"]), ("sdj", 1, ["in_sync"])], "idle", None),
    "md10": ("raid10", "clean", 4, 0,
             [("sdu", 0, ["in_sync"]), ("sdv", 1, ["in_sync"]), ("sdw", 2, ["in_sync"]), ("sdx", 3, ["in_sync"])],
             "idle", None),
    "md4": ("raid4", "clean", 3, 0, [("sdk", 0, ["in_sync"]), ("sdl", 1, ["in_sync"]), ("sdm", 2, ["in_sync"])],
            "idle", None),
    "md5": ("raid5", "clean", 3, 1,
            [("sdn", 0, ["in_sync"]), ("sdo", 1, ["in_sync"]), ("sdp", 2, ["faulty"]), ("sdaa", None, ["spare"])],
            "idle", None),
    "md6": ("raid6", "active", 4, 1,
            [("sdq", 0, ["in_sync"]), ("sdr", 1, ["in_sync"]), ("sds", 2, ["in_sync"]), ("sdt", 3, ["rebuilding"])],
            "recover", 1569888 / 2093056),
    "md7": ("container", "inactive", None, 0, [], "idle", None),
    "md8": ("raid5", "active", 11, 0, [("sdy", None, ["in_sync"]), ("sdz", None, ["in_sync"])], "reshape", None),
}


def test_every_sample_array_is_read() -> None:
    assert sorted(a.name for a in read_arrays(Host(SYSFS_ROOT))) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_parses_to_expected(name: str) -> None:
    arrays = {a.name: a.to_json() for a in read_arrays(Host(SYSFS_ROOT))}
    got = arrays[name]
    level, state, raid_disks, degraded, members, action, progress = EXPECTED[name]
    assert (got["level"], got["state"], got["raid_disks"]) == (level, state, raid_disks)
    assert got["degraded_disks"] == degraded
    assert got["degraded"] is (degraded > 0)
    assert [(m["device"], m["slot"], m["states"]) for m in got["members"]] == members
    assert got["sync"]["action"] == action
    assert got["sync"]["progress"] == progress


def test_reshape_raid_disks_keeps_the_old_count() -> None:
    parsed = parse_md_sysfs("md8", {"raid_disks": "11 (10)\n"}, {}, {}, source="/sys/block/md8/md")
    assert (parsed.raid_disks, parsed.raid_disks_before_reshape) == (11, 10)


def test_member_state_with_several_flags() -> None:
    parsed = parse_md_sysfs(
        "md0", {"level": "raid1\n"},
        {"sda1": {"state": "in_sync,write_mostly,failfast\n", "slot": "0\n", "errors": "3\n"},
         "sdb1": {"state": "faulty,blocked,write_error\n", "slot": "none\n"}},
        {}, source="/sys/block/md0/md",
    )
    assert [(m.device, m.slot, m.states, m.errors) for m in parsed.members] == [
        ("sda1", 0, ("in_sync", "write_mostly", "failfast"), 3),
        ("sdb1", None, ("faulty", "blocked", "write_error"), None),
    ]


@pytest.mark.parametrize(
    ("attrs", "members", "links", "message"),
    [
        ({"degraded": "one\n"}, {}, {}, "degraded:1: expected a number"),
        ({"raid_disks": "2 3\n"}, {}, {}, "raid_disks:1: expected 'N' or 'N \\(M\\)'"),
        ({"sync_completed": "12 of 40\n"}, {}, {}, "sync_completed:1: expected 'N / M'"),
        ({}, {"sda1": {"slot": "first\n"}}, {}, "dev-sda1/slot:1: expected a number"),
        ({}, {}, {0: "../../sda1"}, "rd0: link points to"),
    ],
)
def test_malformed_sysfs_raises(attrs: dict[str, str], members: dict[str, dict[str, str]],
                                links: dict[int, str], message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_md_sysfs("md0", attrs, members, links, source="/sys/block/md0/md")


def test_sysfs_is_the_authority_over_mdstat() -> None:
    stat = parse_mdstat(
        "Personalities : [raid1]\nmd0 : active raid1 sdb1[1] sda1[0]\n"
        "      100 blocks super 1.2 [2/2] [UU]\n"
        "      [=>...................]  resync =  5.0% (5/100) finish=1.0min speed=10K/sec\n"
    ).arrays[0]
    sysfs = parse_md_sysfs(
        "md0",
        {"level": "raid1\n", "array_state": "active\n", "raid_disks": "2\n", "degraded": "1\n",
         "sync_action": "repair\n", "sync_completed": "50 / 200\n", "sync_speed": "20\n"},
        {"sda1": {"state": "in_sync\n", "slot": "0\n"}, "sdb1": {"state": "faulty\n", "slot": "1\n"}},
        {}, source="/sys/block/md0/md",
    )
    merged = merge_array("md0", stat, sysfs).to_json()
    assert merged["state"] == "active"
    assert merged["degraded"] is True and merged["active_disks"] == 1
    assert [(m["device"], m["states"]) for m in merged["members"]] == [("sda1", ["in_sync"]), ("sdb1", ["faulty"])]
    # mdstat prints a repair as "resync"; sysfs names it, and its counters win
    assert merged["sync"] == {"action": "repair", "progress": 0.25, "speed_kbps": 20, "eta_s": 4}


def test_delayed_resync_from_either_source() -> None:
    sysfs = parse_md_sysfs("md1", {"sync_action": "resync\n", "sync_completed": "delayed\n"}, {}, {}, source="x")
    assert merge_array("md1", None, sysfs).sync.action == "delayed"
