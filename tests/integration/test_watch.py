"""hostagent watch as a real process: alerts at startup, status, log, SIGHUP and SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from tests.helpers import EXAMPLES, FIXTURES
from tests.integration.test_alerts import Sink, free_port
from tests.integration.test_cli import hostagent


def config(tmp_path: Path, port: int, extra: str = "") -> Path:
    path = tmp_path / "hostagent.toml"
    path.write_text(f"[watch]\nmd_interval = 1\nhung_interval = 1\n[alerts.smtp]\nhost = \"127.0.0.1\"\nport = {port}\n"
                    f"[[alerts.routes]]\nto = [\"ops@example.com\", \"noc@example.com\"]\n{extra}")
    return path


def test_watch_alerts_what_is_wrong_at_startup(tmp_path: Path) -> None:
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        conf = config(tmp_path, controller.port)
        state = tmp_path / "state"
        run = hostagent("--config", str(conf), "watch", "--once", "--root", str(EXAMPLES / "failed-member"),
                        "--state-dir", str(state))
        assert run.returncode == 0, run.stderr
        assert [m["subject"] for m in sink.messages] == [  # one incident, one mail
            "[hostagent] CRITICAL md0 degraded on hv-failed (+1 more)"]
        assert all(m["to"] == ["ops@example.com", "noc@example.com"] for m in sink.messages)
        mail = next(m for m in sink.messages if "degraded" in m["subject"])
        assert "Evidence:\n  md0 : active raid1 sda1[0] sda2[1](F)" in mail["body"]
        assert "<4>alert new: CRITICAL md.degraded md0" in run.stderr
        again = hostagent("--config", str(conf), "watch", "--once", "--root", str(EXAMPLES / "failed-member"),
                          "--state-dir", str(state))
        assert again.returncode == 0 and len(sink.messages) == 1  # a restart repeats nothing
        status = json.loads(hostagent("--config", str(conf), "status", "--json", "--state-dir", str(state)).stdout)
        assert status["running"] is False and status["status"] == "CRITICAL"
        assert sorted(p["code"] for p in status["open_problems"]) == ["md.degraded", "md.failed_member"]
        assert status["exit_code"] == 2
        text = hostagent("--config", str(conf), "status", "--state-dir", str(state))
        assert text.returncode == 2  # the worst open problem: a passive check of the daemon
        assert text.stdout.startswith("CRITICAL - hostagent watch is NOT RUNNING; md0 degraded (1 of 2); "
                                      "sda2 failed in md0 | critical=1;;;0 warning=1;;;0 unknown=0;;;0 "
                                      "last_cycle_age="), text.stdout
        log = hostagent("--config", str(conf), "log", "--state-dir", str(state)).stdout
        assert "alert" in log and "md.degraded" in log
    finally:
        controller.stop()


def test_alert_test_sends_to_every_route(tmp_path: Path) -> None:
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        conf = config(tmp_path, controller.port, '[[alerts.routes]]\nto = ["pager@example.com"]\n'
                                                 'min_severity = "critical"\n')
        run = hostagent("--config", str(conf), "alert", "test")
        assert run.returncode == 0, run.stderr
        assert [m["to"] for m in sink.messages] == [["ops@example.com", "noc@example.com"], ["pager@example.com"]]
    finally:
        controller.stop()
    down = hostagent("--config", str(conf), "alert", "test")
    assert down.returncode == 1 and "FAILED: 127.0.0.1:" in down.stdout and "Connection refused" in down.stdout


def wait_for_text(path: Path, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {path}:\n{content}")


def test_bad_config_on_sighup_keeps_the_daemon_running(tmp_path: Path) -> None:
    port = free_port()
    conf = config(tmp_path, port)
    errors = tmp_path / "watch.err"
    env: dict[str, Any] = {k: v for k, v in os.environ.items() if k != "HOSTAGENT_CONFIG"}
    with errors.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "hostagent", "--config", str(conf), "watch", "--root",
                                 str(EXAMPLES / "healthy-mirror"), "--state-dir", str(tmp_path / "state")],
                                stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    try:
        wait_for_text(errors, "hostagent watch started")
        wait_for_text(tmp_path / "state" / "status.json", '"status": "OK"')  # the first cycle has run
        status = hostagent("--config", str(conf), "status", "--state-dir", str(tmp_path / "state"))
        assert status.returncode == 0 and status.stdout.startswith("OK - no problems | critical=0;;;0"), status
        conf.write_text(conf.read_text().replace("md_interval = 1", "md_intervall = 1"))
        proc.send_signal(signal.SIGHUP)
        text = wait_for_text(errors, "new configuration rejected")
        assert f"{conf}: unknown key watch.md_intervall" in text
        assert proc.poll() is None
        conf.write_text(config(tmp_path, port, '[checks.md]\nmismatch_threshold = 7\n').read_text())
        proc.send_signal(signal.SIGHUP)
        wait_for_text(errors, "configuration reloaded")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "hostagent watch stopped" in errors.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sendmail_delivery_and_an_overdue_spool(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    sendmail = tmp_path / "sendmail"
    sendmail.write_text(f'#!/bin/sh\necho "$@" > {outbox}.args\ncat > {outbox}\n')
    sendmail.chmod(0o755)
    conf = config(tmp_path, free_port(), f'[alerts]\nsendmail = "{sendmail}"\n')
    run = hostagent("--config", str(conf), "watch", "--once", "--root", str(EXAMPLES / "failed-member"),
                    "--state-dir", str(tmp_path / "state"))
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "outbox.args").read_text().split() == ["-oi", "--", "ops@example.com", "noc@example.com"]
    assert "Subject: [hostagent]" in outbox.read_text()

    (tmp_path / "down").mkdir()
    down = config(tmp_path / "down", free_port(), "[alerts]\nspool_max_age = 0\n")
    state = tmp_path / "down/state"
    logs = ""
    for _ in range(2):  # the second run finds mail that has waited longer than the limit
        logs += hostagent("--config", str(down), "watch", "--once", "--root", str(EXAMPLES / "failed-member"),
                          "--state-dir", str(state)).stderr
    assert re.search(r"<3>mail delivery failed: \w+\.json: 127\.0\.0\.1:\d+: ", logs), logs
    assert "in the spool (limit 0 s): mail is not getting out" in logs
    status = json.loads(hostagent("--config", str(down), "status", "--json", "--state-dir", str(state)).stdout)
    assert status["spool"]["messages"] == 1 and status["spool"]["overdue"] is True  # one incident, one mail


def test_an_inactive_array_is_alerted_once_the_assembly_grace_has_run_out(tmp_path: Path) -> None:
    """md9 inactive: the daemon's first look says md.assembling (INFO, no mail); the look the md check
    asked for when the grace ends (md_interval is an hour, so nothing else would run it) says
    md.inactive, mailed. ``watch --once``, which nothing follows, says md.inactive at once."""
    from tests.integration.test_alerts import sink_server

    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/mdstat").write_bytes((FIXTURES / "mdstat/pymdstat/mdstat.08").read_bytes())
    state = tmp_path / "state"
    errors = tmp_path / "watch.err"
    env = {k: v for k, v in os.environ.items() if k != "HOSTAGENT_CONFIG"}
    with sink_server() as (controller, sink):
        # a grace long enough for this test to read the first status on a loaded machine (it waits, using no CPU)
        conf = config(tmp_path, controller.port, "[checks.md]\ninactive_grace = 15\n")
        conf.write_text(conf.read_text().replace("md_interval = 1", "md_interval = 3600"))
        with errors.open("w") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "hostagent", "--config", str(conf), "watch", "--root",
                                     str(root), "--state-dir", str(state)],
                                    stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        try:
            first = json.loads(wait_for_text(state / "status.json", "md.assembling"))
            assert [(p["code"], p["severity"]) for p in first["open_problems"]] == [("md.assembling", "INFO")]
            assert sink.messages == []
            wait_for_text(errors, "alert new: CRITICAL md.inactive md0", timeout=90)
            status = json.loads(wait_for_text(state / "status.json", '"md.inactive"'))
            assert [p["code"] for p in status["open_problems"]] == ["md.inactive"]
            deadline = time.monotonic() + 60
            while not sink.messages and time.monotonic() < deadline:
                time.sleep(0.2)
            [mail] = sink.messages
            assert mail["subject"].startswith("[hostagent] CRITICAL md0 inactive on "), mail
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        once = hostagent("--config", str(conf), "watch", "--once", "--root", str(root),
                         "--state-dir", str(tmp_path / "once"))
        assert once.returncode == 0 and "alert new: CRITICAL md.inactive md0" in once.stderr, once.stderr
