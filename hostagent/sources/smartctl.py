"""smartctl JSON (smartmontools >= 7.0): pure parsers for ``-x``, ``--scan-open`` and ``-l scterc``.

Key names follow smartmontools' JSON output (ataprint.cpp, nvmeprint.cpp, scsiprint.cpp).
Only what the checks use is kept; a document that is not smartctl JSON raises ParseError.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from hostagent.errors import ParseError
from hostagent.records import field, record

MIN_VERSION = (7, 0)

# smartctl(8), RETURN VALUES: bit -> meaning.
EXIT_BITS = {
    0: "command line did not parse",
    1: "device open failed, or the device is in a low-power mode",
    2: "a SMART or other command to the disk failed, or a checksum was wrong",
    3: "SMART status check returned DISK FAILING",
    4: "pre-failure attributes at or below threshold were found",
    5: "some attributes were at or below threshold in the past",
    6: "the device error log contains records of errors",
    7: "the device self-test log contains records of errors",
}

# NVMe SMART/Health log, Critical Warning (byte 0) bits.
NVME_CRITICAL_WARNING_BITS = {
    0: "available spare capacity is below its threshold",
    1: "temperature is outside its thresholds",
    2: "reliability is degraded by media or internal errors",
    3: "media has been placed in read-only mode",
    4: "the volatile memory backup device has failed",
    5: "the persistent memory region has become read-only",
}

_POWER_MODE = re.compile(r"Device is in (\S+) mode")


def decode_exit_status(status: int) -> list[str]:
    return [meaning for bit, meaning in EXIT_BITS.items() if status & (1 << bit)]


def decode_nvme_critical_warning(value: int) -> list[str]:
    meanings = [meaning for bit, meaning in NVME_CRITICAL_WARNING_BITS.items() if value & (1 << bit)]
    unknown = value & ~0x3F
    if unknown:
        meanings.append(f"unknown warning bits 0x{unknown:02x}")
    return meanings


@record(frozen=True)
class SmartAttribute:
    id: int
    name: str
    value: int
    worst: int
    thresh: int
    when_failed: str  # "", "now" or "past"
    prefailure: bool
    raw: int
    raw_string: str
    error_rate: bool = False  # flag R (0x08): the drive calls it a rate

    @property
    def is_rate(self) -> bool:
        """A rate, not a count: flagged R with a packed raw value ("0 0 3", or raw48 past 16 bits).

        Some drives flag plain counters R as well (HGST's 198 and 199, raw "12"); those stay counts.
        """
        return self.error_rate and (len(self.raw_numbers) > 1 or self.raw > 0xFFFF)

    @property
    def raw_numbers(self) -> list[int]:
        """The counters in the raw string ("0 0 3" packs three; "25 (Min/Max 19/39)" starts with one)."""
        head = self.raw_string.split("(")[0]
        return [int(n) for n in re.findall(r"\d+", head)] or [self.raw]

    @property
    def count(self) -> int:
        numbers = self.raw_numbers
        if self.id == 188 and len(numbers) == 1 and numbers[0] > 0xFFFF:
            # Seagate packs three 16-bit timeout counters into raw48 when the drive database
            # does not tell smartctl to print them apart ("12 0 12" arrives as 51540393996).
            numbers = [(numbers[0] >> shift) & 0xFFFF for shift in (0, 16, 32)]
        return max(numbers)


# SATA phy event counters that count damaged or refused transfers (SATA 3.x, 13.7.1; smartctl
# -l sataphy).  0x009 (PHYRDY transitions) and 0x00A (COMRESETs) also tick at every boot, so they
# are left out.
PHY_LINK_ERROR_IDS = frozenset({0x001, 0x002, 0x003, 0x004, 0x005, 0x006, 0x007, 0x008, 0x00B, 0x00D, 0x00F,
                                0x010, 0x012, 0x013})


@record(frozen=True)
class AtaError:
    """One entry of the ATA error log: when, where, and the command that failed."""

    number: int
    lifetime_hours: int | None
    lba: int | None
    command: str  # the command that caused the error, in smartctl's words
    description: str  # "Error: UNC at LBA = 0x00abcdef = 11259375"


@record(frozen=True)
class NvmeHealth:
    critical_warning: int
    available_spare: int | None
    available_spare_threshold: int | None
    percentage_used: int | None
    media_errors: int | None


@record(frozen=True)
class SmartReport:
    device: str
    device_type: str | None
    protocol: str | None
    version: tuple[int, int] | None
    exit_status: int
    messages: tuple[str, ...]
    model: str | None = None
    serial: str | None = None
    passed: bool | None = None
    power_mode_skipped: str | None = None  # "STANDBY" when -n standby skipped the disk
    smart_available: bool | None = None
    attributes: dict[int, SmartAttribute] = field(default_factory=dict)
    nvme: NvmeHealth | None = None
    grown_defects: int | None = None
    temperature: int | None = None
    failed_selftests: tuple[str, ...] = ()
    power_on_hours: int | None = None
    phy_link_errors: int | None = None  # since power-on: SATA phy event counters of damaged transfers
    error_log_count: int | None = None  # ATA errors the drive has logged in its life
    error_log: tuple[AtaError, ...] = ()  # newest first
    selftest_percent_done: int | None = None  # while a self-test runs: how far it is

    @property
    def command_failed(self) -> bool:
        """A SMART command failed (exit status bit 2) and no health verdict came back."""
        return bool(self.exit_status & 0b100) and self.passed is None

    def counts(self) -> dict[int, int]:
        """Attribute id -> count, for the attributes that are counts (a rate flagged R is not)."""
        return {i: a.count for i, a in self.attributes.items() if not a.is_rate}

    def readings(self) -> dict[str, float]:
        """Measured values for perfdata and metrics; names carry their unit."""
        counts = self.counts()
        found: dict[str, float] = {}
        if self.passed is not None:
            found["health_passed"] = int(self.passed)
        for attr_id, name in ((5, "reallocated_sectors"), (197, "pending_sectors"), (198, "offline_uncorrectable"),
                              (187, "reported_uncorrectable"), (188, "command_timeouts"), (199, "crc_errors")):
            if attr_id in counts:
                found[name] = counts[attr_id]
        if self.temperature is not None:
            found["temperature_celsius"] = self.temperature
        if self.power_on_hours is not None:
            found["power_on_hours"] = self.power_on_hours
        if self.nvme is not None:
            for name, value in (("nvme_percentage_used", self.nvme.percentage_used),
                                ("nvme_available_spare", self.nvme.available_spare),
                                ("media_errors", self.nvme.media_errors)):
                if value is not None:
                    found[name] = value
        if self.grown_defects is not None:
            found["grown_defects"] = self.grown_defects
        if self.error_log_count is not None:
            found["error_log_entries"] = self.error_log_count
        if self.selftest_percent_done is not None:
            found["selftest_percent_done"] = self.selftest_percent_done
        return found

    @property
    def exit_meanings(self) -> list[str]:
        return decode_exit_status(self.exit_status)

    @property
    def opened(self) -> bool:
        """smartctl could open the device and read its identity."""
        return not (self.exit_status & 0b11) or self.power_mode_skipped is not None

    def counters(self) -> dict[str, int]:
        """The counters whose growth matters, keyed for the baseline store."""
        tracked = (5, 187, 188, 196, 197, 198, 199)
        counts = self.counts()
        found = {f"ata.{i}": counts[i] for i in tracked if i in counts}
        if self.error_log_count is not None:
            found["ata.error_log"] = self.error_log_count
        if self.nvme is not None and self.nvme.media_errors is not None:
            found["nvme.media_errors"] = self.nvme.media_errors
        if self.grown_defects is not None:
            found["scsi.grown_defects"] = self.grown_defects
        return found


T = TypeVar("T")
MAX_DEPTH = 16  # smartctl's output nests 5 deep


def load_json(text: str, source: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ParseError(source, err.lineno, f"not JSON: {err.msg}") from None
    except RecursionError:
        raise ParseError(source, None, f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as err:  # a number over Python's digit limit
        raise ParseError(source, None, f"not usable JSON: {str(err)[:100]}") from None
    if _depth(data) > MAX_DEPTH:
        raise ParseError(source, None, f"JSON nested deeper than {MAX_DEPTH} levels")
    if not isinstance(data, dict) or not isinstance(data.get("smartctl"), dict):
        raise ParseError(source, None, "not smartctl JSON output: no 'smartctl' object")
    return data


def _depth(document: Any) -> int:
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, level = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _shaped(value: Any, kind: type, path: str, source: str) -> Any:
    """``value`` when it is a ``kind`` (dict or list); absent is empty; anything else is a ParseError
    naming the path, never a silent OK."""
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise ParseError(source, None, f"{path}: expected {'an object' if kind is dict else 'a list'}, "
                                       f"got {type(value).__name__}")
    return value


def _version(data: dict[str, Any]) -> tuple[int, int] | None:
    version = data["smartctl"].get("version")
    if isinstance(version, list) and len(version) >= 2 and all(isinstance(v, int) for v in version[:2]):
        return (version[0], version[1])
    return None


def _shape_checked(parse: Callable[[str, str], T]) -> Callable[..., T]:
    """A JSON parser whose every surprise (a list where an object belongs, null for a table) is a
    ParseError naming the output, never an exception from deep inside."""

    @functools.wraps(parse)
    def checked(text: str, source: str) -> T:
        try:
            return parse(text, source)
        except (AttributeError, TypeError, ValueError, KeyError, IndexError, OverflowError) as err:
            raise ParseError(source, None, f"unexpected structure: {type(err).__name__}: {str(err)[:100]}") from None

    return checked


def parse_smartctl(text: str, source: str = "smartctl") -> SmartReport:
    """smartctl --json output -> SmartReport; output of any other shape is a ParseError naming ``source``."""
    return _shape_checked(lambda t, s: _report(load_json(t, s), s))(text, source)


def _report(data: dict[str, Any], source: str) -> SmartReport:
    meta = data["smartctl"]
    exit_status = _int(meta.get("exit_status"))
    if exit_status is None:
        raise ParseError(source, None, "smartctl.exit_status is missing")
    messages = tuple(str(m.get("string", "")) for m in _shaped(meta.get("messages"), list, "smartctl.messages",
                                                                source) if isinstance(m, dict))
    power_mode = next((m.group(1) for text_ in messages if (m := _POWER_MODE.search(text_))), None)
    device: dict[str, Any] = data["device"] if isinstance(data.get("device"), dict) else {}
    status = _shaped(data.get("smart_status"), dict, "smart_status", source)
    passed = status.get("passed") if isinstance(status.get("passed"), bool) else None
    support = data.get("smart_support")
    available = support.get("available") if isinstance(support, dict) else None
    temperature = data.get("temperature")
    power_on = data.get("power_on_time")
    return SmartReport(
        device=str(device.get("name") or ""),
        device_type=device.get("type"),
        protocol=device.get("protocol"),
        version=_version(data),
        exit_status=exit_status,
        messages=messages,
        model=_str(data.get("model_name")) or _str(data.get("scsi_model_name")) or _str(data.get("scsi_product")),
        serial=_str(data.get("serial_number")),
        passed=passed,
        power_mode_skipped=power_mode if exit_status & 0b10 else None,
        smart_available=available if isinstance(available, bool) else None,
        attributes=_attributes(data, source),
        nvme=_nvme(data),
        grown_defects=_int(data.get("scsi_grown_defect_list")),
        temperature=_int(temperature.get("current")) if isinstance(temperature, dict) else None,
        failed_selftests=_failed_selftests(data, source),
        power_on_hours=_int(power_on.get("hours")) if isinstance(power_on, dict) else None,
        phy_link_errors=_phy_link_errors(data, source),
        selftest_percent_done=_selftest_running(data),
        **_error_log(data, source),
    )


def _selftest_running(data: dict[str, Any]) -> int | None:
    """How far a running self-test is (ATA: from the remaining tenths, NVMe: the drive's percent)."""
    try:
        status = _selftest_status(data)
    except (ValueError, TypeError, AttributeError):  # a section of an unexpected shape: no progress to show
        return None
    if not status.running:
        return None
    return status.percent_done if status.percent_done is not None else 0


def _phy_link_errors(data: dict[str, Any], source: str) -> int | None:
    section = _shaped(data.get("sata_phy_event_counters"), dict, "sata_phy_event_counters", source)
    rows = _shaped(section.get("table"), list, "sata_phy_event_counters.table", source)
    if not rows:
        return None
    return sum(_int(row.get("value")) or 0 for row in rows
               if isinstance(row, dict) and _int(row.get("id")) in PHY_LINK_ERROR_IDS)


def _error_log(data: dict[str, Any], source: str) -> dict[str, Any]:
    """The ATA error log (extended with -x, else the summary): its count and its entries, newest first."""
    section = _shaped(data.get("ata_smart_error_log"), dict, "ata_smart_error_log", source)
    log = section.get("extended") if isinstance(section.get("extended"), dict) else section.get("summary")
    if not isinstance(log, dict):
        return {}
    entries = []
    for row in _shaped(log.get("table"), list, "ata_smart_error_log.table", source):
        number = _int(row.get("error_number")) if isinstance(row, dict) else None
        if number is None or "lifetime_hours" not in row:  # an empty slot
            continue
        registers = row.get("completion_registers")
        commands = [c for c in row.get("previous_commands") or [] if isinstance(c, dict)]
        entries.append(AtaError(
            number=number, lifetime_hours=_int(row.get("lifetime_hours")),
            lba=_int(registers.get("lba")) if isinstance(registers, dict) else None,
            command=str(commands[-1].get("command_name", "?")) if commands else "?",
            description=str(row.get("error_description", "")),
        ))
    entries.sort(key=lambda e: -e.number)
    return {"error_log_count": _int(log.get("count")), "error_log": tuple(entries)}


def _attributes(data: dict[str, Any], source: str) -> dict[int, SmartAttribute]:
    section = _shaped(data.get("ata_smart_attributes"), dict, "ata_smart_attributes", source)
    table = _shaped(section.get("table"), list, "ata_smart_attributes.table", source)
    found = {}
    for index, row in enumerate(table):
        try:
            flags = row.get("flags", {})
            prefailure = bool(flags.get("prefailure", flags.get("value", 0) & 1))
            raw = row["raw"]
            found[row["id"]] = SmartAttribute(
                id=int(row["id"]), name=str(row.get("name", "")), value=int(row["value"]),
                worst=int(row.get("worst", row["value"])), thresh=int(row.get("thresh", 0)),
                when_failed=str(row.get("when_failed", "")), prefailure=prefailure,
                raw=int(raw.get("value", 0)), raw_string=str(raw.get("string", raw.get("value", ""))),
                error_rate=bool(flags.get("error_rate", flags.get("value", 0) & 0x08)),
            )
        except KeyError as err:
            raise ParseError(source, None, f"ata_smart_attributes.table[{index}]: missing key {err}") from None
        except (TypeError, ValueError, AttributeError) as err:
            raise ParseError(source, None, f"ata_smart_attributes.table[{index}]: {err}") from None
    return found


def _nvme(data: dict[str, Any]) -> NvmeHealth | None:
    log = data.get("nvme_smart_health_information_log")
    if not isinstance(log, dict):
        return None
    return NvmeHealth(
        critical_warning=_int(log.get("critical_warning")) or 0,
        available_spare=_int(log.get("available_spare")),
        available_spare_threshold=_int(log.get("available_spare_threshold")),
        percentage_used=_int(log.get("percentage_used")),
        media_errors=_int(log.get("media_errors")),
    )


def _failed_selftests(data: dict[str, Any], source: str) -> tuple[str, ...]:
    """The most recent self-test of each kind, where it failed (older failures are history)."""

    def rows(path: str) -> list[dict[str, Any]]:
        value: Any = data
        for part in path.split("."):
            value = _shaped(value.get(part), list if part == "table" else dict, path, source)
        return [row for row in value if isinstance(row, dict)]

    def field(row: dict[str, Any], key: str) -> dict[str, Any]:
        value = row.get(key)
        return value if isinstance(value, dict) else {}

    failed = []
    latest: dict[str, dict[str, Any]] = {}
    for row in rows("ata_smart_self_test_log.standard.table"):  # most recent first
        latest.setdefault(str(field(row, "type").get("string", "test")), row)
    for kind, row in latest.items():
        status = field(row, "status")
        if status.get("passed") is False:
            failed.append(f"{kind}: {status.get('string', 'failed')} at {row.get('lifetime_hours', '?')} h")
    seen: set[str] = set()
    for row in rows("nvme_self_test_log.table"):
        kind = str(field(row, "self_test_code").get("string", "test"))
        result = field(row, "self_test_result")
        if kind in seen:
            continue
        seen.add(kind)
        if _int(result.get("value")) not in (0, None):
            failed.append(f"{kind}: {result.get('string', 'failed')}")
    scsi = [data[k] for k in sorted(data) if re.fullmatch(r"scsi_self_test_\d+", k) and isinstance(data[k], dict)]
    for row in scsi[:1]:
        result = field(row, "result")
        if _int(result.get("value")) not in (0, 15, None):  # 0 completed, 15 in progress
            failed.append(f"{field(row, 'code').get('string', 'test')}: {result.get('string', 'failed')}")
    return tuple(failed)


@record(frozen=True)
class ScanEntry:
    name: str
    device_type: str
    protocol: str | None


def parse_scan(text: str, source: str = "smartctl --scan-open") -> list[ScanEntry]:
    return _shape_checked(_parse_scan)(text, source)


def _parse_scan(text: str, source: str) -> list[ScanEntry]:
    data = load_json(text, source)
    entries = []
    for row in data.get("devices", []):
        if isinstance(row, dict) and row.get("name") and row.get("type"):
            entries.append(ScanEntry(str(row["name"]), str(row["type"]), row.get("protocol")))
    return entries


@record(frozen=True)
class Scterc:
    supported: bool
    read_ds: int | None  # deciseconds; None when disabled
    write_ds: int | None

    @property
    def enabled(self) -> bool:
        return self.supported and bool(self.read_ds) and bool(self.write_ds)


def parse_scterc(text: str, source: str = "smartctl -l scterc") -> Scterc | None:
    return _shape_checked(_parse_scterc)(text, source)


def _parse_scterc(text: str, source: str) -> Scterc | None:
    """SCT Error Recovery Control, or None when smartctl could not ask (see exit status)."""
    data = load_json(text, source)
    erc = data.get("ata_sct_erc")
    if isinstance(erc, dict):
        def limit(direction: str) -> int | None:
            entry = erc.get(direction, {})
            return _int(entry.get("deciseconds")) if entry.get("enabled") else None
        return Scterc(True, limit("read"), limit("write"))
    capabilities = data.get("ata_sct_capabilities")
    if isinstance(capabilities, dict) and capabilities.get("error_recovery_control_supported") is False:
        return Scterc(False, None, None)
    if data["smartctl"].get("exit_status") == 0:
        # smartctl answered but had no ERC to report: it printed "SCT Commands not supported"
        # (or "SCT Error Recovery Control command not supported") as text, which JSON omits.
        return Scterc(False, None, None)
    return None


@record(frozen=True)
class SelfTestStatus:
    """Where the drive's self-test stands: running (and how far), or its newest result."""

    running: bool
    percent_done: int | None = None
    result: str | None = None  # the newest result, in smartctl's words
    failed: bool | None = None  # None while running, after an abort, or with no result at all
    marker: tuple[Any, ...] = ()  # differs once a new result is logged


# Result codes that mean "stopped by someone", not "the disk failed it"; 15 is "in progress".
_ABORTED = {"ata": {1, 2}, "nvme": {1, 2, 3, 4, 8, 9}, "scsi": {1, 2}}
_IN_PROGRESS = 15


def parse_selftest_status(text: str, source: str = "smartctl -c -l selftest") -> SelfTestStatus:
    return _shape_checked(_parse_selftest_status)(text, source)


def _parse_selftest_status(text: str, source: str) -> SelfTestStatus:
    """The self-test state in ``smartctl --json -c -l selftest`` output, for ATA, NVMe and SCSI."""
    return _selftest_status(load_json(text, source))


def _selftest_status(data: dict[str, Any]) -> SelfTestStatus:
    def status(kind: str, code: int | None, words: str, marker: tuple[Any, ...]) -> SelfTestStatus:
        failed = None if code is None or code in _ABORTED[kind] else code != 0
        return SelfTestStatus(False, None, words, failed, marker)

    ata = data.get("ata_smart_data", {}).get("self_test", {}).get("status")
    if isinstance(ata, dict) and _int(ata.get("value")) is not None:
        log = data.get("ata_smart_self_test_log", {}).get("standard", {})
        newest = (log.get("table") or [{}])[0]
        kind = newest.get("type", {}).get("string")
        marker: tuple[Any, ...] = (_int(log.get("count")), kind, newest.get("lifetime_hours"))
        code = ata["value"] >> 4
        if code == _IN_PROGRESS:
            remaining = _int(ata.get("remaining_percent"))
            return SelfTestStatus(True, None if remaining is None else 100 - remaining, marker=marker)
        words = str(ata.get("string", ata["value"]))
        return status("ata", code, f"{kind}: {words}" if kind else words, marker)
    nvme = data.get("nvme_self_test_log")
    if isinstance(nvme, dict):
        table = nvme.get("table") or []
        newest = table[0] if table else {}
        kind = str(newest.get("self_test_code", {}).get("string", "self-test"))
        marker = (len(table), kind, newest.get("power_on_hours"))
        if _int(nvme.get("current_self_test_operation", {}).get("value")):
            return SelfTestStatus(True, _int(nvme.get("current_self_test_completion_percent")), marker=marker)
        if not newest:
            return SelfTestStatus(False, marker=marker)
        result = newest.get("self_test_result", {})
        return status("nvme", _int(result.get("value")), f"{kind}: {result.get('string', '?')}", marker)
    scsi = data.get("scsi_self_test_0")
    if isinstance(scsi, dict):
        result = scsi.get("result", {})
        code = _int(result.get("value"))
        kind = str(scsi.get("code", {}).get("string", "self-test"))
        marker = (kind, scsi.get("power_on_time", {}).get("hours"), code)
        if code == _IN_PROGRESS:
            return SelfTestStatus(True, marker=marker)
        return status("scsi", code, f"{kind}: {result.get('string', '?')}", marker)
    return SelfTestStatus(False)
