"""``hostagent disk status`` and ``hostagent disk tune``: disks with their arrays, health and trend."""

from __future__ import annotations

from typing import Any

from checks import erc, smart
from hostagent.config import Config
from hostagent.context import CheckContext
from hostagent.errors import HostagentError
from hostagent.model import Finding, Severity
from hostagent.sources.blockdev import NO_SMART_TRANSPORTS

KEY_ATTRIBUTES = {5: "reallocated", 197: "pending", 187: "uncorrectable", 199: "crc_errors"}


def disk_status(ctx: CheckContext, config: Config) -> list[dict[str, Any]]:
    """One row per disk (and per disk behind a controller): identity, arrays, health, trend."""
    disks = ctx.inventory.disks()
    rows: dict[str, dict[str, Any]] = {}
    for disk in disks:
        rows[disk.name] = {
            "disk": disk.name, "transport": disk.transport, "model": disk.model, "serial": disk.serial,
            "size_bytes": disk.size_bytes,
            "arrays": [f"{m.array.name}:{m.member.device} ({','.join(m.member.states)})"
                       for m in ctx.inventory.memberships(disk.name)],
            "health": "n/a" if disk.transport in NO_SMART_TRANSPORTS else "unknown",
            "status": Severity.OK.name, "attributes": {}, "trend": {}, "findings": [],
        }
    smart_disks = [d for d in disks if d.transport not in NO_SMART_TRANSPORTS]
    if not smart_disks:
        return list(rows.values())
    try:
        targets = smart.targets(ctx, smart_disks, config.checks.smart)
    except HostagentError as err:
        for disk in smart_disks:
            rows[disk.name]["health"] = f"unknown: {err}"
        return list(rows.values())
    for target in targets:
        row = rows.setdefault(target.label, {
            "disk": target.label, "transport": target.device_type, "model": None, "serial": None,
            "size_bytes": None, "arrays": [], "health": "unknown", "status": Severity.OK.name,
            "attributes": {}, "trend": {}, "findings": []})
        try:
            report = smart.read_report(ctx, target, config.checks.smart, count_skips=False)
        except HostagentError as err:
            row["health"] = f"unreadable: {err}"
            row["status"] = Severity.UNKNOWN.name
            continue
        baseline = ctx.state.get(f"smart.baseline.{smart.identity(target, report)}")
        memberships = ctx.inventory.memberships(target.disk.name) if target.disk else []
        findings = smart.evaluate(target.label, report, baseline, memberships, config.checks.smart)
        row["model"] = row["model"] or report.model
        row["serial"] = row["serial"] or report.serial
        row["health"] = ("standby" if report.power_mode_skipped else
                         {True: "PASSED", False: "FAILED", None: "unknown"}[report.passed])
        row["status"] = Severity.worst(f.severity for f in findings).name
        row["findings"] = [f.code for f in findings]
        row["smartctl_exit"] = {"status": report.exit_status, "meanings": report.exit_meanings}
        row["attributes"] = {
            **{name: report.attributes[i].count for i, name in KEY_ATTRIBUTES.items() if i in report.attributes},
            **({"media_errors": report.nvme.media_errors, "percentage_used": report.nvme.percentage_used}
               if report.nvme else {}),
            **({"grown_defects": report.grown_defects} if report.grown_defects is not None else {}),
            "temperature_c": report.temperature, "power_on_hours": report.power_on_hours,
        }
        if baseline:
            row["trend"] = {k: v - baseline[k] for k, v in report.counters().items()
                            if k in baseline and v != baseline[k]}
    return list(rows.values())


def render_status(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no disks found (0 disks): nothing to check\n"
    header = ("DISK", "TRANSPORT", "MODEL", "SERIAL", "SIZE", "HEALTH", "STATUS", "KEY ATTRIBUTES", "TREND", "ARRAYS")
    lines = [header]
    for row in rows:
        size = row["size_bytes"]
        attrs = " ".join(f"{k}={v}" for k, v in row["attributes"].items() if v is not None) or "-"
        trend = " ".join(f"{k}+{v}" for k, v in row["trend"].items()) or "-"
        lines.append((row["disk"], str(row["transport"] or "-"), row["model"] or "-", row["serial"] or "-",
                      f"{size / 1e12:.2f} TB" if size and size >= 1e12 else (f"{size / 1e9:.1f} GB" if size else "-"),
                      row["health"], row["status"], attrs, trend, ", ".join(row["arrays"]) or "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines) + "\n"


def timeout_mismatches(ctx: CheckContext, config: Config) -> list[Finding]:
    """The ERC check's findings: what ``disk tune`` repairs."""
    return erc.run(ctx, config.checks.erc)
