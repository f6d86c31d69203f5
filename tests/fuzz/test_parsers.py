"""Any input either parses or raises ParseError (the parser's documented error), within the
profile's deadline and the process's memory limit: no other exception, no hang.

Inputs are real samples from tests/fixtures (and this machine's own /proc) mutated token by token
with the values that once broke a parser (huge, negative and non-ASCII numbers, brackets, NULs),
plus free text.  tests/fuzz/corpus/ keeps the inputs that once failed; each is replayed.
"""

from __future__ import annotations

import json
import re
import struct
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostagent.errors import ParseError
from hostagent.hypervisor.libvirt_backend import domain_facts
from hostagent.inventory import merge_array
from hostagent.maintenance.coexist import parse_shell_defaults
from hostagent.maintenance.journal import Journal, ShapeError
from hostagent.sources import (
    blockstat,
    bootcode,
    efiboot,
    kmsg,
    mdstat,
    mdsysfs,
    mounts,
    netproc,
    partitions,
    smartctl,
    xl,
)
from hostagent.sources.fat import FatVolume, efi_loaders

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CORPUS = Path(__file__).resolve().parent / "corpus"

TOKENS = ["0", "1", "2", "3", "255", "-1", "999999999999", "99999999999999", "9" * 30, "9" * 5000, "1e20", "²",
          "٣", "0x10", "1.5", "nan", " ", "  ", "\n", "\n\n", "\t", "[", "]", "(", ")", "(F)", "(S)", "(W)",
          "[UU]", "[U_]", "[_]", "[2/1]", "[200000/1]", "/", "%", ":", "=", ",", "md0", "md127", "sda1", "nvme0n1p1",
          "active", "inactive", "raid1", "raid10", "raid5", "blocks", "super", "1.2", "near-copies", "far-copies",
          "recovery", "resync", "finish=", "speed=", "K/sec", "min", "bitmap:", "pages", "KB", "chunk",
          "Personalities :", "unused devices:", "<none>", "\x00", "\xff", "é", "{", "}", '"', "null", "true", "[]",
          "{}", "sl", "0100007F:0050", "00000000:0000", "0A", "03", "TcpExt:", "Tcp:", "Inter-|", "Boot0001*",
          "BootOrder:", "HD(1,GPT,", "File(\\EFI\\debian\\grubx64.efi)", "Domain-0", "r-----", "xc: progress: Frames",
          "<metadata>", "</domain>", "<domain>", "&", "<!DOCTYPE", "ON_BOOT=", "'", "$(x)"]
_SPLIT = re.compile(r"([0-9]+|\s+|[\[\]()/:=,%{}\"])")


def sample_files(*parts: str) -> list[str]:
    found = []
    base = FIXTURES.joinpath(*parts)
    for path in [base] if base.is_file() else sorted(base.rglob("*")):
        if path.is_file() and path.stat().st_size < 200_000:
            found.append(path.read_text(errors="replace"))
    assert found, parts
    return found


@st.composite
def mutated(draw: st.DrawFn, samples: list[str]) -> str:
    """A sample with up to 8 tokens replaced, removed or duplicated, or free text."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=400))
    parts = _SPLIT.split(draw(st.sampled_from(samples)))
    for _ in range(draw(st.integers(1, 8))):
        if not parts:
            break
        index = draw(st.integers(0, len(parts) - 1))
        action = draw(st.integers(0, 3))
        if action == 0:
            parts[index] = draw(st.sampled_from(TOKENS))
        elif action == 1:
            parts[index] = draw(st.text(max_size=12))
        elif action == 2:
            del parts[index]
        else:
            parts.insert(index, parts[index] * draw(st.integers(2, 50)))
    return "".join(parts)


def must_parse_or_refuse(parse: Callable[[], Any], *allowed: type[BaseException]) -> None:
    try:
        parse()
    except (ParseError, *allowed):
        pass


# -- md -----------------------------------------------------------------------------------

MDSTAT = sample_files("mdstat")


def use(array: Any) -> None:
    """What the checks and the interlock compute from a parsed array."""
    array.to_json()
    array.copy_sets()
    array.missing_slots()
    for member in array.members:
        array.loses_data_without(member)


@given(mutated(MDSTAT))
def test_mdstat(text: str) -> None:
    def parse() -> None:
        for array in mdstat.parse_mdstat(text, "mdstat").arrays:
            use(merge_array(array.name, array, None))

    must_parse_or_refuse(parse)


SYSFS_VALUES = {"level": ["raid1", "raid10", "raid5", "raid0", "linear"],
                "array_state": ["clean", "active", "inactive"],
                "raid_disks": ["2", "4 (3)", "999999999999"], "degraded": ["0", "1", "-1", "1e20"],
                "sync_action": ["idle", "recover", "resync"], "sync_completed": ["none", "12 / 40", "40 / 12"],
                "sync_speed": ["none", "1200"], "mismatch_cnt": ["0"], "metadata_version": ["1.2"],
                "layout": ["258", "65535", "0", "131586"], "chunk_size": ["524288"]}


@st.composite
def sysfs_inputs(draw: st.DrawFn) -> tuple[dict[str, str], dict[str, dict[str, str]], dict[int, str]]:
    attrs = {}
    for attr, values in SYSFS_VALUES.items():
        if draw(st.booleans()):
            attrs[attr] = draw(st.sampled_from(values) | st.sampled_from(TOKENS) | st.text(max_size=8)) + "\n"
    members = {}
    for name in draw(st.lists(st.sampled_from(["sda1", "sdb1", "sdc1", "dm-0"]), max_size=4, unique=True)):
        members[name] = {"state": draw(st.sampled_from(["in_sync", "faulty", "spare", "in_sync,write_mostly", ""])),
                         "slot": draw(st.sampled_from(["0", "1", "none", "99999999999999", "-1", "²"])
                                      | st.text(max_size=4)),
                         "errors": draw(st.sampled_from(["0", "7", "²", "9" * 5000]) | st.text(max_size=4))}
    links = {draw(st.integers(0, 3000)): f"dev-{name}" for name in draw(st.lists(st.sampled_from(list(members)
                                                                                                  or ["x"]),
                                                                                 max_size=3))}
    return attrs, members, links


@given(sysfs_inputs())
def test_md_sysfs(inputs: tuple[dict[str, str], dict[str, dict[str, str]], dict[int, str]]) -> None:
    attrs, members, links = inputs

    def parse() -> None:
        use(merge_array("md0", None, mdsysfs.parse_md_sysfs("md0", attrs, members, links, "/sys/block/md0/md")))

    must_parse_or_refuse(parse)


# -- smartctl -----------------------------------------------------------------------------

SMART = sample_files("smartctl-json")
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                           | st.text(max_size=10),
                           lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)


@st.composite
def smart_documents(draw: st.DrawFn) -> str:
    """A real smartctl document with one value somewhere replaced by arbitrary JSON, or raw text mutation."""
    sample = draw(st.sampled_from(SMART))
    if draw(st.integers(0, 3)) == 0:
        return draw(mutated([sample]))
    document = json.loads(sample)
    node: Any = document
    for _ in range(draw(st.integers(1, 4))):
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            if draw(st.booleans()) or not isinstance(node[key], (dict, list)):
                node[key] = draw(JSON_VALUES)
                break
            node = node[key]
        elif isinstance(node, list) and node:
            index = draw(st.integers(0, len(node) - 1))
            if draw(st.booleans()) or not isinstance(node[index], (dict, list)):
                node[index] = draw(JSON_VALUES)
                break
            node = node[index]
        else:
            break
    return json.dumps(document)


@given(smart_documents())
def test_smartctl(text: str) -> None:
    def parse() -> None:
        report = smartctl.parse_smartctl(text, "smartctl -x")
        report.counters()

    must_parse_or_refuse(parse)
    must_parse_or_refuse(lambda: smartctl.parse_scterc(text))
    must_parse_or_refuse(lambda: smartctl.parse_selftest_status(text))
    must_parse_or_refuse(lambda: smartctl.parse_scan(text))


# -- partition tables, FAT, boot code, efibootmgr ---------------------------------------------


@st.composite
def sectors(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.binary(min_size=0, max_size=1024)))
    if len(data) >= 512 and draw(st.booleans()):
        data[510:512] = b"\x55\xaa"
    return bytes(data)


@given(sectors())
def test_mbr_and_boot_code(sector: bytes) -> None:
    must_parse_or_refuse(lambda: partitions.parse_mbr(sector, "mbr"))
    bootcode.identify(sector)
    bootcode.grub_core_present(sector, 1)


@st.composite
def gpt(draw: st.DrawFn) -> tuple[bytes, bytes, int, int, int]:
    count, size = draw(st.sampled_from([0, 1, 4, 128, 2**31])), draw(st.sampled_from([0, 1, 128, 4096, 2**31]))
    entries = draw(st.binary(max_size=2048))
    header = bytearray(b"EFI PART" + struct.pack("<IIIIQQQQ16sQIII", 0x10000, 92, 0, 0, 1, 2, 34, 100,
                                                  b"\x11" * 16, 2, count, size, zlib.crc32(entries)))
    header += b"\0" * (512 - len(header))
    for _ in range(draw(st.integers(0, 4))):
        header[draw(st.integers(0, 91))] = draw(st.integers(0, 255))
    if draw(st.booleans()):  # a valid header CRC, so the entries are read
        struct.pack_into("<I", header, 16, 0)
        struct.pack_into("<I", header, 16, zlib.crc32(bytes(header[:92])))
    return bytes(header), entries, count, size, zlib.crc32(entries)


@given(gpt())
def test_gpt(parts: tuple[bytes, bytes, int, int, int]) -> None:
    header, entries, count, size, crc = parts
    must_parse_or_refuse(lambda: partitions.parse_gpt_header(header, "gpt"))
    must_parse_or_refuse(lambda: partitions.parse_gpt_entries(entries, count, size, crc, "gpt"))


@given(st.binary(min_size=16, max_size=16))
def test_a_gpt_guid_reads_as_uuid_reads_it(raw: bytes) -> None:
    """GPT stores GUIDs mixed-endian; the parser's text form must be uuid's ``bytes_le`` reading."""
    assert partitions._guid(raw) == str(uuid.UUID(bytes_le=raw))


@st.composite
def fat_images(draw: st.DrawFn) -> bytes:
    image = bytearray(draw(st.binary(min_size=512, max_size=16384)))
    struct.pack_into("<HBHBHH", image, 11, draw(st.sampled_from([512, 4096, 1])), draw(st.sampled_from([1, 2, 8, 3])),
                     draw(st.integers(0, 40)), draw(st.integers(0, 3)), draw(st.integers(0, 4096)),
                     draw(st.integers(0, 65535)))
    image[510:512] = b"\x55\xaa"
    return bytes(image)


@given(fat_images())
def test_fat(image: bytes) -> None:
    def parse() -> None:
        volume = FatVolume(lambda offset, length: image[offset:offset + length], "esp")
        efi_loaders(volume.files())

    must_parse_or_refuse(parse)


EFIBOOT = ["BootCurrent: 0001\nTimeout: 1 seconds\nBootOrder: 0001,0000\n"
           "Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)\n"
           "Boot0001* debian\tHD(1,GPT,4fa2b9c8-1f2e-4f5b-9c1d-2a3b4c5d6e7f,0x800,0x100000)"
           "/File(\\EFI\\debian\\shimx64.efi)\n"]


@given(mutated(EFIBOOT))
def test_efibootmgr(text: str) -> None:
    must_parse_or_refuse(lambda: efiboot.parse_efibootmgr(text))


# -- /proc/net, /proc and /sys one-liners, /dev/kmsg --------------------------------------------

NET = {name: sample_files("net", "captured", name) + [p.read_text() for p in (FIXTURES / "net/prometheus-procfs")
                                                        .rglob(name.split("-")[-1]) if p.is_file()]
       for name in ("host-tcp", "host-snmp", "host-dev")}


@given(mutated(NET["host-tcp"]), st.sampled_from([4, 6]))
def test_proc_net_tcp(text: str, family: int) -> None:
    must_parse_or_refuse(lambda: netproc.parse_syn_recv(text, "/proc/net/tcp", family))  # type: ignore[arg-type]


@given(mutated(NET["host-snmp"] + sample_files("net", "captured", "host-netstat")))
def test_proc_net_counters(text: str) -> None:
    must_parse_or_refuse(lambda: netproc.parse_counters(text, "/proc/net/snmp"))


@given(mutated(NET["host-dev"]))
def test_proc_net_dev(text: str) -> None:
    must_parse_or_refuse(lambda: netproc.parse_net_dev(text, "/proc/net/dev"))


@given(st.text(max_size=40))
def test_address_decoding(text: str) -> None:
    must_parse_or_refuse(lambda: netproc.decode_address(text), ValueError)


MOUNTINFO = [Path("/proc/self/mountinfo").read_text()]
STAT = ["  123  0  4567  89  10  0  20  30  0  40  119  0  0  0  0  0  0\n", "0 0\n"]
KMSG = ["6,1234,5678901,-;md/raid1:md0: Disk failure on sdb1, disabling device.\n SUBSYSTEM=block\n"]


@given(mutated(MOUNTINFO))
def test_mountinfo(text: str) -> None:
    must_parse_or_refuse(lambda: mounts.parse_mountinfo(text, "/proc/self/mountinfo"))


@given(mutated(STAT))
def test_block_stat_and_inflight(text: str) -> None:
    must_parse_or_refuse(lambda: blockstat.parse_stat(text, "/sys/block/sda/stat"))
    must_parse_or_refuse(lambda: blockstat.parse_inflight(text, "/sys/block/sda/inflight"))


@given(mutated(KMSG))
def test_kmsg(text: str) -> None:
    for line in text.splitlines():
        kmsg.parse_record(line)


# -- the hypervisors' outputs, the maintenance journal, coexisting services' defaults ------------

XEN = sample_files("xen")


@given(mutated(XEN))
def test_xl_outputs(text: str) -> None:
    must_parse_or_refuse(lambda: xl.parse_list_long(text))
    must_parse_or_refuse(lambda: xl.parse_list(text))
    xl.parse_pci_list(text)
    xl.parse_progress(text)


DOMAIN_XML = ['<domain type="kvm"><name>g1</name><metadata><hostagent:owner xmlns:hostagent='
              '"https://hostagent.example/ns/1">ops@example.com</hostagent:owner></metadata>'
              '<devices><hostdev mode="subsystem"/></devices></domain>']


@given(mutated(DOMAIN_XML))
def test_libvirt_domain_xml(text: str) -> None:
    must_parse_or_refuse(lambda: domain_facts(text, "guest g1: XML"))


JOURNAL = json.dumps(Journal.new(1_800_000_000.0, "kernel", ["web1", "db1"]).advance("preflight")
                     .to_json())


@given(mutated([JOURNAL]))
def test_maintenance_journal(text: str) -> None:
    def parse() -> None:
        Journal.from_json(json.loads(text))

    must_parse_or_refuse(parse, ShapeError, ValueError, RecursionError)  # JournalStore.load: JournalError


@given(mutated(sample_files("coexist")))
def test_shell_defaults(text: str) -> None:
    parse_shell_defaults(text, {"ON_BOOT": "start", "XENDOMAINS_SAVE": ""})


# -- the corpus ----------------------------------------------------------------------------

REPLAY: dict[str, Callable[[str], Any]] = {
    "mdstat": lambda text: test_mdstat.hypothesis.inner_test(text),  # type: ignore[attr-defined]
    "smartctl": lambda text: test_smartctl.hypothesis.inner_test(text),  # type: ignore[attr-defined]
    "md-sysfs": lambda text: test_md_sysfs.hypothesis.inner_test(tuple(json.loads(text))),  # type: ignore[attr-defined]
}


@pytest.mark.parametrize("path", sorted(p for p in CORPUS.rglob("*") if p.is_file()), ids=lambda p: p.name)
def test_corpus(path: Path) -> None:
    """Inputs that once crashed, hung or answered wrongly, replayed through their parser's property."""
    kind = path.parent.name
    text = path.read_text(errors="surrogateescape")
    if kind == "md-sysfs":
        attrs, members, links = json.loads(text)
        test_md_sysfs.hypothesis.inner_test((attrs, members, {int(k): v for k, v in links.items()}))  # type: ignore[attr-defined]
    else:
        REPLAY[kind](text)
