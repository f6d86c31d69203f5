"""End to end through the real CLI process: golden reports, exit codes, config errors, prom."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import checks
from tests.helpers import EXAMPLES, REPO

GOLDEN = REPO / "tests" / "golden"
EXIT = {"healthy-mirror": 0, "degraded-recovering": 2, "failed-member": 2, "imsm-container": 0, "syn-flood": 2}


def hostagent(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "HOSTAGENT_CONFIG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "hostagent", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def normalized(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what legitimately changes between runs (time, durations, paths)."""
    report = json.loads(json.dumps(report))
    report["generated_at"] = "<time>"
    report["host"]["root"] = "<root>"
    for check in report["checks"]:
        check["duration_ms"] = "<ms>"
    return report


@pytest.mark.parametrize("name", sorted(EXIT))
def test_golden_report(name: str) -> None:
    proc = hostagent("check", "--root", str(EXAMPLES / name), "--json")
    assert proc.returncode == EXIT[name], proc.stderr
    got = normalized(json.loads(proc.stdout))
    golden = GOLDEN / f"{name}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(json.dumps(got, indent=2) + "\n")
    assert got == json.loads(golden.read_text())
    assert got["schema"] == "hostagent.report/1"


def test_exit_code_is_nagios_code_of_worst_status() -> None:
    for name, code in EXIT.items():
        assert hostagent("check", "--root", str(EXAMPLES / name)).returncode == code


def test_human_output_groups_by_severity() -> None:
    out = hostagent("check", "--root", str(EXAMPLES / "failed-member")).stdout
    assert out.index("CRITICAL\n  md.degraded") < out.index("WARNING\n  md.failed_member")
    assert "$ mdadm --manage /dev/md0 --remove /dev/sda2" in out


def test_malformed_mdstat_is_unknown_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/mdstat").write_text("Personalities : [raid1]\nmd0 : active raid1 sda1[0]\n      what is this\n")
    proc = hostagent("check", "--root", str(tmp_path), "--json")
    assert proc.returncode == 3
    report = json.loads(proc.stdout)
    assert report["status"] == "UNKNOWN"
    [check] = [c for c in report["checks"] if c["name"] == "md"]
    assert check["status"] == "UNKNOWN"
    assert f"{tmp_path}/proc/mdstat:3: md0: unrecognised status line" in check["error"]
    assert isinstance(check["duration_ms"], float)
    assert report["findings"][0]["code"] == "check.failed"
    assert "Traceback" not in proc.stderr


def test_unreadable_mdstat_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "proc/mdstat").mkdir(parents=True)  # a directory where a file should be
    proc = hostagent("check", "--root", str(tmp_path))
    assert proc.returncode == 3
    assert "/proc/mdstat" in proc.stdout and "Traceback" not in proc.stderr


def test_prom_textfile_written_atomically(tmp_path: Path) -> None:
    prom = tmp_path / "hostagent.prom"
    proc = hostagent("check", "--root", str(EXAMPLES / "degraded-recovering"), "--prom", str(prom))
    assert proc.returncode == 2
    text = prom.read_text()
    assert "hostagent_status 2\n" in text
    assert 'hostagent_md_array_degraded{array="md0",level="raid1"} 1' in text
    assert 'hostagent_md_array_degraded{array="md1",level="raid1"} 0' in text
    assert 'hostagent_md_member_in_sync{array="md0",device="sda1"} 0' in text
    assert 'hostagent_md_sync_progress_ratio{array="md0",action="recover"} 0.004' in text
    assert 'hostagent_finding{code="md.degraded",subject="md0",severity="critical"} 1' in text
    assert 'hostagent_check_success{check="md"} 1' in text
    assert [p.name for p in tmp_path.iterdir()] == ["hostagent.prom"]  # no temporary file left


def test_prom_to_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "no/such/dir/x.prom"
    proc = hostagent("check", "--root", str(EXAMPLES / "healthy-mirror"), "--prom", str(target))
    assert proc.returncode == 3
    assert "--prom" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[checks.md]\nmismatch_treshold = 3\n", "unknown key checks.md.mismatch_treshold"),
        ("[checks.md]\nenabled = 'yes'\n", "checks.md.enabled: expected a boolean, got string 'yes'"),
        ("[checks.md]\nexpected_spares = { md0 = 1.5 }\n", "checks.md.expected_spares.md0: expected an integer"),
        ("[agent]\ncommand_timeout = -1\n", "agent.command_timeout: must not be negative"),
        ("[nonsense]\n", "unknown key nonsense"),
        ("checks = [\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "hostagent.toml"
    config.write_text(toml)
    proc = hostagent("--config", str(config), "check", "--root", str(EXAMPLES / "healthy-mirror"))
    assert proc.returncode == 3
    assert message in proc.stderr
    assert str(config) in proc.stderr
    assert proc.stdout == ""


def test_config_from_environment_and_missing_named_file(tmp_path: Path) -> None:
    config = tmp_path / "hostagent.toml"
    config.write_text("[checks.md]\nenabled = false\n")
    env = {"HOSTAGENT_CONFIG": str(config)}
    proc = hostagent("check", "--root", str(EXAMPLES / "failed-member"), "--json", env=env)
    assert proc.returncode == 0
    assert [c["name"] for c in json.loads(proc.stdout)["checks"]] == [m.NAME for m in checks.ALL if m.NAME != "md"]
    missing = hostagent("check", env={"HOSTAGENT_CONFIG": str(tmp_path / "absent.toml")})
    assert missing.returncode == 3 and "absent.toml does not exist" in missing.stderr


def test_config_thresholds_apply(tmp_path: Path) -> None:
    config = tmp_path / "hostagent.toml"
    config.write_text('[checks.md]\nignore_arrays = ["md0"]\n')
    proc = hostagent("--config", str(config), "check", "--root", str(EXAMPLES / "failed-member"))
    assert proc.returncode == 0


def test_usage_errors_exit_unknown() -> None:
    proc = hostagent("check", "--bogus")
    assert proc.returncode == 3
    assert "unrecognized arguments: --bogus" in proc.stderr
    assert hostagent("check", "--root", "/no/such/dir").returncode == 3
    only = hostagent("check", "--only", "nosuch")
    assert only.returncode == 3 and "unknown check(s): nosuch" in only.stderr


def test_check_does_not_import_heavy_modules() -> None:
    root = str(EXAMPLES / "healthy-mirror")
    code = (
        f"import sys, runpy; sys.argv=['hostagent','check','--root',{root!r}]\n"
        "try: runpy.run_module('hostagent', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "heavy = [m for m in ('libvirt','paramiko','apscheduler','pyudev','psutil') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in proc.stdout


def test_config_check_validates_without_running_anything(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text("[maintenance]\nconcurrency = 2\n[fleet]\nlimit = [\"dc1\"]\n")
    bad.write_text("[maintenance]\nconcurency = 2\n")
    ok = hostagent("config", "check", str(good))
    assert ok.returncode == 0 and ok.stdout == f"{good}: valid\n"
    refused = hostagent("config", "check", str(bad))
    assert refused.returncode == 3 and "unknown key maintenance.concurency" in refused.stderr
    missing = hostagent("config", "check", str(tmp_path / "none.toml"))
    assert missing.returncode == 3 and "does not exist" in missing.stderr


@pytest.mark.parametrize(("text", "message"), [
    ("reboot_command = []", "maintenance.reboot_command: must name a command"),
    ('reboot_command = [""]', "maintenance.reboot_command: must name a command"),
    ('reboot_command = ["no-such-reboot-tool"]', "'no-such-reboot-tool' is not an executable on this host"),
    ("concurrency = 0", "maintenance.concurrency: must be at least 1"),
    ("restore_attempts = 0", "maintenance.restore_attempts: must be at least 1"),
    ("save_timeout = 0", "maintenance.save_timeout: must be more than 0 s"),
    ("save_timeout = nan", "maintenance.save_timeout: must be a finite number"),
    ("shutdown_timeout = inf", "maintenance.shutdown_timeout: must be a finite number"),
    ('save_dir = "save"', "maintenance.save_dir: must be an absolute path"),
    ('uri = ""', "maintenance.uri: must name the hypervisor"),
    ("notice_lead_times = [0.0]", "maintenance.notice_lead_times: every lead time must be more than 0 s"),
    ('owners = { web1 = "ops@example.com\\nBcc: x@example.com" }', "maintenance.owners.web1"),
])
def test_config_check_refuses_maintenance_values_that_would_fail_mid_run(tmp_path: Path, text: str,
                                                                          message: str) -> None:
    config = tmp_path / "hostagent.toml"
    config.write_text(f"[maintenance]\n{text}\n")
    refused = hostagent("config", "check", str(config))
    assert refused.returncode == 3 and message in refused.stderr, refused.stderr
    assert str(config) in refused.stderr and "Traceback" not in refused.stderr
