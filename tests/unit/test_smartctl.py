"""smartctl JSON parsing and the findings every real sample yields."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from checks import smart
from hostagent.errors import ParseError
from hostagent.sources.smartctl import (
    SelfTestStatus,
    decode_exit_status,
    decode_nvme_critical_warning,
    parse_scan,
    parse_scterc,
    parse_selftest_status,
    parse_smartctl,
)
from tests.helpers import FIXTURES

SMART = FIXTURES / "smartctl-json"

# (code, severity) per sample, with no baseline (first run) and no md arrays on the disk.
EXPECTED = {
    "scrutiny/smart-fail.json": [('smart.unreadable', 'UNKNOWN')],
    "scrutiny/smart-fail2.json": [('smart.failed', 'CRITICAL'), ('smart.prefail', 'CRITICAL'), ('smart.reallocated', 'WARNING'), ('smart.pending', 'WARNING'), ('smart.selftest_failed', 'WARNING')],
    "scrutiny-starosdev/smart-ata-farm.json": [],
    "scrutiny-starosdev/smart-ata-issue587-realssd-m4.json": [],
    "smartctl_exporter/HGST_HUS724020ALE640_28.json": [],
    "smartctl_exporter/HITACHI_H109060SESUN600G_10.json": [],
    "smartctl_exporter/HP_73.4G_MAS3735NC_25.json": [],
    "smartctl_exporter/SAMSUNG_MZ7WD240HAFV-00003_21.json": [],
    "smartctl_exporter/SAMSUNG_MZVL21T0HCLR-00B00_23.json": [],
    "smartctl_exporter/SEAGATE_ST373453LC_27.json": [],
    "smartctl_exporter/ST3200820AS_16.json": [],
    "smartctl_exporter/ST3500418AS_11.json": [('smart.reallocated', 'WARNING'), ('smart.command_timeout', 'INFO')],
    "smartctl_exporter/ST3500418AS_12.json": [('smart.reallocated', 'WARNING')],
    "smartctl_exporter/WDC_WD20EFRX-68EUZN0_17.json": [],
    "smartctl_exporter/nvme-null-INTEL_MEMPEK1W032GA-nvme0.json": [],
    "smartctl_exporter/nvme-null-Micron_7450_MTFDKCC3T8TFR-nvme11.json": [],
    "smartctl_exporter/nvme-null-SAMSUNG_MZWLL3T2HAJQ-00005-nvme0.json": [('smart.failed', 'CRITICAL'), ('nvme.critical_warning', 'CRITICAL')],
    "smartctl_exporter/nvme-null-Samsung_SSD_970_EVO_Plus_250GB-nvme0.json": [],
    "smartctl_exporter/sat-Intel_S4510_S4610_S4500_S4600_Series_SSDs-INTEL_SSDSC2KB240G7-sdd.json": [('smart.reallocated', 'WARNING')],
    "smartctl_exporter/sat-Micron_5100_Pro___52x0___5300_SSDs-Micron_5300_MTFDDAK1T9TDS-sda.json": [('smart.command_timeout', 'INFO')],
    "smartctl_exporter/sat-Phison_Driven_SSDs-KINGSTON_SA400M8120G-sda.json": [],
    "smartctl_exporter/sat-Samsung_based_SSDs-SAMSUNG_MZ7LH1T9HMLT-00005-sda.json": [],
    "smartctl_exporter/sat-Seagate_Exos_X16-ST16000NM001G-2KK103-sda.json": [('smart.command_timeout', 'INFO')],
    "smartctl_exporter/sat-Silicon_Motion_based_SSDs-TS32GMTS400-sda.json": [],
    "smartctl_exporter/sat-Toshiba_MG05ACA..._Enterprise_Capacity_HDD-TOSHIBA_MG05ACA800E-sdw.json": [],
    "telegraf/megaraid-response.json": [],
    "telegraf/nvme-response.json": [],
    "telegraf/scsi-response.json": [],
    "telegraf/scsi_extended-response.json": [],
    "telegraf/usb-response.json": [],
    "qemu/ide-hd-a.json": [],
    "qemu/ide-hd-selftest-never-run.json": [],
    "qemu/ide-hd-selftest-short-done.json": [],
}


def test_every_sample_is_covered() -> None:
    found = sorted(str(p.relative_to(SMART)) for p in SMART.rglob("*.json") if "scan" not in p.name)
    assert found == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_findings_per_sample(name: str) -> None:
    report = parse_smartctl((SMART / name).read_text(), name)
    got = [(f.code, f.severity.name) for f in smart.evaluate("d", report, None, [], smart.Config())]
    assert got == EXPECTED[name]


def test_failing_usb_disk() -> None:
    report = parse_smartctl((SMART / "scrutiny/smart-fail2.json").read_text())
    assert (report.device, report.device_type, report.exit_status) == ("/dev/sdc", "usbjmicron", 216)
    assert report.attributes[5].count == 1975 and report.attributes[197].count == 8
    assert decode_exit_status(216) == [
        "SMART status check returned DISK FAILING",
        "pre-failure attributes at or below threshold were found",
        "the device error log contains records of errors",
        "the device self-test log contains records of errors",
    ]
    findings = {f.code: f for f in smart.evaluate("sdc", report, None, [], smart.Config())}
    assert "Reallocated_Sector_Ct" in findings["smart.prefail"].summary
    assert "1975" in findings["smart.reallocated"].summary
    assert "Extended offline: Completed: read failure at 4 h" in findings["smart.selftest_failed"].summary
    assert "smartctl exit status 216: SMART status check returned DISK FAILING" in findings["smart.failed"].detail


def test_open_failure_is_unknown_with_the_message() -> None:
    report = parse_smartctl((SMART / "scrutiny/smart-fail.json").read_text())
    [finding] = smart.evaluate("sda", report, None, [], smart.Config())
    assert finding.code == "smart.unreadable"
    assert "PhysicalDrive0: Open failed, Error=5" in finding.summary


def test_failing_nvme_decodes_the_critical_warning() -> None:
    report = parse_smartctl((SMART / "smartctl_exporter/nvme-null-SAMSUNG_MZWLL3T2HAJQ-00005-nvme0.json").read_text())
    assert report.nvme is not None and report.nvme.critical_warning == 16
    assert decode_nvme_critical_warning(16) == ["the volatile memory backup device has failed"]
    assert decode_nvme_critical_warning(0x41) == ["available spare capacity is below its threshold",
                                                  "unknown warning bits 0x40"]
    finding = next(f for f in smart.evaluate("nvme0", report, None, [], smart.Config())
                   if f.code == "nvme.critical_warning")
    assert "volatile memory backup" in finding.summary


def test_packed_command_timeout_counters() -> None:
    exos = parse_smartctl((SMART / "smartctl_exporter/sat-Seagate_Exos_X16-ST16000NM001G-2KK103-sda.json").read_text())
    megaraid = parse_smartctl((SMART / "telegraf/megaraid-response.json").read_text())
    assert exos.attributes[188].raw == 51540393996 and exos.attributes[188].count == 12
    assert megaraid.attributes[188].raw_string == "0 0 0" and megaraid.attributes[188].count == 0


def test_nvme_thresholds() -> None:
    base = json.loads((SMART / "telegraf/nvme-response.json").read_text())
    log = base["nvme_smart_health_information_log"]
    cases = [({"available_spare": 4}, ("nvme.spare_low", "CRITICAL")),
             ({"available_spare": 15}, ("nvme.spare_low", "WARNING")),
             ({"percentage_used": 85}, ("nvme.wear", "WARNING")),
             ({"percentage_used": 103}, ("nvme.wear", "CRITICAL")),
             ({"media_errors": 7}, ("nvme.media_errors", "WARNING")),
             ({"critical_warning": 2}, ("nvme.critical_warning", "WARNING"))]
    for change, expected in cases:
        report = parse_smartctl(json.dumps({**base, "nvme_smart_health_information_log": {**log, **change}}))
        assert [(f.code, f.severity.name) for f in smart.evaluate("n", report, None, [], smart.Config())] == [
            expected], change


def test_temperature_limits() -> None:
    base = json.loads((SMART / "smartctl_exporter/WDC_WD20EFRX-68EUZN0_17.json").read_text())
    for current, expected in ((54, []), (55, [("smart.temperature", "WARNING")]), (70, [("smart.temperature", "CRITICAL")])):
        report = parse_smartctl(json.dumps({**base, "temperature": {"current": current}}))
        assert [(f.code, f.severity.name) for f in smart.evaluate("d", report, None, [], smart.Config())] == expected


def test_standby_report() -> None:
    # smartmontools prints this when -n standby skips a sleeping disk (ataprint.cpp); no capture exists.
    text = json.dumps({"json_format_version": [1, 0], "smartctl": {
        "version": [7, 3], "exit_status": 2,
        "messages": [{"string": "Device is in STANDBY mode, exit(2)", "severity": "information"}]},
        "device": {"name": "/dev/sdb", "type": "sat", "protocol": "ATA"}})
    report = parse_smartctl(text)
    assert report.power_mode_skipped == "STANDBY" and report.opened
    assert [f.code for f in smart.evaluate("sdb", report, None, [], smart.Config())] == ["smart.standby"]


@pytest.mark.parametrize(("text", "message"), [
    ("UNRECOGNIZED OPTION: json\n", "not JSON"),
    ('{"devices": []}', "no 'smartctl' object"),
    ('{"smartctl": {"version": [7, 3]}}', "exit_status is missing"),
    ('{"smartctl": {"exit_status": 0}, "ata_smart_attributes": {"table": [{"id": 5}]}}', r"table\[0\]: missing key 'raw'"),
])
def test_malformed_smartctl_output(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_smartctl(text, "smartctl -x /dev/sda")


def test_scan_outputs() -> None:
    entries = parse_scan((SMART / "telegraf/scan-megaraid-response.json").read_text())
    assert [(e.name, e.device_type) for e in entries][:4] == [
        ("/dev/sda", "scsi"), ("/dev/sdb", "scsi"), ("/dev/sdc", "sat"), ("/dev/bus/6", "megaraid,8")]
    assert len(entries) == 10


def test_scterc() -> None:
    m4 = parse_scterc((SMART / "scrutiny-starosdev/smart-ata-issue587-realssd-m4.json").read_text())
    assert m4 is not None and m4.enabled and (m4.read_ds, m4.write_ds) == (40, 40)
    fail2 = parse_scterc((SMART / "scrutiny/smart-fail2.json").read_text())
    assert fail2 is None  # ERC supported per capabilities, but its state was not asked for


# -- the self-test state, as disk replace follows it -----------------------------------------


def selftest(name: str) -> SelfTestStatus:
    return parse_selftest_status((SMART / name).read_text(), name)


def test_selftest_state_of_a_real_drive_before_and_after_a_short_test() -> None:
    """QEMU's SATA disk: an empty log, then its instantly completed short self-test as entry 1."""
    before, after = selftest("qemu/ide-hd-selftest-never-run.json"), selftest("qemu/ide-hd-selftest-short-done.json")
    assert not before.running and not after.running
    assert before.marker != after.marker  # a new result is told from an old one
    assert (after.result, after.failed) == ("Short offline: completed without error", False)


@pytest.mark.parametrize(("name", "result", "failed"), [
    ("scrutiny/smart-fail2.json", "Short offline: completed without error", False),  # newest test passed
    ("telegraf/scsi_extended-response.json", "Background long: Completed", False),
    ("telegraf/nvme-response.json", None, None),  # no test in progress, none logged
    ("smartctl_exporter/HGST_HUS724020ALE640_28.json", None, None),  # smartctl -a without -c: no state
])
def test_selftest_state_of_real_samples(name: str, result: str | None, failed: bool | None) -> None:
    state = selftest(name)
    assert (state.running, state.result, state.failed) == (False, result, failed)


def _edited(name: str, edit: Callable[[dict[str, Any]], None]) -> str:
    data = json.loads((SMART / name).read_text())
    edit(data)
    return json.dumps(data)


def test_selftest_running_failed_and_aborted() -> None:
    """The status byte's other values (ATA: high nibble 15 = running, the low one tenths left;
    3-8 failed; 1-2 aborted), written into the real QEMU sample."""
    def status(value: int, words: str, remaining: int | None = None) -> Callable[[dict[str, Any]], None]:
        def edit(data: dict[str, Any]) -> None:
            data["ata_smart_data"]["self_test"]["status"] = {"value": value, "string": words}
            if remaining is not None:
                data["ata_smart_data"]["self_test"]["status"]["remaining_percent"] = remaining
        return edit

    name = "qemu/ide-hd-selftest-short-done.json"
    running = parse_selftest_status(_edited(name, status(0xF9, "in progress, 90% remaining", 90)))
    assert (running.running, running.percent_done, running.failed) == (True, 10, None)
    failed = parse_selftest_status(_edited(name, status(0x73, "completed: read failure")))
    assert (failed.running, failed.failed) == (False, True)
    assert failed.result == "Short offline: completed: read failure"
    aborted = parse_selftest_status(_edited(name, status(0x10, "aborted by host")))
    assert (aborted.running, aborted.failed) == (False, None)
    # the full report carries the progress too: a reading, a metric, and a bar on the fleet page
    report = parse_smartctl(_edited(name, status(0xF9, "in progress, 90% remaining", 90)))
    assert report.selftest_percent_done == 10 and report.readings()["selftest_percent_done"] == 10
    assert parse_smartctl((SMART / name).read_text()).selftest_percent_done is None  # none runs


def test_nvme_selftest_log() -> None:
    def log(current: int, results: list[int]) -> Callable[[dict[str, Any]], None]:
        def edit(data: dict[str, Any]) -> None:
            data["nvme_self_test_log"] = {
                "current_self_test_operation": {"value": current, "string": "x"},
                "current_self_test_completion_percent": 40,
                "table": [{"self_test_code": {"value": 1, "string": "Short"},
                           "self_test_result": {"value": r, "string": f"result {r}"}, "power_on_hours": 100 - i}
                          for i, r in enumerate(results)]}
        return edit

    name = "telegraf/nvme-response.json"
    running = parse_selftest_status(_edited(name, log(1, [0])))
    assert (running.running, running.percent_done) == (True, 40)
    assert parse_selftest_status(_edited(name, log(0, [7, 0]))).failed is True  # segment failure, newest first
    assert parse_selftest_status(_edited(name, log(0, [0, 7]))).failed is False
    assert parse_selftest_status(_edited(name, log(0, [1]))).failed is None  # aborted by a command


def test_selftest_state_of_bad_input_names_the_source() -> None:
    with pytest.raises(ParseError, match="selftest-of-sdz"):
        parse_selftest_status("{not json", "selftest-of-sdz")
