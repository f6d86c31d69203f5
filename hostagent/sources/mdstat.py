"""/proc/mdstat: the pure parser ``parse_mdstat`` and the reader ``read_mdstat``.

The format is the one drivers/md/md.c (md_seq_show, status_resync, md_bitmap_status) and
each personality's ``status`` function print.  The parser accepts every kernel variant we
know of and a few capture quirks (NBSP, CRLF, no trailing newline, no ``unused devices``
line, unindented status lines, pasted shell prompts around the capture).  Anything else it
does not understand raises ParseError naming the line, never a silent "no arrays".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hostagent.errors import ParseError
from hostagent.host import Host

MDSTAT_PATH = "/proc/mdstat"

MEMBER_FLAGS = {"F": "faulty", "S": "spare", "W": "write_mostly", "J": "journal", "R": "replacement"}
PERSONALITIES = {
    "linear", "multipath", "raid0", "raid1", "raid4", "raid5", "raid6", "raid10", "faulty",
}


@dataclass(frozen=True)
class MdstatMember:
    device: str
    desc_nr: int
    flags: tuple[str, ...]  # MEMBER_FLAGS values, in the order the kernel printed them


@dataclass(frozen=True)
class MdstatSync:
    action: str  # resync, recovery, check, reshape, or delayed / pending / remote
    progress: float | None = None  # 0..1
    done_kib: int | None = None
    total_kib: int | None = None
    finish_s: int | None = None
    speed_kbps: int | None = None


@dataclass(frozen=True)
class MdstatBitmap:
    pages_used: int
    pages_total: int
    chunk_bytes: int
    file: str | None = None


@dataclass(frozen=True)
class MdstatArray:
    name: str
    line: int
    state: str  # active, inactive or broken
    read_only: str | None  # "read-only", "auto-read-only" or None
    personality: str | None
    members: tuple[MdstatMember, ...]
    blocks: int | None = None
    superblock: str | None = None  # "1.2", "external:imsm", "external:/md127/0", "non-persistent"
    raid_disks: int | None = None
    working_disks: int | None = None
    slot_map: str | None = None  # "UU_": one character per slot
    chunk_kib: int | None = None
    rounding_kib: int | None = None
    algorithm: int | None = None
    near_copies: int | None = None
    far_copies: int | None = None
    offset_copies: int | None = None
    sync: MdstatSync | None = None
    bitmap: MdstatBitmap | None = None


@dataclass(frozen=True)
class Mdstat:
    personalities: tuple[str, ...]
    arrays: tuple[MdstatArray, ...]
    unused_devices: tuple[str, ...] = ()


_ARRAY_HEADER = re.compile(r"^(?P<name>md[A-Za-z0-9_.:+!-]{0,62})\s*:\s*(?P<rest>.*)$")
_FLAG = re.compile(r"\(([A-Z])\)")
# member and array names: the kernel's own naming (hostagent/names.py), so no crafted name reaches a command
_MEMBER = re.compile(r"^(?P<dev>[A-Za-z0-9][A-Za-z0-9_.:+!-]{0,63})\[(?P<nr>\d+)\](?P<flags>(?:\([A-Z]\))*)$")
_PERSONALITY = re.compile(r"\[([^\]]+)\]")
_BLOCKS = re.compile(r"^(?P<blocks>\d+) blocks\b(?P<rest>.*)$")
# The personality's status, in the order md.c and the personalities print its parts.
_BLOCKS_TAIL = re.compile(
    r"(?: super (?P<superblock>\S+))?"
    r"(?: level \d+, (?P<chunk5>\d+)k chunk, algorithm (?P<algorithm>\d+))?"
    r"(?: (?P<chunks>\d+)[kK] chunks)?"
    r"(?: (?P<near>\d+) near-copies)?"
    r"(?: (?P<far>\d+) far-copies| (?P<offset>\d+) offset-copies)?"
    r"(?: \d+ devices per set)?"
    r"(?: (?P<rounding>\d+)k rounding)?"
    r"(?: \[(?P<raid_disks>\d+)/(?P<working>\d+)\] \[(?P<slot_map>[U_]*)\])?"
)
_PROGRESS = re.compile(
    r"^(?:\[[=>.]*\]\s*)?(?P<action>resync|recovery|check|reshape|repair)\s*=\s*"
    r"(?P<pct>\d+(?:\.\d+)?)%"
    r"(?:\s*\((?P<done>\d+)/(?P<total>\d+)\))?"
    r"(?:\s*finish=(?P<finish>\d+(?:\.\d+)?)min)?"
    r"(?:\s*speed=(?P<speed>\d+)K/sec)?$"
)
_WAITING = re.compile(r"^(?P<action>\w+)=(?P<what>DELAYED|PENDING|REMOTE)$")
_BITMAP = re.compile(
    r"^bitmap: (?P<used>\d+)/(?P<total>\d+) pages \[\d+KB\], "
    r"(?P<chunk>\d+)(?P<unit>KB|MB|B) chunk(?:, file: (?P<file>.*))?$"
)
_SHELL_PROMPT = re.compile(r"^(?:\S*@\S*|\[[^\]]*\])?\s*[#$%>]\s|^\S*[@:]\S*[#$%>]\s*$|^[#$]\s")
_UNIT = {"B": 1, "KB": 1024, "MB": 1024 * 1024}


def read_mdstat(host: Host) -> Mdstat | None:
    """The parsed /proc/mdstat, or None when the kernel has no md driver loaded."""
    text = host.read_optional(MDSTAT_PATH)
    if text is None:
        return None
    return parse_mdstat(text, source=str(host.path(MDSTAT_PATH)))


def parse_mdstat(text: str, source: str = MDSTAT_PATH) -> Mdstat:
    lines = text.replace("\xa0", " ").replace("\r\n", "\n").split("\n")
    personalities: tuple[str, ...] = ()
    unused: tuple[str, ...] = ()
    arrays: list[MdstatArray] = []
    seen_header = False
    seen_end = False
    block: list[tuple[int, str]] = []
    header: tuple[int, str, str] | None = None

    def close_block() -> None:
        nonlocal header, block
        if header is not None:
            arrays.append(_parse_array(header, block, source))
        header, block = None, []

    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            close_block()
            continue
        if line.startswith("Personalities"):
            close_block()
            if seen_header:
                raise ParseError(source, number, "a second 'Personalities' line")
            seen_header = True
            personalities = tuple(_PERSONALITY.findall(line))
            continue
        if seen_end:
            continue  # text after the last line the kernel prints: a pasted prompt
        if line.startswith("unused devices:"):
            close_block()
            seen_end = True
            rest = line.split(":", 1)[1].strip()
            unused = () if rest in ("", "<none>") else tuple(rest.split())
            continue
        if line.startswith("read_ahead") or line.startswith("Event:"):
            continue  # 2.4-era kernels
        match = _ARRAY_HEADER.match(line)
        if match and raw[:1] not in (" ", "\t"):
            close_block()
            if not seen_header:
                raise ParseError(source, number, "array line before the 'Personalities' line")
            header = (number, match["name"], match["rest"])
            continue
        if header is not None:
            block.append((number, line))
            continue
        if not seen_header or _SHELL_PROMPT.search(line):
            continue  # a pasted shell prompt or command around the capture
        raise ParseError(source, number, f"unexpected line outside any array: {line!r}")
    close_block()
    if not seen_header and text.strip():
        raise ParseError(source, 1, "not an mdstat file: no 'Personalities' line")
    seen: set[str] = set()
    for array in arrays:
        if array.name in seen:
            raise ParseError(source, array.line, f"array {array.name} is listed twice")
        seen.add(array.name)
    return Mdstat(personalities, tuple(arrays), unused)


def _parse_array(
    header: tuple[int, str, str], block: list[tuple[int, str]], source: str
) -> MdstatArray:
    number, name, rest = header
    tokens = rest.split()
    if not tokens or tokens[0] not in ("active", "inactive", "broken"):
        raise ParseError(source, number, f"{name}: expected active, inactive or broken, got {rest!r}")
    state = tokens.pop(0)
    read_only = None
    if tokens and tokens[0] in ("(read-only)", "(auto-read-only)"):
        read_only = tokens.pop(0)[1:-1]
    personality = None
    if tokens and not _MEMBER.match(tokens[0]):
        personality = tokens.pop(0)
        if personality not in PERSONALITIES:
            raise ParseError(source, number, f"{name}: unknown personality {personality!r}")
    members = []
    for token in tokens:
        member = _MEMBER.match(token)
        if not member:
            raise ParseError(source, number, f"{name}: cannot read member {token!r}")
        letters = _FLAG.findall(member["flags"]) if member["flags"] else []
        unknown = [f for f in letters if f not in MEMBER_FLAGS]
        if unknown:
            raise ParseError(source, number, f"{name}: unknown member flag {unknown} in {token!r}")
        members.append(MdstatMember(member["dev"], int(member["nr"]), tuple(MEMBER_FLAGS[f] for f in letters)))
    fields: dict[str, object] = {}
    for line_no, line in block:
        _parse_status_line(name, line_no, line, fields, source)
    return MdstatArray(
        name=name,
        line=number,
        state=state,
        read_only=read_only,
        personality=personality,
        members=tuple(members),
        **fields,  # type: ignore[arg-type]
    )


def _parse_status_line(
    name: str, number: int, line: str, fields: dict[str, object], source: str
) -> None:
    blocks = _BLOCKS.match(line)
    if blocks:
        if "blocks" in fields:
            raise ParseError(source, number, f"{name}: a second 'blocks' line")
        fields["blocks"] = int(blocks["blocks"])
        _parse_blocks_tail(name, number, blocks["rest"], fields, source)
        return
    progress = _PROGRESS.match(line)
    if progress:
        pct = float(progress["pct"])
        if pct > 100:
            raise ParseError(source, number, f"{name}: progress {pct}% is above 100%")
        done, total = progress["done"], progress["total"]
        fields["sync"] = MdstatSync(
            action=progress["action"],
            progress=pct / 100,
            done_kib=int(done) if done else None,
            total_kib=int(total) if total else None,
            finish_s=round(float(progress["finish"]) * 60) if progress["finish"] else None,
            speed_kbps=int(progress["speed"]) if progress["speed"] else None,
        )
        return
    waiting = _WAITING.match(line)
    if waiting:
        fields["sync"] = MdstatSync(action=waiting["what"].lower())
        return
    bitmap = _BITMAP.match(line)
    if bitmap:
        fields["bitmap"] = MdstatBitmap(
            pages_used=int(bitmap["used"]),
            pages_total=int(bitmap["total"]),
            chunk_bytes=int(bitmap["chunk"]) * _UNIT[bitmap["unit"]],
            file=bitmap["file"],
        )
        return
    raise ParseError(source, number, f"{name}: unrecognised status line {line!r}")


def _parse_blocks_tail(
    name: str, number: int, tail: str, fields: dict[str, object], source: str
) -> None:
    words = tail.split()
    match = _BLOCKS_TAIL.fullmatch(" " + " ".join(words) if words else "")
    if not match:
        raise ParseError(source, number, f"{name}: unrecognised text in the blocks line: {tail.strip()!r}")
    if match["superblock"]:
        fields["superblock"] = match["superblock"]
    for field, group in (("chunk_kib", "chunk5"), ("chunk_kib", "chunks"), ("algorithm", "algorithm"),
                         ("rounding_kib", "rounding"), ("near_copies", "near"), ("far_copies", "far"),
                         ("offset_copies", "offset")):
        if match[group]:
            fields[field] = int(match[group])
    if match["slot_map"] is not None:
        raid_disks, working, slot_map = int(match["raid_disks"]), int(match["working"]), match["slot_map"]
        if working > raid_disks:
            raise ParseError(source, number, f"{name}: {working} working of {raid_disks} disks")
        if len(slot_map) != raid_disks:
            raise ParseError(source, number, f"{name}: slot map [{slot_map}] does not have {raid_disks} slots")
        fields.update(raid_disks=raid_disks, working_disks=working, slot_map=slot_map)
