"""The alert outbox (issue #35): each reproduction of the issue, against the real alerter, a real
daemon (``hostagent watch``) and a real SMTP server (aiosmtpd on loopback).  Each failed on main
before the outbox."""

from __future__ import annotations

import email.policy
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from hostagent.actions import AuditLog
from hostagent.alerts.alerter import Alerter
from hostagent.alerts.delivery import ascii_host, compose
from hostagent.alerts.outbox import Entry
from hostagent.alerts.settings import AlertsConfig, Route, SmtpConfig
from hostagent.model import Finding, Severity
from hostagent.state import StateStore
from tests.helpers import EXAMPLES
from tests.integration.test_alerts import free_port
from tests.integration.test_cli import hostagent

REPO = Path(__file__).resolve().parents[2]
DEGRADED = Finding("md.degraded", "md", "md0", Severity.CRITICAL, "md0 degraded (1 of 2)")


class Raw:
    """A sink that keeps every accepted message whole (headers and all)."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for m in self.messages]

    def ids(self) -> list[str]:
        return [str(m["Message-ID"]) for m in self.messages]


@pytest.fixture
def raw() -> Iterator[tuple[Controller, Raw]]:
    sink = Raw()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=False)
    controller.start()
    try:
        yield controller, sink
    finally:
        controller.stop()


def alerter(tmp_path: Path, port: int, hostname: str = "hv1", **overrides: Any) -> Alerter:
    config = AlertsConfig(smtp=SmtpConfig(host="127.0.0.1", port=port, timeout=5),
                          routes=(Route(("ops@example.com",)),), **overrides)
    return Alerter(config, StateStore(tmp_path / "state"), tmp_path / "state/spool", hostname,
                   AuditLog(tmp_path / "state"))


# -- 1. the same alert, mailed once, whatever the state database could record -------------------------


def test_a_locked_state_database_mails_an_alert_once(tmp_path: Path, raw: tuple[Controller, Raw]) -> None:
    controller, sink = raw
    agent = alerter(tmp_path, controller.port)
    agent.state._db.execute("PRAGMA busy_timeout = 100")  # the lock is a failure at once, not a 10 s wait
    holder = sqlite3.connect(str(tmp_path / "state/state.db"), isolation_level=None)
    holder.execute("BEGIN")
    holder.execute("SELECT * FROM kv").fetchall()  # a read lock: nobody may write
    try:
        for _ in range(3):
            agent.process([DEGRADED], ["md"])
    finally:
        holder.close()
    agent.process([DEGRADED], ["md"])
    assert sink.subjects() == ["[hostagent] CRITICAL md0 degraded on hv1"]


def test_a_state_database_that_cannot_be_written_still_resolves_the_daemons_own_alerts(
        tmp_path: Path, raw: tuple[Controller, Raw]) -> None:
    controller, sink = raw
    agent = alerter(tmp_path, controller.port)
    own = Finding("agent.cycle_failed", "agent-self", "daemon/cycle", Severity.CRITICAL, "hostagent watch: cycle: boom")
    shutil.rmtree(tmp_path / "state")  # the state directory deleted under the daemon: no write commits
    for _ in range(3):
        agent.process([own], ["agent-self"])
    agent.process([], ["agent-self"])
    assert sink.subjects() == ["[hostagent] CRITICAL daemon/cycle cycle failed on hv1",
                               "[hostagent] RESOLVED daemon/cycle cycle failed on hv1"]
    first, resolved = sink.messages
    assert resolved["In-Reply-To"] == first["Message-ID"] == resolved["References"]  # one thread


def daemon_config(tmp_path: Path, port: int, extra: str = "") -> Path:
    path = tmp_path / "hostagent.toml"
    path.write_text(f"[watch]\nmd_interval = 1\nhung_interval = 1\n[alerts.smtp]\nhost = \"127.0.0.1\"\n"
                    f"port = {port}\ntimeout = 5\n[[alerts.routes]]\nto = [\"ops@example.com\"]\n"
                    "[checks.smart]\nenabled = false\n" + extra)
    return path


def start_daemon(tmp_path: Path, conf: Path, root: Path, state: Path) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "watch.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "hostagent", "--config", str(conf), "watch", "--root",
                                    str(root), "--state-dir", str(state)], stdout=out, stderr=out, cwd=REPO)
    return process, log


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until(what: str, predicate: Any, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}"
                                 + (f"\n{log.read_text(errors='replace')[-3000:]}" if log else ""))
        time.sleep(0.2)


def test_a_daemon_whose_state_directory_is_deleted_mails_an_alert_once(
        tmp_path: Path, raw: tuple[Controller, Raw]) -> None:
    """The state directory deleted under a running daemon, then an array degrades: one mail.  (Not yet
    the issue's reproduction, 11 copies in 22 s: on main before the outbox this passes too, because
    the outbox recreates the directory and SQLite's journal then has one; the issue's run differs.)"""
    controller, sink = raw
    state, root = tmp_path / "state", tmp_path / "root"
    shutil.copytree(EXAMPLES / "healthy-mirror", root)
    process, log = start_daemon(tmp_path, daemon_config(tmp_path, controller.port), root, state)
    try:
        wait_until("the first status", lambda: (state / "status.json").exists(), 60, log)
        shutil.rmtree(state)
        shutil.copytree(EXAMPLES / "failed-member", root, dirs_exist_ok=True)  # md0 loses a member
        wait_until("the alert", lambda: any("md0 degraded" in subject for subject in sink.subjects()), 60, log)
        # a window, not a wait for a state: "no second copy" can only be watched for a while (ten
        # cycles of md_interval = 1; the old code mailed once per cycle)
        time.sleep(10)
    finally:
        stop(process)
    degraded = [subject for subject in sink.subjects() if "md0 degraded" in subject]
    assert len(degraded) == 1, sink.subjects()
    assert len(sink.ids()) == len(set(sink.ids())), sink.subjects()  # and no other mail twice


# -- 2. hostnames: non-ASCII, control characters; one bad entry never starves the rest -----------------


def test_a_daemon_on_a_host_with_a_non_ascii_name_delivers(tmp_path: Path, raw: tuple[Controller, Raw]) -> None:
    controller, sink = raw
    root = tmp_path / "root"
    shutil.copytree(EXAMPLES / "failed-member", root)
    (root / "proc/sys/kernel").mkdir(parents=True, exist_ok=True)
    (root / "proc/sys/kernel/hostname").write_text("häst-01\n")
    conf = daemon_config(tmp_path, controller.port)
    run = hostagent("--config", str(conf), "watch", "--once", "--root", str(root), "--state-dir", str(tmp_path / "s"))
    assert run.returncode == 0, run.stderr
    [mail] = sink.messages
    assert str(mail["Subject"]) == "[hostagent] CRITICAL md0 degraded on häst-01 (+1 more)"
    assert str(mail["Message-ID"]).endswith(f"@hostagent.{ascii_host('häst-01')}>") and \
        ascii_host("häst-01") == "xn--hst-01-bua"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert "hostagent alert ack md.degraded md0" in mail.get_content()


def test_a_hostname_with_a_newline_is_one_header_line_and_mailed(tmp_path: Path, raw: tuple[Controller, Raw]) -> None:
    controller, sink = raw
    agent = alerter(tmp_path, controller.port, hostname="hv1\nBcc: thief@example.com")
    agent.process([DEGRADED], ["md"])
    [mail] = sink.messages
    assert mail["Bcc"] is None and str(mail["Subject"]) == "[hostagent] CRITICAL md0 degraded on hv1 Bcc: " \
        "thief@example.com"
    message_id = str(mail["Message-ID"])
    assert "\n" not in message_id and message_id.endswith("@hostagent.hv1bcc-thief-example.com>")


def test_an_entry_that_cannot_be_sent_is_set_aside_and_the_ones_behind_it_go(
        tmp_path: Path, raw: tuple[Controller, Raw]) -> None:
    """A server without SMTPUTF8: a message to a non-ASCII mailbox is this entry's own fault.  It goes
    to failed/, status names it, and the entry behind it is sent."""
    controller, sink = raw
    agent = alerter(tmp_path, controller.port)
    bad = compose(agent.config, "to a non-ASCII mailbox", "text\n", ["jörg@example.com"], 0.0, "<bad@hv1>")
    agent.outbox.add(Entry(Path(), bad.as_string(), ["jörg@example.com"], 0.0, "<bad@hv1>", "to a non-ASCII mailbox",
                           seq=1))
    agent.process([DEGRADED], ["md"])
    assert sink.subjects() == ["[hostagent] CRITICAL md0 degraded on hv1"]
    [failed] = agent.outbox.set_aside_entries("failed")
    assert "SMTPUTF8" in failed[1]
    assert any(item["where"] == "failed" and "SMTPUTF8" in item["last_error"] for item in agent.undelivered())
    assert [f.code for f in agent.delivery_findings("agent-self")] == ["alert.undeliverable"]


# -- 5. the log: once per cause ------------------------------------------------------------------------


def test_a_read_only_state_directory_is_logged_once_per_cause(tmp_path: Path, raw: tuple[Controller, Raw]) -> None:
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    controller, sink = raw
    state = tmp_path / "state"
    first = hostagent("--config", str(daemon_config(tmp_path, controller.port)), "watch", "--once", "--root",
                      str(EXAMPLES / "failed-member"), "--state-dir", str(state))
    assert first.returncode == 0, first.stderr
    subprocess.run(["mount", "--bind", str(state), str(state)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(state)], check=True)
        process, log = start_daemon(tmp_path, daemon_config(tmp_path, controller.port), EXAMPLES / "failed-member",
                                    state)
        try:
            # a window, not a wait for a state: the issue counted 16 lines of write errors and 63 of
            # audit errors in 14 s; "once per cause" can only be watched over as long a run
            time.sleep(14)
        finally:
            stop(process)
    finally:
        subprocess.run(["umount", str(state)], check=True)
    lines = [line for line in log.read_text(errors="replace").splitlines() if "Read-only file system" in line]
    assert 1 <= len(lines) <= 8, "\n".join(lines)
    assert sink.subjects().count("[hostagent] CRITICAL md0 degraded on hv-failed (+1 more)") == 1, sink.subjects()
    assert len(sink.ids()) == len(set(sink.ids())), sink.subjects()
    # the outbox's own trouble is one alert for as long as it lasts, not one per mail it holds
    assert sum("spool unwritable" in subject for subject in sink.subjects()) == 1, sink.subjects()


# -- 6. the mail itself ------------------------------------------------------------------------------


def test_an_incident_is_one_thread_and_its_resolved_mail_says_what_was_fixed_and_for_how_long(
        tmp_path: Path, raw: tuple[Controller, Raw]) -> None:
    controller, sink = raw
    clock = {"now": 1_800_000_000.0}
    config = AlertsConfig(smtp=SmtpConfig(host="127.0.0.1", port=controller.port, timeout=5),
                          routes=(Route(("ops@example.com",)),), reminder_interval=3600)
    agent = Alerter(config, StateStore(tmp_path / "state"), tmp_path / "spool", "hv1", AuditLog(tmp_path),
                    clock=lambda: clock["now"])
    agent.process([DEGRADED], ["md"])
    clock["now"] += 3700
    agent.process([DEGRADED], ["md"])  # a reminder
    clock["now"] += 3 * 3600
    agent.process([], ["md"])
    first, _, resolved = sink.messages
    assert [m["In-Reply-To"] for m in sink.messages] == [None, first["Message-ID"], first["Message-ID"]]
    assert all(m["Auto-Submitted"] == "auto-generated" for m in sink.messages)
    text = resolved.get_content()
    assert "Fixed: md0 degraded (1 of 2)" in text and "It lasted: 4 h 1 min" in text
    assert "it was CRITICAL at its worst" in text and "severity CRITICAL" not in text
    assert "What happened" not in text
    assert "$ hostagent alert ack md.degraded md0 --until 24h" in first.get_content()


def test_a_non_ascii_mailbox_is_sent_with_smtputf8_where_the_server_offers_it(tmp_path: Path) -> None:
    sink = Raw()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=True)
    controller.start()
    try:
        agent = alerter(tmp_path, controller.port)
        agent.mail("a notice", "text\n", ["jorg@example.com"], "test")
        message = compose(agent.config, "to a non-ASCII mailbox", "text\n", ["jörg@example.com"], 0.0, "<u8@hv1>")
        agent.outbox.add(Entry(Path(), message.as_string(), ["jörg@example.com"], 0.0, "<u8@hv1>", "u8", seq=1))
        agent.flush()
    finally:
        controller.stop()
    assert sorted(str(m["Subject"]) for m in sink.messages) == ["a notice", "to a non-ASCII mailbox"]
    assert agent.outbox.set_aside_entries("failed") == []


# -- the adversarial review of issue #35 (each failed before its fix) --------------------------------


def test_a_finding_with_a_surrogate_neither_stops_the_cycle_nor_the_other_alerts(
        tmp_path: Path, raw: tuple[Controller, Raw]) -> None:
    """A device name read with surrogateescape from bytes that were not UTF-8 raised in compose and
    lost every other alert of the run, every cycle."""
    controller, sink = raw
    agent = alerter(tmp_path, controller.port)
    bad = Finding("md.degraded", "md", "md\udcff0", Severity.CRITICAL, "md\udcff0 degraded \ud800")
    good = Finding("smart.failing", "smart", "sda", Severity.CRITICAL, "sda failing")
    agent.process([bad, good], ["md", "smart"])
    assert sorted(sink.subjects()) == ["[hostagent] CRITICAL md\\udcff0 degraded on hv1",
                                       "[hostagent] CRITICAL sda failing on hv1"]


def test_one_cause_is_logged_once_however_many_entries_it_holds_up(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    agent = alerter(tmp_path, free_port())  # nothing listens: every entry fails the same way
    for number in range(5):
        agent.process([Finding("md.degraded", "md", f"md{number}", Severity.CRITICAL, f"md{number} degraded")],
                      ["md"])
    agent.flush()
    refused = [r for r in caplog.records if "mail delivery failed" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]


class Refusing(Raw):
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "554 5.7.1 refused by policy"


def test_a_mail_refused_for_good_while_the_outbox_cannot_be_written_is_still_named(tmp_path: Path) -> None:
    sink = Refusing()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        (tmp_path / "state").mkdir()
        (tmp_path / "state/spool").write_text("not a directory\n")  # the outbox cannot be written
        agent = alerter(tmp_path, controller.port)
        agent.process([DEGRADED], ["md"])
    finally:
        controller.stop()
    assert [item["where"] for item in agent.undelivered()] == ["failed"]
    assert "554" in agent.undelivered()[0]["last_error"]
    assert "alert.undeliverable" in {f.code for f in agent.delivery_findings("agent-self")}


def test_a_foreign_refused_recipients_file_is_read_value_by_value(tmp_path: Path) -> None:
    agent = alerter(tmp_path, free_port())
    (tmp_path / "state/spool").mkdir(parents=True)
    (tmp_path / "state/spool/refused-recipients").write_text(json.dumps(
        {"ops@example.com": "550 no", "noc@example.com": {"code": "x", "reply": "\x1b[2J", "at": "yesterday"}}))
    found = agent.delivery_findings("agent-self")
    assert [f.subject for f in found if f.code == "alert.recipient_refused"] == ["noc@example.com"]


def test_status_shows_a_hosts_strings_escaped_on_the_terminal() -> None:
    from hostagent.commands.daemon_view import render_status

    hostile = "\x1b]0;pwned\x07\x1b[2J\r\nOK - all fine"
    status = {"pid": 1, "hostname": "hv1", "status": "CRITICAL", "next_runs": {}, "started": 0,
              "last_cycle": {"at": time.time(), "checks": ["md"], "duration_ms": 1.0},
              "failing": {"cycle": hostile}, "last_error": {"at": time.time(), "error": hostile},
              "open_problems": [{"severity": "CRITICAL", "code": "md.degraded", "subject": hostile,
                                 "summary": hostile}],
              "spool": {"messages": 0, "overdue": False, "undelivered": []},
              "refused_recipients": [{"address": hostile, "code": 550, "reply": hostile, "at": "yesterday"}]}
    text = render_status(status, running=True)
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert not any(line.startswith("OK - all fine") for line in text.splitlines())
