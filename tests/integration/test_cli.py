"""End to end through the real CLI process: golden reports, exit codes, config errors, prom."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import checks
from tests.helpers import EXAMPLES, REPO, label_values, promtool_problems

GOLDEN = REPO / "tests" / "golden"
EXIT = {"healthy-mirror": 0, "degraded-recovering": 2, "failed-member": 2, "imsm-container": 0, "syn-flood": 2,
        "worn-disk": 1}
# Monitoring Plugins Development Guidelines, "Performance data":
# 'label'=value[UOM];[warn];[crit];[min];[max], space separated; a label with spaces is quoted with ',
# and holds neither ' nor =; UOM is one of s ms us % B KB MB TB c, or none; warn and crit are ranges.
PERF_ITEM = re.compile(r"""(?:'[^'=]+'|[^'= ]+)=-?[0-9]+(?:\.[0-9]+)?(?:s|ms|us|%|B|KB|MB|TB|c)?"""
                       r"""(?:;(?:@?~?-?[0-9.]*:?-?[0-9.]*)?){0,2}(?:;-?[0-9.]*){0,2}""")


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


@pytest.mark.parametrize("name", sorted(EXIT))
def test_golden_plugin_line(name: str) -> None:
    """The first line names the worst problems and carries perfdata in the guidelines' format."""
    proc = hostagent("check", "--root", str(EXAMPLES / name))
    first = proc.stdout.splitlines()[0]
    golden = GOLDEN / f"{name}.plugin.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(first + "\n")
    assert first == golden.read_text().rstrip("\n")
    text, _, perf = first.partition(" | ")
    assert text.split(" - ", 1)[0] == ["OK", "WARNING", "CRITICAL", "UNKNOWN"][proc.returncode]
    assert perf and "|" not in text
    for item in perf.split(" "):
        assert PERF_ITEM.fullmatch(item), item


def test_perfdata_grammar_rejects_what_plugins_must_not_print() -> None:
    """The grammar above is not a catch-all: each of these breaks the guidelines."""
    for bad in ("md0 missing=1", "a=b", "x=1°C", "'a=b'=1", "x=1;;;;;;", "x="):
        assert not PERF_ITEM.fullmatch(bad), bad


def test_notes_only_is_ok_and_names_the_notes(tmp_path: Path) -> None:
    """INFO is not a plugin state: a host with notes only is OK, exit 0, and the line says so."""
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/hostname").write_text("hv-notes\n")
    (tmp_path / "proc/mdstat").write_text("Personalities : [raid1]\nmd0 : active (auto-read-only) raid1 sda1[0] "
                                          "sdb1[1]\n      1000 blocks super 1.2 [2/2] [UU]\n\nunused devices: <none>\n")
    proc = hostagent("check", "--root", str(tmp_path))
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.startswith("OK - no problems (1 md array); 1 note: md0 read only | arrays=1;;;0 "), proc.stdout


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


# (TOML line under its section, what the one error must say about it)
BAD_VALUES = [
    ("agent", "command_timeout = nan", "agent.command_timeout: must be a finite number"),
    ("alerts", "hook_timeout = 0", "alerts.hook_timeout: must be more than 0 s"),
    ("watch", "md_interval = 0.0", "watch.md_interval: must be more than 0 s"),
    ("checks.boot", "timeout = inf", "checks.boot.timeout: must be a finite number"),
    ("checks.smart", "temperature_warning = 70", "checks.smart.temperature_warning: 70 must be below "
                                                 "checks.smart.temperature_critical (65)"),
    ("checks.net", "syn_recv_warning = 2000", "checks.net.syn_recv_warning: 2000 must be below "
                                              "checks.net.syn_recv_critical (1024)"),
    ("checks.net", 'exabgp_next_hop = "blackhole"', "checks.net.exabgp_next_hop: 'blackhole' is not an IP address"),
    ("checks.net", 'never_block = ["10.0.0.0/8", "mgmt"]', "checks.net.never_block[1]: 'mgmt' is not an address"),
    ("alerts.smtp", "port = 0", "alerts.smtp.port: must be a port from 1 to 65535, got 0"),
    ("alerts.smtp", 'host = "mail.example.net\\nRCPT TO:<x@y>"', "alerts.smtp.host: 'mail.example.net\\nRCPT"),
    ("alerts.smtp", 'from_addr = "ops@example.net\\r\\nBcc: x@example.com"', "alerts.smtp.from_addr: "),
    ("alerts.smtp", 'username = "hostagent"', "alerts.smtp.username: AUTH over an unencrypted connection"),
    ("fleet", 'metrics_listen = "127.0.0.1:99999"', "fleet.metrics_listen: '127.0.0.1:99999' is not HOST:PORT"),
    ("checks.net", "mitigation_ttl = 90000.0", "checks.net.mitigation_ttl: 90000.0 must be at most "
                                               "checks.net.mitigation_max_ttl (86400.0)"),
    ("maintenance", "save_timeout = -5", "maintenance.save_timeout: must not be negative"),
    ("maintenance", "concurrency = 0", "maintenance.concurrency: must be at least 1"),
    ("maintenance", "restore_attemps = 2", "unknown key maintenance.restore_attemps"),
    ("agent", 'rpc_allow = ["read", "reboot"]', "agent.rpc_allow[1]: 'reboot' is not a verb or group"),
    ("checks.hung", "crawl_ms = 0", "checks.hung.crawl_ms: must be at least 1000, got 0"),
    ("checks.hung", "hung_after = 0.5", "checks.hung.hung_after: must be at least 1, got 0.5"),
]


def test_every_bad_value_is_reported_at_once(tmp_path: Path) -> None:
    sections: dict[str, list[str]] = {}
    for section, line, _ in BAD_VALUES:
        sections.setdefault(section, []).append(line)
    config = tmp_path / "hostagent.toml"
    config.write_text("".join(f"[{name}]\n" + "\n".join(lines) + "\n" for name, lines in sections.items()))
    refused = hostagent("config", "check", str(config))
    assert refused.returncode == 3 and "Traceback" not in refused.stderr, refused.stderr
    lines = refused.stderr.strip().splitlines()
    for _, line, message in BAD_VALUES:
        assert sum(message in found for found in lines) == 1, (line, message, refused.stderr)
    # one line per problem, each naming the file; the username without a password file is one more
    assert len(lines) == len(BAD_VALUES) + 1 and all(str(config) in found for found in lines), lines
    assert "\r" not in refused.stderr and "\nRCPT" not in refused.stderr  # control characters are shown escaped


def test_plaintext_auth_only_when_allowed_on_purpose(tmp_path: Path) -> None:
    secret = tmp_path / "smtp.password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    config = tmp_path / "hostagent.toml"
    config.write_text(f'[alerts.smtp]\nusername = "hostagent"\npassword_file = "{secret}"\n')
    refused = hostagent("config", "check", str(config))
    assert refused.returncode == 3 and "AUTH over an unencrypted connection" in refused.stderr
    config.write_text(config.read_text() + "allow_plaintext_auth = true\n")
    assert hostagent("config", "check", str(config)).returncode == 0
    config.write_text(f'[alerts.smtp]\nsecurity = "starttls"\nusername = "hostagent"\npassword_file = "{secret}"\n')
    assert hostagent("config", "check", str(config)).returncode == 0


def test_the_password_file_must_be_roots_and_closed_to_others(tmp_path: Path) -> None:
    secret = tmp_path / "smtp.password"
    secret.write_text("s3cret\n")
    config = tmp_path / "hostagent.toml"
    config.write_text(f'[alerts.smtp]\nsecurity = "tls"\nusername = "hostagent"\npassword_file = "{secret}"\n')
    for mode, expected in ((0o644, "has mode 0644: the group and others must not read it"),
                           (0o640, "has mode 0640"), (0o604, "has mode 0604")):
        secret.chmod(mode)
        refused = hostagent("config", "check", str(config))
        assert refused.returncode == 3 and f"alerts.smtp.password_file: {secret} {expected}" in refused.stderr
    secret.chmod(0o600)
    assert hostagent("config", "check", str(config)).returncode == 0
    os.chown(secret, 65534, 65534)  # nobody's: whoever owns it can swap the password
    refused = hostagent("config", "check", str(config))
    assert refused.returncode == 3 and f"{secret} belongs to uid 65534: it must be root's" in refused.stderr
    secret.unlink()
    refused = hostagent("config", "check", str(config))
    assert refused.returncode == 3 and f"{secret}: No such file or directory" in refused.stderr


@pytest.mark.parametrize(("text", "message"), [
    ("x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("x = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n", "nested too deeply"),
    ("[" + ".".join(["a"] * 5000) + "]\n", "unknown key a"),
    ("# " + "x" * (2 << 20) + "\n", "a configuration is at most"),
    ("[alerts]\nhook = '" + "x" * 100000 + "'\n[checks.md]\nenabled = '" + "y" * 100000 + "'\n",
     "checks.md.enabled: expected a boolean"),
])
def test_deep_or_huge_toml_is_a_clean_error(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "hostagent.toml"
    config.write_text(text)
    refused = hostagent("config", "check", str(config))
    assert refused.returncode == 3 and message in refused.stderr, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr and len(refused.stderr) < 4000  # values shown cut short


@pytest.mark.parametrize("name", sorted(EXIT))
def test_textfile_passes_promtool(name: str, tmp_path: Path) -> None:
    """Every example host's textfile passes ``promtool check metrics``; label values are lower case."""
    prom = tmp_path / "hostagent.prom"
    hostagent("check", "--root", str(EXAMPLES / name), "--prom", str(prom))
    text = prom.read_text()
    assert promtool_problems(text) == ""
    assert label_values(text, "severity") <= {"critical", "warning", "unknown", "info"}
    assert 'hostagent_open_findings{severity="info"}' in text  # notes apart from the problems
    if name == "worn-disk":
        assert 'hostagent_smart_reallocated_sectors{disk="sdb"} 304' in text
        assert 'hostagent_smart_temperature_celsius{disk="sda"} 34' in text
        assert 'hostagent_smart_power_on_seconds{disk="sda"} ' in text
    if name == "degraded-recovering":
        assert 'hostagent_md_sync_speed_bytes_per_second{array="md0",action="recover"} 12288' in text
        assert 'hostagent_md_sync_remaining_seconds{array="md0",action="recover"} 16614' in text
