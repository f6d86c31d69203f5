"""/proc/mdstat: the pure parser ``parse_mdstat`` and the reader ``read_mdstat``.

The format is the one drivers/md/md.c (md_seq_show, status_resync, md_bitmap_status) and
each personality's ``status`` function print.  The parser accepts every kernel variant we
know of and a few capture quirks (NBSP, CRLF, no trailing newline, no ``unused devices``
line, unindented status lines, pasted shell prompts around the capture).  Anything else it
does not understand raises ParseError naming the line, never a silent "no arrays".
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

from hostagent.errors import ParseError
from hostagent.host import Host
from hostagent.sources.bounds import MAX_DESCRIPTOR, MAX_MEMBERS, MAX_U64
from hostagent.sources.bounds import number as bounded

MDSTAT_PATH = "/proc/mdstat"

MEMBER_FLAGS = {"F": "faulty", "S": "spare", "W": "write_mostly", "J": "journal", "R": "replacement"}
PERSONALITIES = {
    "linear", "multipath", "raid0", "raid1", "raid4", "raid5", "raid6", "raid10", "faulty",
}


# Plain tuples, not frozen dataclasses: a large host's file has hundreds of members, and a frozen
# dataclass costs four times as much to build (docs/benchmarks.md, issue 24).
class MdstatMember(NamedTuple):
    device: str
    desc_nr: int
    flags: tuple[str, ...]  # MEMBER_FLAGS values, in the order the kernel printed them


class MdstatSync(NamedTuple):
    action: str  # resync, recovery, check, reshape, or delayed / pending / remote
    progress: float | None = None  # 0..1
    done_kib: int | None = None
    total_kib: int | None = None
    finish_s: int | None = None
    speed_kbps: int | None = None


class MdstatBitmap(NamedTuple):
    pages_used: int
    pages_total: int
    chunk_bytes: int
    file: str | None = None


class MdstatArray(NamedTuple):
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


class Mdstat(NamedTuple):
    personalities: tuple[str, ...]
    arrays: tuple[MdstatArray, ...]
    unused_devices: tuple[str, ...] = ()



_ARRAY_HEADER = re.compile(r"^(?P<name>md[A-Za-z0-9_.:+!-]{0,62})\s*:\s*(?P<rest>.*)$")
_FLAG = re.compile(r"\(([A-Z])\)")
# member and array names: the kernel's own naming (hostagent/names.py), so no crafted name reaches a command
_MEMBER = re.compile(r"^(?P<dev>[A-Za-z0-9][A-Za-z0-9_.:+!-]{0,63})\[(?P<nr>[0-9]+)\](?P<flags>(?:\([A-Z]\))*)$")
# The common case in one pass: descriptor numbers 0..65535 and the flags md.c prints.  Anything
# else is read again one member at a time (_MEMBER), to name what is wrong.
_DESCRIPTOR = r"(?:[0-9]{1,4}|[0-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_MEMBER_ITEM = re.compile(rf"([A-Za-z0-9][A-Za-z0-9_.:+!-]{{0,63}})\[({_DESCRIPTOR})\]((?:\([FSWJR]\))*)")
_MEMBER_LIST = re.compile(rf"(?:{_MEMBER_ITEM.pattern}(?: |$))*")
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
# the fields of _BLOCKS_TAIL's number groups, in the pattern's order
_LAYOUT_FIELDS = ("chunk_kib", "algorithm", "chunk_kib", "near_copies", "far_copies", "offset_copies",
                  "rounding_kib")


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
        first = line[0]  # cheap tests first: this loop runs once per line of a large host's file
        if header is not None and raw[0] in " \t" and first not in "PurE":
            block.append((number, line))  # an array's status line, the most common kind
            continue
        if first == "P" and line.startswith("Personalities"):
            close_block()
            if seen_header:
                raise ParseError(source, number, "a second 'Personalities' line")
            seen_header = True
            personalities = tuple(_PERSONALITY.findall(line))
            continue
        if seen_end:
            continue  # text after the last line the kernel prints: a pasted prompt
        if first == "u" and line.startswith("unused devices:"):
            close_block()
            seen_end = True
            rest = line.split(":", 1)[1].strip()
            unused = () if rest in ("", "<none>") else tuple(rest.split())
            continue
        if first in "rE" and (line.startswith("read_ahead") or line.startswith("Event:")):
            continue  # 2.4-era kernels
        match = _ARRAY_HEADER.match(line) if raw[0] not in " \t" else None
        if match:
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
    if tokens and (tokens[0] in PERSONALITIES or not _MEMBER.match(tokens[0])):
        personality = tokens.pop(0)
        if personality not in PERSONALITIES:
            raise ParseError(source, line, f"{name}: unknown personality {personality!r}")
    members = _parse_members(tokens, name, source, line)
    fields: dict[str, object] = {}
    for line_no, text in block:
        _parse_status_line(name, line_no, text, fields, source)
    return MdstatArray(
        name=name,
        line=line,
        state=state,
        read_only=read_only,
        personality=personality,
        members=members,
        **fields,  # type: ignore[arg-type]
    )


def _parse_members(tokens: list[str], name: str, source: str, line: int) -> tuple[MdstatMember, ...]:
    listed = " ".join(tokens)
    if _MEMBER_LIST.fullmatch(listed):
        return tuple([MdstatMember(device, int(nr), _flags(flags) if flags else ())
                      for device, nr, flags in _MEMBER_ITEM.findall(listed)])
    found = []
    for token in tokens:
        member = _MEMBER.match(token)
        if not member:
            raise ParseError(source, line, f"{name}: cannot read member {token!r}")
        nr = _number(member["nr"], MAX_DESCRIPTOR, source, line, "%s: member %s", name, member["dev"])
        unknown = [f for f in _FLAG.findall(member["flags"]) if f not in MEMBER_FLAGS]
        if unknown:
            raise ParseError(source, line, f"{name}: unknown member flag {unknown} in {token!r}")
        found.append(MdstatMember(member["dev"], nr, _flags(member["flags"])))
    return tuple(found)


@functools.lru_cache(maxsize=64)
def _flags(text: str) -> tuple[str, ...]:
    """The names of the flags in "(S)(W)", all known (MEMBER_FLAGS)."""
    return tuple([MEMBER_FLAGS[letter] for letter in _FLAG.findall(text)])


def _parse_status_line(
    name: str, number: int, line: str, fields: dict[str, object], source: str
) -> None:
    blocks = _BLOCKS.match(line) if "0" <= line[0] <= "9" else None
    if blocks:
        if "blocks" in fields:
            raise ParseError(source, number, f"{name}: a second 'blocks' line")
        digits, tail = blocks.groups()
        fields["blocks"] = int(digits) if len(digits) < 20 else _number(
            digits, MAX_U64, source, number, "%s: blocks", name)
        _parse_blocks_tail(name, number, tail, fields, source)
        return
    bitmap = _BITMAP.match(line) if line.startswith("bitmap:") else None
    if bitmap:
        used, total, chunk, unit, file = bitmap.groups()
        if len(used) + len(total) + len(chunk) < 20:  # each below 2**64: no bounds to check
            fields["bitmap"] = MdstatBitmap(int(used), int(total), int(chunk) * _UNIT[unit], file)
        else:
            fields["bitmap"] = MdstatBitmap(
                pages_used=_number(used, MAX_U64, source, number, "%s: bitmap pages", name),
                pages_total=_number(total, MAX_U64, source, number, "%s: bitmap pages", name),
                chunk_bytes=_number(chunk, MAX_U64, source, number, "%s: bitmap chunk", name) * _UNIT[unit],
                file=file,
            )
        return
    progress = _PROGRESS.match(line)
    if progress:
        pct = float(progress["pct"][:20])
        if pct > 100:
            raise ParseError(source, number, f"{name}: progress {pct}% is above 100%")
        done, total, speed = progress["done"], progress["total"], progress["speed"]
        fields["sync"] = MdstatSync(
            action=progress["action"],
            progress=pct / 100,
            done_kib=_number(done, MAX_U64, source, number, "%s: done", name) if done else None,
            total_kib=_number(total, MAX_U64, source, number, "%s: total", name) if total else None,
            finish_s=round(float(progress["finish"][:20]) * 60) if progress["finish"] else None,
            speed_kbps=_number(speed, MAX_U64, source, number, "%s: speed", name) if speed else None,
        )
        return
    waiting = _WAITING.match(line)
    if waiting:
        fields["sync"] = MdstatSync(action=waiting["what"].lower())
        return
    raise ParseError(source, number, f"{name}: unrecognised status line {line!r}")


def _parse_blocks_tail(
    name: str, number: int, tail: str, fields: dict[str, object], source: str
) -> None:
    text = tail
    if "  " in text or not text.isprintable():  # one space between words, as md.c prints them
        words = text.split()
        text = " " + " ".join(words) if words else ""
    match = _BLOCKS_TAIL.fullmatch(text)
    if not match:
        raise ParseError(source, number, f"{name}: unrecognised text in the blocks line: {tail.strip()!r}")
    superblock, *layout, raid_disks_text, working_text, slot_map = match.groups()
    if superblock:
        fields["superblock"] = superblock
    for field, digits in zip(_LAYOUT_FIELDS, layout, strict=True):
        if digits:
            fields[field] = int(digits) if len(digits) < 20 else _number(
                digits, MAX_U64, source, number, "%s: %s", name, field)
    if fields.get("near_copies", 1) == 0 or fields.get("far_copies", 1) == 0 or fields.get("offset_copies", 1) == 0:
        raise ParseError(source, number, f"{name}: zero copies in the layout")
    if slot_map is not None:
        raid_disks = _number(raid_disks_text, MAX_MEMBERS, source, number, "%s: raid disks", name)
        working = _number(working_text, MAX_MEMBERS, source, number, "%s: working disks", name)
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


def _number(digits: str, high: int, source: str, line: int, what: str, *args: object) -> int:
    """``digits`` (ASCII digits, as the patterns above match them) as an int up to ``high``; the
    label ``what % args`` is only formatted for the ParseError, which ``bounded`` words."""
    if len(digits) <= 20:
        value = int(digits)
        if value <= high:
            return value
    return bounded(digits, source, line, what % args, high)
