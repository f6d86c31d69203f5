"""parse_mdstat over every real sample, and a table of malformed inputs that must raise."""

from __future__ import annotations

import pytest

from hostagent.errors import ParseError
from hostagent.sources.mdstat import parse_mdstat
from tests.helpers import FIXTURES, summarize

# One line per array, checked by reading each fixture (see tests/helpers.summarize).
EXPECTED = {
    "check_raid/issue64": [
        "md2 active (auto-read-only) raid1 | sdc3[0] sdd3[1] | 1757700984b | super=1.2 | [2/2] [UU]",
        "md1 active raid1 | sdc2[0] sdd2[1] | 195311544b | super=1.2 | [2/2] [UU]",
        "md0 active (auto-read-only) raid1 | sdc1[0] sdd1[1] | 498676b | super=1.2 | [2/2] [UU]",
    ],
    "check_raid/mdstat-failed": [
        "md0 active raid5 | sdc1[3](faulty) sdb1[0] sdd1[2] | 8385664b | [3/2] [U_U] | chunk=64k",
    ],
    "check_raid/pr28_0": [
        "md1 active raid1 | sda2[0] sdb2[1] | 972574976b | [2/2] [UU]",
        "md0 active raid1 | sda1[2] sdb1[1] | 208704b | [2/1] [_U] | sync=recovery:0.004@12/eta16614",
    ],
    "check_raid/pr28_1": [
        "md1 active raid1 | sdb2[1] | 972574976b | [2/1] [_U]",
        "md0 active raid1 | sda1[2] sdb1[1] | 208704b | [2/1] [_U] | sync=recovery:0.036@12/eta15576",
    ],
    "check_raid/pr77": [
        "md1 active raid1 | sda2[0] sdb2[1] | 467282752b | super=1.1 | [2/2] [UU] | sync=delayed | bitmap=0/4",
        "md0 active raid1 | sda1[0] sdb1[1] | 20971392b | super=1.0 | [2/2] [UU] | sync=check:0.064@97293/eta198 | bitmap=1/1",
    ],
    "diamond/mdstat_empty": [
    ],
    "diamond/mdstat_linear": [
        "md0 active linear | sda1[1] sda2[0] | 199800b | super=1.2",
    ],
    "diamond/mdstat_multipath": [
        "md0 active multipath | sda1[0] sda2[1] | 102320b | super=1.2 | [2/2] [UU]",
    ],
    "diamond/mdstat_multiple": [
        "md0 active raid5 | sda1[0] sda2[2] sda3[1] | 39058432b | super=1.2 | [3/3] [UUU] | chunk=512k",
        "md1 active linear | sda1[1] sda2[0] | 199800b | super=1.2",
        "md2 active multipath | sda1[0] sda2[1] | 102320b | super=1.2 | [2/2] [UU]",
    ],
    "diamond/mdstat_raid1": [
        "md0 active raid1 | sda1[1] sda2[0] | 100171776b | super=1.2 | [2/2] [UU] | bitmap=1/1",
    ],
    "diamond/mdstat_raid1-failed": [
        "md0 active raid1 | sda1[0] sda2[1](faulty) | 102272b | super=1.2 | [2/1] [U_]",
    ],
    "diamond/mdstat_raid1-recover": [
        "md0 active raid1 | sda1[2] sda2[0] | 102272b | super=1.2 | [2/1] [U_] | sync=recovery:0.995@102272/eta802 | bitmap=1/1",
    ],
    "diamond/mdstat_raid1-spare": [
        "md0 active raid1 | sda1[0] sda2[2](spare) sda3[1] | 100171776b | super=1.2 | [2/2] [UU] | bitmap=1/1",
    ],
    "diamond/mdstat_raid5": [
        "md0 active raid5 | sda1[0] sda2[2] sda3[1] | 39058432b | super=1.2 | [3/3] [UUU] | chunk=512k",
    ],
    "libstorage-ng/md+lvm1-mockup.mdstat": [
        "md0 active raid1 | sdd1[1] sdc1[0] | 29301632b | super=1.0 | [2/2] [UU] | bitmap=1/1",
        "md127 active raid1 | sdd2[1] sdc2[0] | 29301632b | super=1.0 | [2/2] [UU] | bitmap=1/1",
    ],
    "libstorage-ng/md-ddf1-mockup.mdstat": [
        "md125 active (auto-read-only) raid1 | sdb[1] sdd[0] | 5242880b | super=external:/md127/1 | [2/2] [UU]",
        "md126 active raid0 | sdb[1] sdd[0] | 10485760b | super=external:/md127/0 | chunk=512k",
        "md127 inactive - | sdb[2](spare) sdd[1](spare) sdc[0](spare) | 98304b | super=external:ddf",
    ],
    "libstorage-ng/md-imsm1-mockup.mdstat": [
        "md125 active raid1 | sdb[1] sdc[0] | 5242880b | super=external:/md127/1 | [2/2] [UU]",
        "md127 inactive - | sdd[2](spare) sdc[1](spare) sdb[0](spare) | 3315b | super=external:imsm",
        "md126 active raid0 | sdb[1] sdd[0] | 10485760b | super=external:/md127/0 | chunk=128k",
    ],
    "libstorage-ng/md1-mockup.mdstat": [
        "md0 active raid5 | sdc[4] sdd[3](spare) sda[0] sdb[1] | 33521664b | super=1.2 | [3/3] [UUU] | chunk=512k",
    ],
    "libstorage-ng/md2-mockup.mdstat": [
        "md0 active raid0 | md2[1] md1[0] | 33553408b | super=1.0 | chunk=512k",
        "md2 active raid1 | sdd[1] sdc[0] | 16777088b | super=1.0 | [2/2] [UU]",
        "md1 active raid1 | sdb[1] sda[0] | 16777088b | super=1.0 | [2/2] [UU]",
    ],
    "libstorage-ng/md3-mockup.mdstat": [
        "md_test5 active raid0 | sdb12[1] sdb11[0] | 3353600b | super=1.2 | chunk=512k",
        "md_test4 active raid0 | sdb10[1] sdb9[0] | 3353600b | super=1.2 | chunk=512k",
        "md126 active raid0 | sdb8[1] sdb7[0] | 3353600b | super=1.2 | chunk=512k",
        "md127 active raid0 | sdb6[1] sdb5[0] | 3352576b | super=1.2 | chunk=512k",
        "md1 active raid0 | sdb4[1] sdb3[0] | 3353600b | super=1.2 | chunk=512k",
        "md0 active raid0 | sdb2[1] sdb1[0] | 3352576b | super=1.2 | chunk=512k",
    ],
    "prometheus-procfs/proc-mdstat": [
        "md3 active raid6 | sda1[8] sdh1[7] sdg1[6] sdf1[5] sde1[11] sdd1[3] sdc1[10] sdb1[9] sdd1[10](spare) sdd2[11](spare) | 5853468288b | super=1.2 | [8/8] [UUUUUUUU] | chunk=64k",
        "md127 active raid1 | sdi2[0] sdj2[1] | 312319552b | [2/2] [UU]",
        "md0 active raid1 | sdi1[0] sdj1[1] | 248896b | [2/2] [UU]",
        "md4 inactive raid1 | sda3[0](faulty) sdb3[1](spare) | 4883648b | [2/2] [UU]",
        "md6 active raid1 | sdb2[2](faulty) sdc[1](spare) sda2[0] | 195310144b | [2/1] [U_] | sync=recovery:0.085@259783/eta1020",
        "md8 active raid1 | sdb1[1] sda1[0] sdc[2](spare) sde[3](spare) | 195310144b | [2/2] [UU] | sync=resync:0.085@259783/eta1020",
        "md201 active raid1 | sda3[0] sdb3[1] | 1993728b | super=1.2 | [2/2] [UU] | sync=check:0.057@114176/eta12",
        "md7 active raid6 | sdb1[0] sde1[3] sdd1[2] sdc1[1](faulty) | 7813735424b | super=1.2 | [4/3] [U_UU] | chunk=512k | bitmap=0/30",
        "md9 active raid1 | sdc2[2] sdd2[3] sdb2[1] sda2[0] sde[4](faulty) sdf[5](faulty) sdg[6](spare) | 523968b | super=1.2 | [4/4] [UUUU] | sync=delayed",
        "md10 active raid0 | sda1[0] sdb1[1] | 314159265b | chunk=64k",
        "md11 active (auto-read-only) raid1 | sdb2[0] sdc2[1] sdc3[2](faulty) hda[4](spare) ssdc2[3](spare) | 4190208b | super=1.2 | [2/2] [UU] | sync=pending",
        "md12 active raid0 | sdc2[0] sdd2[1] | 3886394368b | super=1.2 | chunk=512k",
        "md126 active raid0 | sdb[1] sdc[0] | 1855870976b | super=external:/md127/0 | chunk=128k",
        "md219 inactive - | sdb[2](spare) sdc[1](spare) sda[0](spare) | 7932b | super=external:imsm",
        "md00 active raid0 | xvdb[0] | 4186624b | super=1.2 | chunk=256k",
        "md120 active linear | sda1[1] sdb1[0] | 2095104b | super=1.2",
        "md101 active (read-only) raid0 | sdb[2] sdd[1] sdc[0] | 322560b | super=1.2 | chunk=512k",
        "md42 active raid5 | sda1[3](spare) sdd1[0] sde1[1] | 1953381440b | super=1.2 | [3/2] [UU_] | chunk=64k | sync=reshape:0.561@7640/eta112086 | bitmap=4/15",
    ],
    "pymdstat/mdstat.01": [
    ],
    "pymdstat/mdstat.02": [
        "md_d0 active raid5 | sde1[0] sdf1[4] sdb1[5] sdd1[2] sdc1[1] | 1250241792b | super=1.2 | [5/5] [UUUUU] | chunk=64k | bitmap=0/10",
    ],
    "pymdstat/mdstat.03": [
        "md0 active raid5 | sda1[0] sdd1[2] sdb1[1] | 1465151808b | [4/3] [UUU_] | chunk=64k",
    ],
    "pymdstat/mdstat.04": [
        "md1 active raid1 | sdb2[1] sda2[0] | 136448b | [2/2] [UU]",
        "md2 active raid1 | sdb3[1] sda3[0] | 129596288b | [2/2] [UU]",
        "md3 active raid5 | sdl1[9] sdk1[8] sdj1[7] sdi1[6] sdh1[5] sdg1[4] sdf1[3] sde1[2] sdd1[1] sdc1[0] | 1318680576b | [10/10] [UUUUUUUUUU] | chunk=1024k",
        "md0 active raid1 | sdb1[1] sda1[0] | 16787776b | [2/2] [UU]",
    ],
    "pymdstat/mdstat.05": [
        "md127 active raid5 | sdh1[6] sdg1[4] sdf1[3] sde1[2] sdd1[1] sdc1[0] | 1464725760b | [6/5] [UUUUU_] | chunk=64k | sync=recovery:0.126@33440/eta7650",
    ],
    "pymdstat/mdstat.06": [
        "md0 active raid6 | sdf1[0] sde1[1] sdd1[2] sdc1[3] sdb1[4] sda1[5] hdb1[6] | 1225557760b | [7/7] [UUUUUUU] | chunk=256k | bitmap=0/234",
    ],
    "pymdstat/mdstat.07": [
        "md1 active raid1 | sde1[6](faulty) sdg1[1] sdb1[4] sdd1[3] sdc1[2] | 488383936b | [6/4] [_UUUU_]",
    ],
    "pymdstat/mdstat.08": [
        "md0 inactive raid5 | sdd1[3] sdc1[2] sda1[0] | 95425536b | [4/4] [UUUU] | chunk=128k",
    ],
    "pymdstat/mdstat.09": [
        "md0 active raid1 | sdf1[1] sde1[0] | 3709312b | [2/2] [UU]",
        "md1 active raid1 | sdf2[1] sde2[0] | 200704b | [2/2] [UU]",
        "md2 inactive - | sdb[0](spare) sdc[2](spare) sdd[3](spare) sda[1](spare) | 5860553984b",
    ],
    "pymdstat/mdstat.10": [
        "md129 active raid1 | sda3[0] sdd3[1] | 15825920b | super=1.2 | [2/2] [UU]",
        "md128 active raid1 | sda2[0] sdd2[1] | 126887936b | super=1.2 | [2/2] [UU] | bitmap=1/1",
        "md125 active raid0 | sdg[4] sdc[1] sdf[3] sdh[5] sde[2] sdb[0] | 2306837760b | super=1.2 | chunk=128k",
        "md126 active raid0 | nvme0n1[0] nvme1n1[1] | 999948288b | super=1.2 | chunk=3072k",
    ],
    "pymdstat/mdstat.11": [
        "md127 inactive - | sda[0] sdb[1] sdc[2](spare) | 6282240b | super=1.2",
    ],
    "pymdstat/mdstat.12": [
        "md127 active raid0 | loop1[1] loop0[0] | 10475520b | super=1.2 | chunk=32k",
    ],
    "pymdstat/mdstat.13": [
        "md127 active raid4 | loop2[3] loop1[1] loop0[0] | 10475520b | super=1.2 | [4/3] [UU__] | chunk=32k | sync=reshape:0.021@23033/eta222",
    ],
    "pymdstat/mdstat.14": [
        "md127 active raid0 | sda[0] sdb[1] | 4188160b | super=1.2 | chunk=256k",
    ],
    "pymdstat/mdstat.15": [
        "md3 active raid6 | sdh6[8] sda6[0] sdg6[6] sdf6[5] sde6[4] sdd6[3] sdc6[2] sdb6[1] | 17581481472b | super=1.2 | [8/8] [UUUUUUUU] | chunk=64k",
        "md2 active raid6 | sdh5[15] sda5[9] sdg5[14] sdf5[8] sde5[13] sdd5[12] sdc5[11] sdb5[10] | 17552612736b | super=1.2 | [8/8] [UUUUUUUU] | chunk=64k",
        "md1 active raid1 | sdh2[7] sda2[0] sdb2[1] sdc2[2] sdd2[3] sde2[4] sdf2[5] sdg2[6] | 2097088b | [8/8] [UUUUUUUU]",
        "md0 active raid1 | sdh1[7] sda1[0] sdb1[1] sdc1[2] sdd1[3] sde1[4] sdf1[5] sdg1[6] | 2490176b | [8/8] [UUUUUUUU]",
    ],
    "pymdstat/mdstat.16": [
        "md1 active raid5 | sdd[2] sdf[8] sdb[6] sda[0] sdh[5] sdc[1] sde[7] sdg[3] | 95705752576b | super=1.2 | [8/8] [UUUUUUUU] | chunk=512k | bitmap=2/102",
    ],
}


def test_every_fixture_is_covered() -> None:
    files = sorted(str(p.relative_to(FIXTURES / "mdstat")) for p in (FIXTURES / "mdstat").rglob("*") if p.is_file())
    assert files == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_parses_to_expected_arrays(name: str) -> None:
    path = FIXTURES / "mdstat" / name
    parsed = parse_mdstat(path.read_bytes().decode("utf-8", errors="replace"), str(path))
    assert [summarize(a) for a in parsed.arrays] == EXPECTED[name]


def test_personalities_survive_a_trailing_nbsp() -> None:
    text = (FIXTURES / "mdstat/pymdstat/mdstat.14").read_text()
    assert "\xa0" in text
    assert parse_mdstat(text).personalities == ("raid0",)


def test_unused_devices_listed() -> None:
    parsed = parse_mdstat("Personalities : [raid1]\nunused devices: sdx1[0] sdy1[1]\n")
    assert parsed.unused_devices == ("sdx1[0]", "sdy1[1]")


# Kernel formats no captured sample covers, written from drivers/md (raid10.c raid10_status,
# md.c md_seq_show/status_resync, md-bitmap.c) - synthetic, so kept apart from the fixtures.
KERNEL_FORMATS = {
    "raid10 near": (
        "Personalities : [raid10]\nmd0 : active raid10 sdd1[3] sdc1[2] sdb1[1] sda1[0]\n"
        "      976510976 blocks super 1.2 512K chunks 2 near-copies [4/4] [UUUU]\n"
        "      bitmap: 0/8 pages [0KB], 65536KB chunk\n\nunused devices: <none>\n",
        "md0 active raid10 | sdd1[3] sdc1[2] sdb1[1] sda1[0] | 976510976b | super=1.2 | [4/4] [UUUU] "
        "| chunk=512k | bitmap=0/8",
    ),
    "raid10 far, degraded": (
        "Personalities : [raid10]\nmd1 : active raid10 sdb2[1] sda2[0]\n"
        "      1000 blocks super 1.2 64K chunks 2 far-copies [3/2] [UU_]\n\nunused devices: <none>\n",
        "md1 active raid10 | sdb2[1] sda2[0] | 1000b | super=1.2 | [3/2] [UU_] | chunk=64k",
    ),
    "write-mostly, journal, replacement, repair": (
        "Personalities : [raid1] [raid6] [raid5] [raid4]\n"
        "md2 : active raid5 nvme0n1p1[3](J) sdc1[4](R) sdb1[1] sda1[0](W) sdd1[2]\n"
        "      2000 blocks super 1.2 level 5, 512k chunk, algorithm 2 [3/3] [UUU]\n"
        "      [==>..................]  resync = 12.0% (120/1000) finish=1.5min speed=1000K/sec\n"
        "      bitmap: 1/1 pages [4KB], 65536KB chunk, file: /var/md2.bitmap\n\nunused devices: <none>\n",
        "md2 active raid5 | nvme0n1p1[3](journal) sdc1[4](replacement) sdb1[1] sda1[0](write_mostly) sdd1[2] "
        "| 2000b | super=1.2 | [3/3] [UUU] | chunk=512k | sync=resync:0.120@1000/eta90 | bitmap=1/1",
    ),
    "raid10 offset copies over far sets": (
        "Personalities : [raid10]\nmd5 : active raid10 sdd1[3] sdc1[2] sdb1[1] sda1[0]\n"
        "      2000 blocks super 1.2 512K chunks 2 offset-copies 4 devices per set [4/4] [UUUU]\n\n"
        "unused devices: <none>\n",
        "md5 active raid10 | sdd1[3] sdc1[2] sdb1[1] sda1[0] | 2000b | super=1.2 | [4/4] [UUUU] | chunk=512k",
    ),
    "broken raid0, tab-indented delayed resync": (
        "Personalities : [raid0] [raid1]\nmd3 : broken raid0 sdb1[1] sda1[0]\n"
        "      2000 blocks super 1.2 512k chunks\n\n"
        "md4 : active raid1 sdd1[1] sdc1[0]\n      1000 blocks super 1.2 [2/2] [UU]\n\tresync=PENDING\n\n"
        "unused devices: <none>",
        "md3 broken raid0 | sdb1[1] sda1[0] | 2000b | super=1.2 | chunk=512k",
    ),
}


@pytest.mark.parametrize("case", sorted(KERNEL_FORMATS))
def test_kernel_formats(case: str) -> None:
    text, first = KERNEL_FORMATS[case]
    assert summarize(parse_mdstat(text).arrays[0]) == first


def test_crlf_and_no_trailing_newline() -> None:
    text = "Personalities : [raid1]\r\nmd0 : active raid1 sdb1[1] sda1[0]\r\n      10 blocks [2/2] [UU]"
    assert summarize(parse_mdstat(text).arrays[0]) == "md0 active raid1 | sdb1[1] sda1[0] | 10b | [2/2] [UU]"


MALFORMED = {
    "not mdstat at all": ("hello world\n", 1, "no 'Personalities' line"),
    "garbage between arrays": (
        "Personalities : [raid1]\nmd0 : active raid1 sda1[0]\n      10 blocks [1/1] [U]\n\nsomething odd\n", 5,
        "unexpected line",
    ),
    "unknown state": ("Personalities : [raid1]\nmd0 : sleeping raid1 sda1[0]\n", 2, "expected active"),
    "unknown personality": ("Personalities : [raid1]\nmd0 : active raid7 sda1[0]\n", 2, "unknown personality"),
    "member without number": ("Personalities : [raid1]\nmd0 : active raid1 sda1[x]\n", 2, "cannot read member"),
    "unknown member flag": ("Personalities : [raid1]\nmd0 : active raid1 sda1[0](Q)\n", 2, "unknown member flag"),
    "slot map too short": (
        "Personalities : [raid1]\nmd0 : active raid1 sda1[0]\n      10 blocks [2/1] [U]\n", 3, "does not have 2 slots",
    ),
    "more working than slots": (
        "Personalities : [raid1]\nmd0 : active raid1 sda1[0]\n      10 blocks [1/2] [U]\n", 3, "1 disks",
    ),
    "progress over 100%": (
        "Personalities : [raid1]\nmd0 : active raid1 sda1[0]\n      10 blocks [1/1] [U]\n"
        "      [====================>]  recovery = 120.0% (12/10) finish=0.1min speed=1K/sec\n", 4, "above 100%",
    ),
    "unknown status line": (
        "Personalities : [raid1]\nmd0 : active raid1 sda1[0]\n      10 blocks [1/1] [U]\n      frobnicate\n", 4,
        "unrecognised status line",
    ),
    "junk in blocks line": (
        "Personalities : [raid1]\nmd0 : active raid1 sda1[0]\n      10 blocks [1/1] [U] sparkles\n", 3,
        "unrecognised text in the blocks line: '[1/1] [U] sparkles'",
    ),
    "two blocks lines": (
        "Personalities : [raid1]\nmd0 : active raid1 sda1[0]\n      10 blocks [1/1] [U]\n      10 blocks\n", 4,
        "second 'blocks' line",
    ),
    "array listed twice": (
        "Personalities : [raid1]\nmd0 : active raid1 sda1[0]\n\nmd0 : active raid1 sdb1[0]\n", 4, "listed twice",
    ),
    "array before personalities": ("md0 : active raid1 sda1[0]\nPersonalities : [raid1]\n", 1, "before the"),
    "two personalities lines": ("Personalities : [raid1]\nPersonalities : [raid1]\n", 2, "second 'Personalities'"),
    "empty state": ("Personalities : [raid1]\nmd0 :\n", 2, "expected active"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_input_raises_with_file_and_line(case: str) -> None:
    text, line, message = MALFORMED[case]
    with pytest.raises(ParseError) as raised:
        parse_mdstat(text, source="/snap/proc/mdstat")
    assert raised.value.line == line
    assert message in str(raised.value)
    assert str(raised.value).startswith(f"/snap/proc/mdstat:{line}: ")


def test_empty_file_is_no_arrays() -> None:
    assert parse_mdstat("").arrays == ()


def test_raid10_copies_are_recorded() -> None:
    near = parse_mdstat(KERNEL_FORMATS["raid10 near"][0]).arrays[0]
    far = parse_mdstat(KERNEL_FORMATS["raid10 far, degraded"][0]).arrays[0]
    offset = parse_mdstat(KERNEL_FORMATS["raid10 offset copies over far sets"][0]).arrays[0]
    assert (near.near_copies, near.far_copies) == (2, None)
    assert (far.near_copies, far.far_copies) == (None, 2)
    assert offset.offset_copies == 2


def test_second_array_of_a_mixed_file() -> None:
    second = parse_mdstat(KERNEL_FORMATS["broken raid0, tab-indented delayed resync"][0]).arrays[1]
    assert summarize(second) == "md4 active raid1 | sdd1[1] sdc1[0] | 1000b | super=1.2 | [2/2] [UU] | sync=pending"
