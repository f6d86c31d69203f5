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
from hostagent.sources.bounds import MAX_DESCRIPTOR, MAX_MEMBERS, MAX_U64
from hostagent.sources.bounds import number as bounded

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
_MEMBER = re.compile(r"^(?P<dev>[A-Za-z0-9][A-Za-z0-9_.:+!-]{0,63})\[(?P<nr>[0-9]+)\](?P<flags>(?:\([A-Z]\))*)$")
_PERSONALITY = re.compile(r"\[([^\]]+)\]")
_BLOCKS = re.compile(r"^(?P<blocks>[0-9]+) blocks\b(?P<rest>.*)$")
# The personality's status, in the order md.c and the personalities print its parts.
_BLOCKS_TAIL = re.compile(
    r"(?: super (?P<superblock>\S+))?"
    r"(?: level [0-9]+, (?P<chunk5>[0-9]+)k chunk, algorithm (?P<algorithm>[0-9]+))?"
    r"(?: (?P<chunks>[0-9]+)[kK] chunks)?"
    r"(?: (?P<near>[0-9]+) near-copies)?"
    r"(?: (?P<far>[0-9]+) far-copies| (?P<offset>[0-9]+) offset-copies)?"
    r"(?: [0-9]+ devices per set)?"
    r"(?: (?P<rounding>[0-9]+)k rounding)?"
    r"(?: \[(?P<raid_disks>[0-9]+)/(?P<working>[0-9]+)\] \[(?P<slot_map>[U_]*)\])?"
)
_PROGRESS = re.compile(
    r"^(?:\[[=>.]*\]\s*)?(?P<action>resync|recovery|check|reshape|repair)\s*=\s*"
    r"(?P<pct>[0-9]+(?:\.[0-9]+)?)%"
    r"(?:\s*\((?P<done>[0-9]+)/(?P<total>[0-9]+)\))?"
    r"(?:\s*finish=(?P<finish>[0-9]+(?:\.[0-9]+)?)min)?"
    r"(?:\s*speed=(?P<speed>[0-9]+)K/sec)?$"
)
_WAITING = re.compile(r"^(?P<action>\w+)=(?P<what>DELAYED|PENDING|REMOTE)$")
_BITMAP = re.compile(
    r"^bitmap: (?P<used>[0-9]+)/(?P<total>[0-9]+) pages \[[0-9]+KB\], "
    r"(?P<chunk>[0-9]+)(?P<unit>KB|MB|B) chunk(?:, file: (?P<file>.*))?$"
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
    line, name, rest = header
    tokens = rest.split()
    if not tokens or tokens[0] not in ("active", "inactive", "broken"):
        raise ParseError(source, line, f"{name}: expected active, inactive or broken, got {rest!r}")
    state = tokens.pop(0)
    read_only = None
    if tokens and tokens[0] in ("(read-only)", "(auto-read-only)"):
        read_only = tokens.pop(0)[1:-1]
    personality = None
    if tokens and not _MEMBER.match(tokens[0]):
        personality = tokens.pop(0)
        if personality not in PERSONALITIES:
            raise ParseError(source, line, f"{name}: unknown personality {personality!r}")
    members = []
    for token in tokens:
        member = _MEMBER.match(token)
        if not member:
            raise ParseError(source, line, f"{name}: cannot read member {token!r}")
        letters = _FLAG.findall(member["flags"]) if member["flags"] else []
        unknown = [f for f in letters if f not in MEMBER_FLAGS]
        if unknown:
            raise ParseError(source, line, f"{name}: unknown member flag {unknown} in {token!r}")
        nr = bounded(member["nr"], source, line, f"{name}: member {member['dev']}", MAX_DESCRIPTOR)
        members.append(MdstatMember(member["dev"], nr, tuple(MEMBER_FLAGS[f] for f in letters)))
    fields: dict[str, object] = {}
    for line_no, text in block:
        _parse_status_line(name, line_no, text, fields, source)
    return MdstatArray(
        name=name,
        line=line,
        state=state,
        read_only=read_only,
        personality=personality,
        members=tuple(members),
        **fields,  # type: ignore[arg-type]
    )


def _parse_status_line(
    name: str, number: int, line: str, fields: dict[str, object], source: str
) -> None:
    def count(text: str, what: str, high: int = MAX_U64) -> int:
        return bounded(text, source, number, f"{name}: {what}", high)

    blocks = _BLOCKS.match(line)
    if blocks:
        if "blocks" in fields:
            raise ParseError(source, number, f"{name}: a second 'blocks' line")
        fields["blocks"] = count(blocks["blocks"], "blocks")
        _parse_blocks_tail(name, number, blocks["rest"], fields, source)
        return
    progress = _PROGRESS.match(line)
    if progress:
        pct = float(progress["pct"][:20])
        if pct > 100:
            raise ParseError(source, number, f"{name}: progress {pct}% is above 100%")
        done, total = progress["done"], progress["total"]
        fields["sync"] = MdstatSync(
            action=progress["action"],
            progress=pct / 100,
            done_kib=count(done, "done") if done else None,
            total_kib=count(total, "total") if total else None,
            finish_s=round(float(progress["finish"][:20]) * 60) if progress["finish"] else None,
            speed_kbps=count(progress["speed"], "speed") if progress["speed"] else None,
        )
        return
    waiting = _WAITING.match(line)
    if waiting:
        fields["sync"] = MdstatSync(action=waiting["what"].lower())
        return
    bitmap = _BITMAP.match(line)
    if bitmap:
        fields["bitmap"] = MdstatBitmap(
            pages_used=count(bitmap["used"], "bitmap pages"),
            pages_total=count(bitmap["total"], "bitmap pages"),
            chunk_bytes=count(bitmap["chunk"], "bitmap chunk") * _UNIT[bitmap["unit"]],
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
            fields[field] = bounded(match[group], source, number, f"{name}: {field}", MAX_U64)
    if fields.get("near_copies", 1) == 0 or fields.get("far_copies", 1) == 0 or fields.get("offset_copies", 1) == 0:
        raise ParseError(source, number, f"{name}: zero copies in the layout")
    if match["slot_map"] is not None:
        raid_disks = bounded(match["raid_disks"], source, number, f"{name}: raid disks", MAX_MEMBERS)
        working = bounded(match["working"], source, number, f"{name}: working disks", MAX_MEMBERS)
        slot_map = match["slot_map"]
        if working > raid_disks:
            raise ParseError(source, number, f"{name}: {working} working of {raid_disks} disks")
        if len(slot_map) != raid_disks:
            raise ParseError(source, number, f"{name}: slot map [{slot_map}] does not have {raid_disks} slots")
        near = fields.get("near_copies", 1)
        far = fields.get("far_copies", fields.get("offset_copies", 1))
        copies = (near if isinstance(near, int) else 1) * (far if isinstance(far, int) else 1)
        if copies > raid_disks:  # raid10.c refuses more copies than disks
            raise ParseError(source, number, f"{name}: {copies} copies of each chunk on {raid_disks} disks")
        fields.update(raid_disks=raid_disks, working_disks=working, slot_map=slot_map)
