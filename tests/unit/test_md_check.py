"""checks/md.py: findings per real fixture, and the md.degraded severity rules per level."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType

import pytest

from checks import md
from hostagent.context import CheckContext
from hostagent.host import Host
from hostagent.inventory import MdArray, MdMember, MdSync, merge_array, raid10_copy_sets
from hostagent.model import Severity
from hostagent.sources.mdstat import parse_mdstat
from tests.helpers import FIXTURES

# (code, subject, severity) per fixture, reasoned from each file's arrays.
EXPECTED = {
    "check_raid/issue64": [
        ('md.read_only', 'md2', 'INFO'),
        ('md.read_only', 'md0', 'INFO'),
    ],
    "check_raid/mdstat-failed": [
        ('md.degraded', 'md0', 'CRITICAL'),
        ('md.failed_member', 'md0/sdc1', 'WARNING'),
    ],
    "check_raid/pr28_0": [
        ('md.degraded', 'md0', 'CRITICAL'),
        ('md.recovering', 'md0', 'WARNING'),
    ],
    "check_raid/pr28_1": [
        ('md.degraded', 'md1', 'CRITICAL'),
        ('md.degraded', 'md0', 'CRITICAL'),
        ('md.recovering', 'md0', 'WARNING'),
    ],
    "check_raid/pr77": [
        ('md.resync_pending', 'md1', 'INFO'),
    ],
    "diamond/mdstat_empty": [
    ],
    "diamond/mdstat_linear": [
    ],
    "diamond/mdstat_multipath": [
    ],
    "diamond/mdstat_multiple": [
    ],
    "diamond/mdstat_raid1": [
    ],
    "diamond/mdstat_raid1-failed": [
        ('md.degraded', 'md0', 'CRITICAL'),
        ('md.failed_member', 'md0/sda2', 'WARNING'),
    ],
    "diamond/mdstat_raid1-recover": [
        ('md.degraded', 'md0', 'CRITICAL'),
        ('md.recovering', 'md0', 'WARNING'),
    ],
    "diamond/mdstat_raid1-spare": [
    ],
    "diamond/mdstat_raid5": [
    ],
    "libstorage-ng/md+lvm1-mockup.mdstat": [
    ],
    "libstorage-ng/md-ddf1-mockup.mdstat": [
        ('md.read_only', 'md125', 'INFO'),
    ],
    "libstorage-ng/md-imsm1-mockup.mdstat": [
    ],
    "libstorage-ng/md1-mockup.mdstat": [
    ],
    "libstorage-ng/md2-mockup.mdstat": [
    ],
    "libstorage-ng/md3-mockup.mdstat": [
    ],
    "prometheus-procfs/proc-mdstat": [
        ('md.inactive', 'md4', 'CRITICAL'),
        ('md.degraded', 'md6', 'CRITICAL'),
        ('md.failed_member', 'md6/sdb2', 'WARNING'),
        ('md.recovering', 'md6', 'WARNING'),
        ('md.recovering', 'md8', 'WARNING'),
        ('md.degraded', 'md7', 'WARNING'),
        ('md.failed_member', 'md7/sdc1', 'WARNING'),
        ('md.failed_member', 'md9/sde', 'WARNING'),
        ('md.failed_member', 'md9/sdf', 'WARNING'),
        ('md.resync_pending', 'md9', 'INFO'),
        ('md.failed_member', 'md11/sdc3', 'WARNING'),
        ('md.resync_pending', 'md11', 'INFO'),
        ('md.read_only', 'md11', 'INFO'),
        ('md.read_only', 'md101', 'WARNING'),
        ('md.degraded', 'md42', 'CRITICAL'),
        ('md.recovering', 'md42', 'WARNING'),
    ],
    "pymdstat/mdstat.01": [
    ],
    "pymdstat/mdstat.02": [
    ],
    "pymdstat/mdstat.03": [
        ('md.degraded', 'md0', 'CRITICAL'),
    ],
    "pymdstat/mdstat.04": [
    ],
    "pymdstat/mdstat.05": [
        ('md.degraded', 'md127', 'CRITICAL'),
        ('md.recovering', 'md127', 'WARNING'),
    ],
    "pymdstat/mdstat.06": [
    ],
    "pymdstat/mdstat.07": [
        ('md.degraded', 'md1', 'WARNING'),
        ('md.failed_member', 'md1/sde1', 'WARNING'),
    ],
    "pymdstat/mdstat.08": [
        ('md.inactive', 'md0', 'CRITICAL'),
    ],
    "pymdstat/mdstat.09": [
        ('md.inactive', 'md2', 'CRITICAL'),
    ],
    "pymdstat/mdstat.10": [
    ],
    "pymdstat/mdstat.11": [
        ('md.inactive', 'md127', 'CRITICAL'),
    ],
    "pymdstat/mdstat.12": [
    ],
    "pymdstat/mdstat.13": [
        ('md.degraded', 'md127', 'CRITICAL'),
        ('md.recovering', 'md127', 'WARNING'),
    ],
    "pymdstat/mdstat.14": [
    ],
    "pymdstat/mdstat.15": [
    ],
    "pymdstat/mdstat.16": [
    ],
}


def findings_for(path: str, config: md.Config | None = None) -> list[tuple[str, str, str]]:
    parsed = parse_mdstat((FIXTURES / "mdstat" / path).read_text(errors="replace"))
    return [
        (f.code, f.subject, f.severity.name)
        for a in parsed.arrays
        for f in md.evaluate(merge_array(a.name, a, None), config or md.Config())
    ]


@pytest.mark.parametrize("path", sorted(EXPECTED))
def test_findings_per_fixture(path: str) -> None:
    assert findings_for(path) == EXPECTED[path]


def test_failed_member_names_the_device_and_remedy() -> None:
    parsed = parse_mdstat((FIXTURES / "mdstat/check_raid/mdstat-failed").read_text())
    findings = md.evaluate(merge_array("md0", parsed.arrays[0], None), md.Config())
    member = next(f for f in findings if f.code == "md.failed_member")
    assert "sdc1" in member.summary
    assert member.remedy is not None
    assert member.remedy.commands == (("mdadm", "--manage", "/dev/md0", "--remove", "/dev/sdc1"),
                                      ("hostagent", "disk", "locate", "sdc", "--apply"),
                                      ("hostagent", "disk", "replace", "--old", "sdc", "--new", "NEW"))
    assert member.headline == "sdc1 failed in md0"


def test_recovering_reports_progress_speed_and_eta() -> None:
    parsed = parse_mdstat((FIXTURES / "mdstat/pymdstat/mdstat.05").read_text())
    finding = next(f for f in md.evaluate(merge_array("md127", parsed.arrays[0], None), md.Config())
                   if f.code == "md.recovering")
    assert "12.6% done" in finding.summary
    assert "33440 KiB/s" in finding.summary
    assert "about 2 h 7 min left" in finding.summary


def test_sysfs_only_snapshot() -> None:
    ctx = CheckContext.for_host(Host(FIXTURES / "sysfs-md/prometheus-procfs"))
    found = [(f.code, f.subject, f.severity.name) for f in md.run(ctx, md.Config())]
    assert found == [
        ("md.degraded", "md5", "CRITICAL"),
        ("md.failed_member", "md5/sdp", "WARNING"),
        ("md.degraded", "md6", "WARNING"),
        ("md.recovering", "md6", "WARNING"),
        ("md.recovering", "md8", "WARNING"),
    ]


def test_ignore_arrays() -> None:
    ctx = CheckContext.for_host(Host(FIXTURES / "sysfs-md/prometheus-procfs"))
    found = {f.subject for f in md.run(ctx, md.Config(ignore_arrays=("md5", "md6")))}
    assert found == {"md8"}


# -- md.degraded severity rules, per level -------------------------------------------------


def array(level: str, raid_disks: int, missing: tuple[int, ...], **extra: object) -> MdArray:
    members = tuple(
        MdMember(f"sd{chr(97 + i)}1", i, ("faulty",) if i in missing else ("in_sync",)) for i in range(raid_disks)
    )
    return MdArray(name="md9", level=level, state="clean", read_only=None, raid_disks=raid_disks,
                   degraded_disks=len(missing), members=members, sync=MdSync("idle"), **extra)  # type: ignore[arg-type]


def degraded_severity(a: MdArray) -> str | None:
    codes = {f.code: f.severity.name for f in md.evaluate(a, md.Config())}
    return codes.get("md.degraded") or ("FAILED" if "md.failed" in codes else None)


@pytest.mark.parametrize(
    ("level", "disks", "missing", "expected"),
    [
        ("raid1", 2, (), None),
        ("raid1", 2, (1,), "CRITICAL"),
        ("raid1", 2, (0, 1), "FAILED"),
        ("raid1", 3, (0,), "WARNING"),
        ("raid1", 3, (0, 2), "CRITICAL"),
        ("raid1", 4, (1, 2), "WARNING"),
        ("raid4", 3, (2,), "CRITICAL"),
        ("raid5", 3, (0,), "CRITICAL"),
        ("raid5", 4, (0, 1), "FAILED"),
        ("raid6", 4, (0,), "WARNING"),
        ("raid6", 4, (0, 3), "CRITICAL"),
        ("raid6", 5, (0, 1, 2), "FAILED"),
        ("raid10", 4, (0,), "CRITICAL"),
        ("raid10", 4, (0, 2), "CRITICAL"),
        ("raid10", 4, (0, 1), "FAILED"),
        ("multipath", 2, (1,), "CRITICAL"),
    ],
)
def test_degraded_severity_rules(level: str, disks: int, missing: tuple[int, ...], expected: str | None) -> None:
    assert degraded_severity(array(level, disks, missing)) == expected


def test_raid10_with_three_copies_keeps_redundancy_after_one_loss() -> None:
    assert degraded_severity(array("raid10", 6, (0,), near_copies=3)) == "WARNING"
    assert degraded_severity(array("raid10", 6, (0, 1), near_copies=3)) == "CRITICAL"
    assert degraded_severity(array("raid10", 6, (0, 3), near_copies=3)) == "WARNING"


def test_raid10_copy_sets_follow_the_kernel_layouts() -> None:
    assert raid10_copy_sets(4, 2, 1) == [frozenset({0, 1}), frozenset({2, 3})]
    assert raid10_copy_sets(3, 2, 1) == [frozenset({0, 1}), frozenset({0, 2}), frozenset({1, 2})]
    # far 2 over 4 disks: the far copy of device d's chunk sits on d+1
    assert raid10_copy_sets(4, 1, 2) == [frozenset({0, 1}), frozenset({0, 3}), frozenset({1, 2}), frozenset({2, 3})]


def test_raid0_and_linear_that_lost_a_member_have_failed() -> None:
    broken = MdArray(name="md3", level="raid0", state="broken", read_only=None, raid_disks=2, degraded_disks=0,
                     members=(), sync=MdSync("idle"), broken=True)
    assert [f.code for f in md.evaluate(broken, md.Config())] == ["md.failed"]
    text = "Personalities : [linear]\nmd1 : broken linear sda1[0]\n      10 blocks super 1.2 0k rounding\n"
    parsed = parse_mdstat(text)
    merged = merge_array("md1", parsed.arrays[0], None)
    assert [(f.code, f.severity) for f in md.evaluate(merged, md.Config())] == [("md.failed", Severity.CRITICAL)]


def test_mismatch_threshold_and_ignored_levels() -> None:
    raid5 = array("raid5", 3, (), mismatch_cnt=128)
    raid1 = array("raid1", 2, (), mismatch_cnt=128)
    assert [f.code for f in md.evaluate(raid5, md.Config())] == ["md.mismatch"]
    assert md.evaluate(raid5, md.Config(mismatch_threshold=128)) == []
    assert md.evaluate(raid1, md.Config()) == []
    assert [f.code for f in md.evaluate(raid1, md.Config(mismatch_ignore_levels=()))] == ["md.mismatch"]


def test_spares_missing_against_expected_count() -> None:
    with_spare = parse_mdstat((FIXTURES / "mdstat/diamond/mdstat_raid1-spare").read_text()).arrays[0]
    merged = merge_array("md0", with_spare, None)
    assert md.evaluate(merged, md.Config(expected_spares=MappingProxyType({"md0": 1}))) == []
    missing = md.evaluate(merged, md.Config(expected_spares=MappingProxyType({"*": 2})))
    assert [(f.code, f.severity) for f in missing] == [("md.spares_missing", Severity.WARNING)]
    assert "1 hot spare(s), 2 expected" in missing[0].summary


def test_a_recovery_with_nothing_to_rebuild_onto_is_md_passing_through() -> None:
    """Right after a member fails, md sets sync_action "recover" until it finds no spare: that moment
    is no finding (it would be mailed, then resolved within a second); a real rebuild still is."""
    failed = dataclasses.replace(array("raid1", 2, (1,)), sync=MdSync("recover"))
    assert "md.recovering" not in [f.code for f in md.evaluate(failed, md.Config())]
    onto = MdMember("sdc1", 1, ("spare",))
    rebuilding = dataclasses.replace(failed, members=(MdMember("sda1", 0, ("in_sync",)), onto))
    assert "md.recovering" in [f.code for f in md.evaluate(rebuilding, md.Config())]
    # sync_completed "0 / N" while md looks for a spare: no more evidence than no progress at all
    for nothing_yet in (0.0, None):
        passing = dataclasses.replace(failed, sync=MdSync("recover", progress=nothing_yet))
        assert "md.recovering" not in [f.code for f in md.evaluate(passing, md.Config())], nothing_yet
    with_progress = dataclasses.replace(failed, sync=MdSync("recover", progress=0.1))
    assert "md.recovering" in [f.code for f in md.evaluate(with_progress, md.Config())]


def test_an_array_inactive_for_less_than_the_grace_is_assembling_in_the_daemon_only(tmp_path: Path) -> None:
    """The daemon (ctx.volatile with RECHECK) waits ``inactive_grace`` before md.inactive, and asks for
    the look that ends the wait; a one-shot run, which nothing follows, says md.inactive at once."""
    from hostagent.context import RECHECK

    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/mdstat").write_bytes((FIXTURES / "mdstat/pymdstat/mdstat.08").read_bytes())
    config = md.Config(inactive_grace=30.0)

    def ctx(volatile: dict[str, object] | None) -> CheckContext:
        c = CheckContext.for_host(Host(tmp_path))
        c.volatile = volatile
        return c

    assert [(f.code, f.severity) for f in md.run(ctx(None), config)] == [("md.inactive", Severity.CRITICAL)]
    assert [(f.code, f.severity) for f in md.run(ctx({}), config)] == [("md.inactive", Severity.CRITICAL)]
    volatile: dict[str, object] = {RECHECK: {}}
    [young] = md.run(ctx(volatile), config)
    assert (young.code, young.severity, young.subject) == ("md.assembling", Severity.INFO, "md0")
    rechecks = volatile[RECHECK]
    assert isinstance(rechecks, dict) and set(rechecks) == {"md"}
    since = volatile["md:inactive_since"]
    assert isinstance(since, dict) and rechecks["md"] == since["md0"] + 30.0
    since["md0"] -= 31.0  # it has stayed inactive through the grace
    assert [(f.code, f.severity) for f in md.run(ctx(volatile), config)] == [("md.inactive", Severity.CRITICAL)]
    assert rechecks == {}  # nothing more to wait for: no look every 250 ms


def test_settle_forgets_an_array_that_became_active() -> None:
    since: dict[str, float] = {}
    [stat] = parse_mdstat((FIXTURES / "mdstat/pymdstat/mdstat.08").read_text()).arrays
    inactive = md._inactive(merge_array(stat.name, stat, None))
    assert [f.code for f in md.settle("md0", [inactive], since, 100.0, 30.0)] == ["md.assembling"]
    assert [f.code for f in md.settle("md0", [inactive], since, 129.0, 30.0)] == ["md.assembling"]
    assert md.settle("md0", [], since, 129.5, 30.0) == [] and since == {}
    # seen inactive again later: the grace starts again, and runs out
    assert [f.code for f in md.settle("md0", [inactive], since, 200.0, 30.0)] == ["md.assembling"]
    assert [f.code for f in md.settle("md0", [inactive], since, 230.0, 30.0)] == ["md.inactive"]
    assert [f.code for f in md.settle("md0", [inactive], {}, 0.0, 0.0)] == ["md.inactive"]  # no grace
