"""SMART health per disk, read in the RAID context: which failures threaten data now.

smartctl runs once per disk (``--json=c -x -n standby``) in a child process with a timeout;
a disk in standby is not woken unless it was skipped ``max_standby_skips`` times in a row.
Counters that matter by their growth (pending, reallocated, CRC errors, ...) are compared
with a per-disk baseline in the state store; the first run sets the baseline.
"""

from __future__ import annotations

from typing import Any

from checks.hung import disk_is_hung
from hostagent.context import CheckContext
from hostagent.errors import ParseError, ProbeUnavailable
from hostagent.inventory import Membership
from hostagent.model import Finding, Remedy, Severity
from hostagent.records import record
from hostagent.selftest import DEFAULT_SCHEDULE
from hostagent.sources.blockdev import NO_SMART_TRANSPORTS, Disk
from hostagent.sources.smartctl import (
    MIN_VERSION,
    SmartReport,
    decode_nvme_critical_warning,
    parse_scan,
    parse_smartctl,
)

NAME = "smart"
DESCRIPTION = "SMART health of every disk, with growth since the last check and the RAID context"
SCAN_NAME = "scan-open.json"


@record(frozen=True)
class Config:
    enabled: bool = True
    timeout: float = 60.0
    max_standby_skips: int = 4
    temperature_warning: int = 55
    temperature_critical: int = 65
    nvme_temperature_warning: int = 70
    nvme_temperature_critical: int = 80
    nvme_spare_warning: int = 20
    nvme_wear_warning: int = 80
    # smartd's -s syntax (hostagent/selftest.py); "" runs no self-tests
    selftest_schedule: str = DEFAULT_SCHEDULE
    selftest_interval: float = 300.0  # s between the daemon's looks: due tests, and how running ones end


@record(frozen=True)
class Target:
    """A device smartctl can be pointed at: a disk, or a disk behind a controller."""

    label: str  # what findings name: sda, or bus-6_megaraid,14
    device: str  # /dev/sda, /dev/bus/6
    device_type: str | None  # smartctl -d value
    disk: Disk | None

    @property
    def output_name(self) -> str:
        return f"{self.label}.json"


def run(ctx: CheckContext, config: Config) -> list[Finding]:
    findings: list[Finding] = []
    disks = ctx.inventory.disks()
    smart_disks = []
    for disk in disks:
        if disk.transport in NO_SMART_TRANSPORTS:
            findings.append(_finding("smart.unavailable", disk.name, Severity.INFO,
                                     f"{disk.name} is a {disk.transport} disk: the hypervisor or bus does not "
                                     "pass SMART through; watch the disks of the host that backs it"))
        else:
            smart_disks.append(disk)
    ctx.examine(NAME, len(smart_disks), "disks")
    if not smart_disks:
        return findings
    for target in targets(ctx, smart_disks, config):
        if target.disk is not None and disk_is_hung(ctx, target.disk.name):
            findings.append(_finding("smart.unreadable", target.label, Severity.UNKNOWN,
                                     f"SMART of {target.label} not read: the disk is hung (see disk.hung)"))
            continue
        try:
            report = read_report(ctx, target, config)
        except (ProbeUnavailable, ParseError) as err:
            findings.append(_finding("smart.unreadable", target.label, Severity.UNKNOWN,
                                     f"SMART of {target.label} could not be read: {err}"))
            continue
        memberships = ctx.inventory.memberships(target.disk.name) if target.disk else []
        key = f"smart.baseline.{identity(target, report)}"
        baseline = ctx.state.get(key)
        findings += evaluate(target.label, report, baseline, memberships, config)
        ctx.record(NAME, target.label, readings(report, config))
        if report.opened and report.power_mode_skipped is None:
            ctx.state.put(key, {**(baseline or {}), **report.counters()})
    return findings


def readings(report: SmartReport, config: Config) -> dict[str, float]:
    """The report's measured values, with the temperature thresholds that apply to this disk."""
    values = report.readings()
    if "temperature_celsius" in values:
        nvme = report.nvme is not None
        values["temperature_warning_celsius"] = config.nvme_temperature_warning if nvme else config.temperature_warning
        values["temperature_critical_celsius"] = (config.nvme_temperature_critical if nvme
                                                  else config.temperature_critical)
    return values


def identity(target: Target, report: SmartReport) -> str:
    """The physical drive, so a replaced disk starts a new baseline under the same name."""
    if report.serial:
        return f"drive:{report.model or '?'}:{report.serial}"
    return target.disk.identity if target.disk else f"name:{target.label}"


def targets(ctx: CheckContext, disks: list[Disk], config: Config) -> list[Target]:
    """The disks, with the device type smartctl --scan-open reports, plus disks behind controllers."""
    result = ctx.host.run("smartctl", ["--scan-open", "--json=c"], name=SCAN_NAME, timeout=config.timeout)
    try:
        scan = parse_scan(result.stdout, source="smartctl --scan-open")
    except ParseError:
        first = (result.stdout or result.stderr).strip().splitlines()[:1]
        raise ProbeUnavailable(
            f"smartctl did not answer in JSON ({first[0] if first else 'no output'}): "
            f"smartmontools {MIN_VERSION[0]}.{MIN_VERSION[1]} or newer is required"
        ) from None
    by_name = {entry.name: entry for entry in scan}
    found = []
    for disk in disks:
        entry = by_name.get(disk.dev_path)
        found.append(Target(disk.name, disk.dev_path, entry.device_type if entry else None, disk))
    known = {d.dev_path for d in disks}
    for entry in scan:  # behind a RAID controller: /dev/bus/6 -d megaraid,14; not in /sys/block
        if entry.name not in known and entry.device_type.split("+")[-1].startswith(("megaraid", "cciss", "aacraid")):
            label = entry.name.removeprefix("/dev/").replace("/", "-") + "_" + entry.device_type.replace("+", "-")
            found.append(Target(label, entry.name, entry.device_type, None))
    return found


def read_report(ctx: CheckContext, target: Target, config: Config, count_skips: bool = True) -> SmartReport:
    """smartctl -x for one target; a disk skipped max_standby_skips times in a row is woken."""
    skips_key = f"smart.standby_skips.{target.label}"
    skips = ctx.state.get(skips_key) or 0
    power = "never" if skips >= config.max_standby_skips else "standby"
    args = ["--json=c", "-x", "-n", power]
    if target.device_type:
        args += ["-d", target.device_type]
    result = ctx.host.run("smartctl", [*args, target.device], name=target.output_name, timeout=config.timeout)
    report = parse_smartctl(result.stdout, source=f"smartctl -x {target.device}")
    if report.version is not None and report.version < MIN_VERSION:
        raise ProbeUnavailable(f"smartctl {report.version[0]}.{report.version[1]} is too old; 7.0 or newer needed")
    if count_skips:
        ctx.state.put(skips_key, skips + 1 if report.power_mode_skipped else 0)
    return report


def _finding(code: str, subject: str, severity: Severity, summary: str, detail: str = "",
             remedy: Remedy | None = None, short: str = "") -> Finding:
    return Finding(code, NAME, subject, severity, summary, detail, remedy, short)


def _no_redundancy(memberships: list[Membership]) -> list[str]:
    return [m.array.name for m in memberships if m.array.loses_data_without(m.member)]


def evaluate(label: str, report: SmartReport, baseline: dict[str, Any] | None,
             memberships: list[Membership], config: Config) -> list[Finding]:
    """Findings for one disk's SMART report (pure)."""
    if report.power_mode_skipped is not None:
        return [_finding("smart.standby", label, Severity.INFO,
                         f"{label} is in {report.power_mode_skipped} mode: not woken to read SMART")]
    if not report.opened:
        if any("Unable to detect device type" in m for m in report.messages) or report.smart_available is False:
            return [_finding("smart.unavailable", label, Severity.INFO,
                             f"{label} has no SMART that smartctl can read (behind a RAID controller or a bridge "
                             "without pass-through)")]
        return [_finding("smart.unreadable", label, Severity.UNKNOWN,
                         f"smartctl could not open {label}: " + ("; ".join(report.messages) or
                                                                 "; ".join(report.exit_meanings)))]
    if report.smart_available is False:
        return [_finding("smart.unavailable", label, Severity.INFO, f"{label} does not support SMART")]
    arrays = ", ".join(m.label for m in memberships) or "no md array"
    context = f"{label} holds: {arrays}"
    if report.exit_status:
        context += f"\nsmartctl exit status {report.exit_status}: " + "; ".join(report.exit_meanings)
    exposed = _no_redundancy(memberships)
    grown = {k: v - baseline[k] for k, v in report.counters().items()
             if baseline is not None and k in baseline and v > baseline[k]}
    findings = []
    replace = Remedy(f"Replace {label}: hostagent disk locate blinks its slot, and hostagent disk replace vets the "
                     "new disk, adds it to every array and installs the bootloader",
                     "The disk reports damage it can no longer hide.",
                     (("hostagent", "disk", "locate", label, "--apply"),
                      ("hostagent", "disk", "replace", "--old", label, "--new", "NEW")))

    if report.command_failed and report.passed is not False and not report.exit_status & 0b1000:
        holds = [m.label for m in memberships]
        findings.append(_finding(
            "smart.command_failed", label, Severity.WARNING if holds else Severity.UNKNOWN,
            f"{label}: a SMART command failed and the disk gave no health verdict"
            + (f"; it holds {', '.join(holds)}" if holds else ""),
            context + "\nA disk that cannot answer SMART may be failing, or its controller or bridge may be "
                      "dropping commands.",
            Remedy(f"Read it by hand (smartctl -x /dev/{label}) and check its cable and controller", "",
                   (("smartctl", "-x", f"/dev/{label}"),)),
            short=f"{label}: SMART command failed"))
    if report.passed is False or report.exit_status & 0b1000:
        findings.append(_finding("smart.failed", label, Severity.CRITICAL,
                                 f"{label} failed its SMART overall-health self-assessment", context, replace,
                                 short=f"{label} SMART FAILED"))
    for attr in report.attributes.values():
        failing_now = attr.when_failed == "now" or (attr.thresh > 0 and attr.value <= attr.thresh)
        if attr.prefailure and failing_now:
            findings.append(_finding(
                "smart.prefail", label, Severity.CRITICAL,
                f"{label}: pre-failure attribute {attr.id} {attr.name} is at {attr.value}, threshold {attr.thresh}",
                context, replace))
        elif attr.prefailure and attr.when_failed == "past":
            findings.append(_finding(
                "smart.prefail", label, Severity.WARNING,
                f"{label}: pre-failure attribute {attr.id} {attr.name} was at or below its threshold in the past",
                context))

    counts = report.counts()

    def counter(code: str, ids: tuple[int, ...], what: str, noun: str, base: Severity) -> None:
        values = {i: counts[i] for i in ids if i in counts}
        total = sum(values.values())
        if not total:
            return
        growth = sum(grown.get(f"ata.{i}", 0) for i in ids)
        severity = base
        note = ""
        if growth:
            note = f"; up {growth} since the last check"
            if exposed and code in ("smart.pending", "smart.reallocated", "smart.uncorrectable"):
                severity = Severity.CRITICAL
                note += f", and {label} holds the last in-sync copy of {', '.join(exposed)}"
        shown = ", ".join(f"{report.attributes[i].name}={report.attributes[i].raw_string}" for i in values)
        findings.append(_finding(code, label, severity, f"{label}: {what} ({shown}){note}", context,
                                 short=f"{label}: {total} {noun}"))

    counter("smart.reallocated", (5, 196), "sectors reallocated", "reallocated sectors", Severity.WARNING)
    counter("smart.pending", (197, 198), "sectors pending reallocation or uncorrectable offline",
            "pending sectors", Severity.WARNING)
    counter("smart.uncorrectable", (187,), "errors reported uncorrectable", "uncorrectable errors", Severity.WARNING)
    if counts.get(188):
        attr = report.attributes[188]
        growth = grown.get("ata.188")
        findings.append(_finding("smart.command_timeout", label, Severity.WARNING if growth else Severity.INFO,
                                 f"{label}: {counts[188]} commands timed out (raw {attr.raw_string})"
                                 + (f", up {growth} since the last check" if growth else ", none new"),
                                 context + "\nTimeouts point at the disk's power, cable or controller, "
                                 "or a dying disk."))
    link_now = counts.get(199, 0) and report.phy_link_errors
    if grown.get("ata.199") or link_now:
        if grown.get("ata.199"):
            what = f"{grown['ata.199']} new interface CRC errors since the last check"
        else:
            what = (f"{counts[199]} interface CRC errors, and {report.phy_link_errors} damaged transfers on the "
                    "link since this power-on (SATA phy event counters)")
        findings.append(_finding(
            "smart.cabling", label, Severity.WARNING,
            f"{label}: {what}: the data was damaged on the way, not on the disk",
            context,
            Remedy(f"Check or replace the SATA cable or backplane slot of {label}, not the disk",
                   "UDMA_CRC_Error_Count counts transfers the link corrupted; the disk itself is fine."),
        ))
    if grown.get("ata.error_log") and report.error_log:
        new = [e for e in report.error_log if e.number > report.error_log_count - grown["ata.error_log"]]
        newest = (new or list(report.error_log))[0]
        where = f"LBA {newest.lba}" if newest.lba is not None else "no LBA"
        findings.append(_finding(
            "smart.error_log", label, Severity.WARNING,
            f"{label}: {grown['ata.error_log']} new ATA error(s) logged; the newest: {newest.command} at {where}"
            + (f" ({newest.description})" if newest.description else ""),
            context + "\n" + "\n".join(
                f"error {e.number} at {e.lifetime_hours} h: {e.command}, "
                f"{'LBA ' + str(e.lba) if e.lba is not None else 'no LBA'}; {e.description}" for e in new[:5]),
            short=f"{label}: {grown['ata.error_log']} new ATA errors"))
    findings += _nvme(label, report, grown, context, config, replace)
    if report.grown_defects:
        growth = grown.get("scsi.grown_defects")
        findings.append(_finding("scsi.grown_defects", label, Severity.WARNING,
                                 f"{label}: {report.grown_defects} grown defects"
                                 + (f", up {growth} since the last check" if growth else ""), context))
    if report.failed_selftests:
        findings.append(_finding("smart.selftest_failed", label, Severity.WARNING,
                                 f"{label}: the latest self-test failed: " + "; ".join(report.failed_selftests),
                                 context, replace))
    findings += _temperature(label, report, config)
    return findings


def _nvme(label: str, report: SmartReport, grown: dict[str, int], context: str, config: Config,
          replace: Remedy) -> list[Finding]:
    nvme = report.nvme
    if nvme is None:
        return []
    findings = []
    if nvme.critical_warning:
        meanings = decode_nvme_critical_warning(nvme.critical_warning)
        only_temperature = nvme.critical_warning == 0b10
        findings.append(_finding(
            "nvme.critical_warning", label, Severity.WARNING if only_temperature else Severity.CRITICAL,
            f"{label}: NVMe critical warning 0x{nvme.critical_warning:02x}: " + "; ".join(meanings), context,
            None if only_temperature else replace))
    if nvme.available_spare is not None:
        threshold = nvme.available_spare_threshold or 0
        if nvme.available_spare <= threshold:
            findings.append(_finding("nvme.spare_low", label, Severity.CRITICAL,
                                     f"{label}: available spare {nvme.available_spare}% is at or below the "
                                     f"drive's threshold {threshold}%", context, replace))
        elif nvme.available_spare <= config.nvme_spare_warning:
            findings.append(_finding("nvme.spare_low", label, Severity.WARNING,
                                     f"{label}: available spare {nvme.available_spare}% "
                                     f"(warning at {config.nvme_spare_warning}%)", context))
    if nvme.percentage_used is not None and nvme.percentage_used >= config.nvme_wear_warning:
        findings.append(_finding(
            "nvme.wear", label, Severity.CRITICAL if nvme.percentage_used >= 100 else Severity.WARNING,
            f"{label}: {nvme.percentage_used}% of its rated endurance used", context))
    if nvme.media_errors:
        growth = grown.get("nvme.media_errors")
        findings.append(_finding("nvme.media_errors", label, Severity.WARNING,
                                 f"{label}: {nvme.media_errors} media errors"
                                 + (f", up {growth} since the last check" if growth else ""), context))
    return findings


def _temperature(label: str, report: SmartReport, config: Config) -> list[Finding]:
    if report.temperature is None:
        return []
    nvme = report.nvme is not None
    warning = config.nvme_temperature_warning if nvme else config.temperature_warning
    critical = config.nvme_temperature_critical if nvme else config.temperature_critical
    if report.temperature >= critical:
        severity = Severity.CRITICAL
    elif report.temperature >= warning:
        severity = Severity.WARNING
    else:
        return []
    return [_finding("smart.temperature", label, severity,
                     f"{label} is at {report.temperature} °C (warning {warning}, critical {critical})",
                     short=f"{label} at {report.temperature} °C")]

