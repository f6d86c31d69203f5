"""Pure parsers of Xen's ``xl`` output: ``xl list -l`` (JSON), ``xl list``, ``xl pci-list`` and the
progress lines ``xl save`` prints.  No I/O here; ``hostagent.hypervisor.xl_backend`` runs the tool.

Shapes as Xen 4.17's xl prints them (samples in tests/fixtures/xen, captured on a real dom0).
"""

from __future__ import annotations

import json
import re
from typing import Any

from hostagent.errors import ParseError
from hostagent.records import record

DOM0 = 0
MAX_MEMKB = 2**50  # a domain larger than 1 EiB is a parse error, not a number to plan with
_PROGRESS = re.compile(r"xc: progress: (?:Frames|Memory)[^:]*:\s*(\d+)/(\d+)")
_STATE = re.compile(r"^[-rbpscd]{6}$")


@record(frozen=True)
class XlDomain:
    """One domain of ``xl list -l``: what its configuration says."""

    domid: int
    name: str
    type: str  # pv, pvh or hvm
    max_memkb: int
    uuid: str | None = None
    pci: tuple[str, ...] = ()  # host PCI devices passed through, from the configuration


@record(frozen=True)
class XlState:
    """One line of plain ``xl list``: the domain's runtime state flags."""

    domid: int
    name: str
    flags: str  # r running, b blocked, p paused, s shut down, c crashed, d dying
    mem_mib: int = 0  # the Mem column

    @property
    def alive(self) -> bool:
        """Running or able to run: not shut down, crashed or dying."""
        return not any(flag in self.flags for flag in "scd")

    @property
    def paused(self) -> bool:
        return "p" in self.flags


def _int(value: Any, what: str, source: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise ParseError(source, None, f"{what} is {str(value)[:40]!r}, not a number from 0 to {limit}")
    return value


def parse_list_long(text: str, source: str = "xl list -l") -> list[XlDomain]:
    """Every domain in ``xl list -l``'s JSON, Domain-0 included (callers skip ``DOM0``)."""
    if not text.strip():
        return []  # xl prints nothing at all when it cannot read a domain's configuration
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ParseError(source, None, f"not JSON: {str(err)[:120]}") from None
    if not isinstance(data, list):
        raise ParseError(source, None, f"expected a list of domains, got {type(data).__name__}")
    domains = []
    for index, entry in enumerate(data):
        where = f"domain {index}"
        config = entry.get("config") if isinstance(entry, dict) else None
        if not isinstance(config, dict):
            raise ParseError(source, None, f"{where}: no config")
        c_info, b_info = config.get("c_info"), config.get("b_info")
        if not isinstance(c_info, dict) or not isinstance(b_info, dict):
            raise ParseError(source, None, f"{where}: no config.c_info and config.b_info")
        name = c_info.get("name")
        if not isinstance(name, str) or not name or not name.isprintable():
            raise ParseError(source, None, f"{where}: name is {str(name)[:40]!r}")
        kind = c_info.get("type", "pv")
        pcidevs = config.get("pcidevs") or []
        if not isinstance(kind, str) or not isinstance(pcidevs, list):
            raise ParseError(source, None, f"{where} ({name}): type or pcidevs of the wrong shape")
        uuid = c_info.get("uuid")
        domains.append(XlDomain(
            domid=_int(entry.get("domid"), f"{name}: domid", source, 2**16),
            name=name, type=kind,
            max_memkb=_int(b_info.get("max_memkb", 0), f"{name}: max_memkb", source, MAX_MEMKB),
            uuid=uuid if isinstance(uuid, str) else None,
            pci=tuple(_bdf(dev) for dev in pcidevs),
        ))
    return domains


def _bdf(dev: Any) -> str:
    if not isinstance(dev, dict):
        return str(dev)[:40]
    try:
        return f"{int(dev.get('domain', 0)):04x}:{int(dev.get('bus', 0)):02x}:{int(dev.get('dev', 0)):02x}." \
               f"{int(dev.get('func', 0))}"
    except (TypeError, ValueError):
        return "unknown device"


_LINE = re.compile(r"^(?P<name>.*?)[ \t]+(?P<domid>[0-9]{1,6})[ \t]+(?P<mem>[0-9]{1,9})[ \t]+[0-9]{1,6}[ \t]+"
                   r"(?P<state>[-rbpscd]{6})[ \t]+[0-9.]+[ \t]*$")


def parse_list(text: str, source: str = "xl list") -> list[XlState]:
    """``xl list``: Name, ID, Mem, VCPUs, State, Time(s).  A name may hold spaces, runs of them and tabs
    (libvirt and xl forbid little), so the columns are read from the right and the name is the rest,
    as it is, without the padding after it (a leading space is the name's: xl prints names from column 0;
    trailing ones cannot be told from the padding, so ``xl list -l``'s exact names are matched by domid)."""
    states = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        match = _LINE.match(line)
        if match is None and fields[:3] == ["Name", "ID", "Mem"]:
            continue  # the header, by its shape: a domain may be named "Name", or "Name server"
        if match is None or not match.group("name").strip():
            raise ParseError(source, number, f"not a domain line: {line[:80]!r}")
        states.append(XlState(domid=int(match.group("domid")), name=match.group("name"),
                              flags=match.group("state"), mem_mib=int(match.group("mem"))))
    return states


def parse_pci_list(text: str) -> list[str]:
    """``xl pci-list``: a ``Vdev Device`` header, then one line per assigned device (its host BDF last)."""
    return [line.split()[-1] for line in text.splitlines()
            if line.strip() and not line.split()[0].lower().startswith("vdev")]


def parse_progress(text: str) -> tuple[int, int] | None:
    """The last ``xc: progress: Frames: done/total`` that ``xl save`` printed, in pages."""
    found = _PROGRESS.findall(text)
    if not found:
        return None
    done, total = (int(v) for v in found[-1])
    return (done, total) if 0 <= done <= total and total > 0 else None
