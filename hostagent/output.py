"""Presentations of a Report: human table, JSON, Prometheus textfile (written atomically)."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

from hostagent.model import Report, Severity

_ORDER = (Severity.CRITICAL, Severity.UNKNOWN, Severity.WARNING, Severity.INFO)


# ANSI colours per severity, on a terminal only (https://no-color.org: NO_COLOR set and not empty turns them off)
COLOURS = {Severity.CRITICAL: "\033[1;31m", Severity.UNKNOWN: "\033[1;35m", Severity.WARNING: "\033[1;33m",
           Severity.INFO: "\033[36m", Severity.OK: "\033[1;32m"}
RESET = "\033[0m"


def use_colour(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def render_text(report: Report, colour: bool = False) -> str:
    from hostagent import plugin

    def paint(severity: Severity, text: str) -> str:
        return f"{COLOURS[severity]}{text}{RESET}" if colour else text

    findings = report.findings
    counts = ", ".join(
        f"{sum(f.severity is s for f in findings)} {s.label}" for s in _ORDER if any(f.severity is s for f in findings)
    )
    first = plugin.render(report)
    state = plugin.state(report)
    lines = [paint(report.status, state) + first[len(state):],
             f"hostagent on {report.hostname}: {report.status}" + (f" ({counts})" if counts else "")]
    if report.root != "/":
        lines[1] += f" [snapshot {report.root}]"
    for severity in _ORDER:
        group = [f for f in findings if f.severity is severity]
        if not group:
            continue
        lines += ["", paint(severity, severity.name)]
        width = max(len(f.code) for f in group)
        for f in group:
            lines.append(f"  {f.code:<{width}}  {f.subject:<10} {f.summary}")
            if f.remedy is not None:
                lines.append(f"  {'':<{width}}  {'':<10} -> {f.remedy.what}")
                for command in f.remedy.commands:
                    lines.append(f"  {'':<{width}}  {'':<10}    $ {shlex.join(command)}")
    arrays = report.inventory.get("arrays", [])
    if not findings and report.results and all(r.examined_nothing for r in report.results):
        lines.append("  nothing to check: no arrays, disks or interfaces were found (this is not a clean bill "
                     "of health)")
    elif not findings:
        lines.append(f"  no problems found ({len(arrays)} md array(s))")
    if arrays:
        lines += ["", "arrays:"]
        for a in arrays:
            disks = "" if a["raid_disks"] is None else f"{a['active_disks']}/{a['raid_disks']}"
            members = " ".join(f"{m['device']}({','.join(m['states']) or '?'})" for m in a["members"])
            sync = a["sync"]
            doing = "" if sync["action"] == "idle" else f"  {sync['action']}"
            if sync["progress"] is not None:
                doing += f" {sync['progress']:.1%}"
            lines.append(f"  {a['name']:<8} {a['level'] or '-':<9} {a['state']:<15} {disks:<6} {members}{doing}")
    lines += ["", "checks: " + ", ".join(f"{r.name} {r.describe()} {r.duration_ms:.1f} ms" for r in report.results)]
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2, sort_keys=False) + "\n"


def _labels(**labels: object) -> str:
    def esc(value: object) -> str:
        return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


def render_prom(report: Report) -> str:
    """node_exporter textfile-collector format; every metric is prefixed hostagent_."""
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP hostagent_{name} {help_text}")
        out.append(f"# TYPE hostagent_{name} {kind}")
        for labels, value in samples:
            out.append(f"hostagent_{name}{labels} {value:.15g}")

    metric("status", "gauge", "Worst status as a Nagios code (0 ok, 1 warning, 2 critical, 3 unknown).",
           [("", report.exit_code)])
    metric("check_success", "gauge", "1 if the check ran, 0 if it failed.",
           [(_labels(check=r.name), 0 if r.error else 1) for r in report.results])
    metric("check_duration_seconds", "gauge", "How long the check took.",
           [(_labels(check=r.name), round(r.duration_ms / 1000, 6)) for r in report.results])
    metric("check_items", "gauge", "How many things the check examined (0: nothing to check, not healthy).",
           [(_labels(check=r.name, unit=r.unit), r.items) for r in report.results if r.items is not None])
    metric("last_run_timestamp_seconds", "gauge", "When the check last finished (epoch seconds).",
           [(_labels(check=r.name), round(r.finished_at, 3)) for r in report.results if r.finished_at is not None])
    metric("finding", "gauge", "An open finding (1 per code and subject).",
           [(_labels(code=f.code, subject=f.subject, severity=f.severity.label), 1) for f in report.findings])
    metric("open_findings", "gauge", "Open findings by severity; info is a note, not a problem.",
           [(_labels(severity=s.label), sum(f.severity is s for f in report.findings)) for s in _ORDER])
    metric("report_generated_timestamp_seconds", "gauge", "When this report was put together (epoch seconds).",
           [("", time.time())])
    arrays = report.inventory.get("arrays", [])
    metric("md_array_degraded", "gauge", "1 if the md array is degraded.",
           [(_labels(array=a["name"], level=a["level"] or ""), int(a["degraded"])) for a in arrays])
    metric("md_array_disks", "gauge", "md array disks by role (raid = slots, active = working).",
           [(_labels(array=a["name"], role=role), a[key]) for a in arrays
            for role, key in (("raid", "raid_disks"), ("active", "active_disks")) if a[key] is not None])
    metric("md_member_in_sync", "gauge", "1 if the member is in sync.",
           [(_labels(array=a["name"], device=m["device"]), int("in_sync" in m["states"]))
            for a in arrays for m in a["members"]])
    metric("md_member_faulty", "gauge", "1 if the member is faulty.",
           [(_labels(array=a["name"], device=m["device"]), int("faulty" in m["states"]))
            for a in arrays for m in a["members"]])
    metric("md_sync_progress_ratio", "gauge", "Progress of the running sync action (0..1).",
           [(_labels(array=a["name"], action=a["sync"]["action"]), a["sync"]["progress"])
            for a in arrays if a["sync"]["progress"] is not None])
    metric("md_sync_speed_bytes_per_second", "gauge", "Speed of the running sync action.",
           [(_labels(array=a["name"], action=a["sync"]["action"]), a["sync"]["speed_kbps"] * 1024)
            for a in arrays if a["sync"]["speed_kbps"] is not None])
    metric("md_sync_remaining_seconds", "gauge", "md's estimate of the time the running sync action needs.",
           [(_labels(array=a["name"], action=a["sync"]["action"]), a["sync"]["eta_s"])
            for a in arrays if a["sync"]["eta_s"] is not None])
    smart = next((r.readings for r in report.results if r.name == "smart"), {})
    for reading, (name, scale, help_text) in SMART_METRICS.items():
        metric(f"smart_{name}", "gauge", help_text,
               [(_labels(disk=disk), values[reading] * scale) for disk, values in sorted(smart.items())
                if reading in values])
    return "\n".join(out) + "\n"


# smart check readings -> metric name (unit in the name, base units), scale, help
SMART_METRICS = {
    "selftest_percent_done": ("selftest_percent_done", 1, "How far the running self-test is, in percent (absent: none "
                              "runs)."),
    "health_passed": ("health_passed", 1, "1 if the disk passed its SMART overall-health self-assessment, 0 if not."),
    "temperature_celsius": ("temperature_celsius", 1, "Current drive temperature."),
    "reallocated_sectors": ("reallocated_sectors", 1, "Attribute 5: sectors the drive has reallocated."),
    "pending_sectors": ("pending_sectors", 1, "Attribute 197: sectors waiting to be reallocated."),
    "offline_uncorrectable": ("offline_uncorrectable_sectors", 1, "Attribute 198: sectors the offline scan "
                                                                  "could not read."),
    "reported_uncorrectable": ("reported_uncorrectable_errors", 1, "Attribute 187: errors the drive could not "
                                                                   "correct."),
    "command_timeouts": ("command_timeouts", 1, "Attribute 188: commands that timed out."),
    "crc_errors": ("crc_errors", 1, "Attribute 199: transfers the SATA link damaged."),
    "power_on_hours": ("power_on_seconds", 3600, "Power-on time."),
    "nvme_percentage_used": ("nvme_used_endurance_ratio", 0.01, "NVMe percentage used, as a ratio (1 = the rated "
                                                                 "endurance)."),
    "nvme_available_spare": ("nvme_available_spare_ratio", 0.01, "NVMe available spare, as a ratio."),
    "media_errors": ("nvme_media_errors", 1, "NVMe media and data integrity errors."),
    "grown_defects": ("scsi_grown_defects", 1, "SCSI grown defect list entries."),
    "error_log_entries": ("ata_error_log_entries", 1, "Errors in the drive's ATA error log, over its life."),
}


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write via a temporary file in the same directory and rename, so readers never see half."""
    import tempfile

    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
