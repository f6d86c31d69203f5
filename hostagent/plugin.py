"""The Nagios/Icinga plugin line: ``<STATE> - <worst problems, named> | <perfdata>``.

Per the Monitoring Plugins Development Guidelines (monitoring-plugins.org/doc/guidelines.html):
the first line is the state and a short text, perfdata follows ``|`` as space-separated
``'label'=value[UOM];[warn];[crit];[min];[max]``; the long output follows on the next lines.
"""

from __future__ import annotations

import re

from hostagent.model import Report, Severity

# plugin states: INFO is not one; a host with notes only is OK
STATE = {Severity.OK: "OK", Severity.INFO: "OK", Severity.WARNING: "WARNING", Severity.CRITICAL: "CRITICAL",
         Severity.UNKNOWN: "UNKNOWN"}
SHOWN = 3  # problems named on the first line; the rest are counted
_LABEL_OK = re.compile(r"[A-Za-z0-9_.:/-]+")

# SMART readings -> perfdata (name, UOM); temperatures carry the check's thresholds
_SMART_PERF = (("pending_sectors", ""), ("reallocated_sectors", ""), ("offline_uncorrectable", ""),
               ("reported_uncorrectable", ""), ("crc_errors", "c"), ("media_errors", "c"),
               ("nvme_percentage_used", "%"), ("temperature_celsius", ""))


def state(report: Report) -> str:
    return STATE[report.status]


def headline(report: Report) -> str:
    """``CRITICAL - md0 degraded (1 of 2); sdb: 8 pending sectors``."""
    problems = [f for f in report.findings if f.severity not in (Severity.OK, Severity.INFO)]
    notes = [f for f in report.findings if f.severity is Severity.INFO]
    if problems:
        text = "; ".join(f.headline for f in problems[:SHOWN])
        if len(problems) > SHOWN:
            text += f" (+{len(problems) - SHOWN} more)"
    elif report.results and all(r.examined_nothing for r in report.results):
        text = "nothing to check: no arrays, disks or interfaces found"
    else:
        arrays = len(report.inventory.get("arrays", []))
        text = f"no problems ({arrays} md array{'s' if arrays != 1 else ''})"
        if notes:
            text += f"; {len(notes)} note{'s' if len(notes) != 1 else ''}: " + "; ".join(
                f.headline for f in notes[:SHOWN])
    return f"{state(report)} - {text}"


def label(text: str) -> str:
    """A perfdata label, quoted when it needs to be; ``'`` and ``=`` cannot appear in one."""
    text = text.replace("'", "").replace("=", "_")
    return text if _LABEL_OK.fullmatch(text) else f"'{text}'"


def _value(value: float) -> str:
    return f"{value:.6g}" if isinstance(value, float) and not value.is_integer() else f"{int(value)}"


def _value_or_empty(value: object) -> str:
    return _value(value) if isinstance(value, int | float) else ""


def perfdata(report: Report) -> list[str]:
    """Arrays, degraded members, sync progress, key SMART counters and temperatures, findings by state."""
    out: list[str] = []

    def add(name: str, value: float, uom: str = "", warn: object = "", crit: object = "", low: object = "",
            high: object = "") -> None:
        out.append(f"{label(name)}={_value(value)}{uom};{warn};{crit};{low};{high}".rstrip(";"))

    arrays = report.inventory.get("arrays", [])
    add("arrays", len(arrays), low=0)
    add("arrays_degraded", sum(bool(a["degraded"]) for a in arrays), crit=0, low=0, high=len(arrays))
    for a in arrays:
        raid = a["raid_disks"]
        if raid:
            add(f"{a['name']}_missing_members", a["degraded_disks"], crit=0, low=0, high=raid)
        progress = a["sync"]["progress"]
        if progress is not None:
            add(f"{a['name']}_{a['sync']['action']}", round(progress * 100, 2), "%", low=0, high=100)
    for result in report.results:
        if result.name != "smart":
            continue
        for disk, values in sorted(result.readings.items()):
            for name, uom in _SMART_PERF:
                if name in values:
                    warn, crit = (values.get("temperature_warning_celsius", ""),
                                  values.get("temperature_critical_celsius", "")) if name == "temperature_celsius" \
                        else ("", "")
                    add(f"{disk}_{name.removesuffix('_celsius')}", values[name], uom, _value_or_empty(warn),
                        _value_or_empty(crit), low=0, high=100 if uom == "%" else "")
    for severity in (Severity.CRITICAL, Severity.WARNING, Severity.UNKNOWN):
        add(severity.label, sum(f.severity is severity for f in report.findings), low=0)
    return out


def render(report: Report) -> str:
    """The first line, with its perfdata; the long output is the caller's."""
    return f"{headline(report)} | {' '.join(perfdata(report))}"
