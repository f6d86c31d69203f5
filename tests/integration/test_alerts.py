"""Alerts end to end with a real SMTP server (aiosmtpd on loopback) and a controllable clock."""

from __future__ import annotations

import contextlib
import email.policy
import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from hostagent.actions import AuditLog
from hostagent.alerts.alerter import Alerter
from hostagent.alerts.settings import AlertsConfig, Route, SmtpConfig
from hostagent.config import Config
from hostagent.host import Host
from hostagent.model import Finding, Severity
from hostagent.runner import run_checks
from hostagent.state import StateStore
from tests.helpers import EXAMPLES


class Sink:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.content, policy=email.policy.default)  # unfolds long headers
        self.messages.append({"to": list(envelope.rcpt_tos), "subject": str(parsed["Subject"]).strip(),
                              "body": parsed.get_payload(decode=True).decode().replace("\r\n", "\n")})
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def sink_server(sink: Sink | None = None, **options: Any) -> Iterator[tuple[Controller, Sink]]:
    """An aiosmtpd server on a free loopback port, stopped whatever happens."""
    sink = sink or Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    try:
        yield controller, sink
    finally:
        controller.stop()


@pytest.fixture
def smtp() -> Iterator[tuple[Controller, Sink]]:
    with sink_server() as server:
        yield server


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, port: int, clock: Clock, **overrides: Any) -> Alerter:
    routes = overrides.pop("routes", (Route(("ops@example.com",)),))
    config = AlertsConfig(smtp=SmtpConfig(host="127.0.0.1", port=port, timeout=5, **overrides.pop("smtp", {})),
                          routes=routes, **overrides)
    state = StateStore(tmp_path / "state")
    return Alerter(config, state, tmp_path / "state/spool", "hv1", AuditLog(tmp_path / "state"), clock=clock)


def degraded(severity: Severity = Severity.CRITICAL) -> Finding:
    return Finding("md.degraded", "md", "md0", severity, "md0 (raid1) is degraded: 1 of 2 members working",
                   "members: sda1 (slot 0: in_sync)")


def test_one_email_per_new_problem_and_none_repeated_after_a_restart(tmp_path: Path, smtp: Any) -> None:
    controller, sink = smtp
    clock = Clock()
    alerter = make(tmp_path, controller.port, clock)
    alerter.process([degraded()], ["md"])
    clock.now += 10
    alerter.process([degraded()], ["md"])
    assert [m["subject"] for m in sink.messages] == ["[hostagent] CRITICAL md0 degraded on hv1"]
    restarted = make(tmp_path, controller.port, clock)
    clock.now += 10
    restarted.process([degraded()], ["md"])
    assert len(sink.messages) == 1
    text = sink.messages[0]["body"]
    assert "What happened: md0 (raid1) is degraded" in text and "UTC" in text and "Host: hv1" in text


def test_reminder_after_its_interval_then_recovery(tmp_path: Path, smtp: Any) -> None:
    controller, sink = smtp
    clock = Clock()
    alerter = make(tmp_path, controller.port, clock, reminder_interval=3600.0, reminder_backoff=2.0)
    alerter.process([degraded()], ["md"])
    clock.now += 3599
    alerter.process([degraded()], ["md"])
    assert len(sink.messages) == 1
    clock.now += 2
    alerter.process([degraded()], ["md"])
    assert sink.messages[-1]["subject"] == "[hostagent] CRITICAL md0 degraded on hv1 (reminder)"
    clock.now += 3601  # diminishing: the next reminder waits twice as long
    alerter.process([degraded()], ["md"])
    assert len(sink.messages) == 2
    clock.now += 3600
    alerter.process([degraded()], ["md"])
    assert len(sink.messages) == 3
    alerter.process([], ["smart"])  # md did not run: nothing can resolve
    assert len(sink.messages) == 3
    alerter.process([], ["md"])
    assert sink.messages[-1]["subject"] == "[hostagent] RESOLVED md0 degraded on hv1"


def test_degraded_at_startup_is_alerted_in_one_mail_per_incident(tmp_path: Path, smtp: Any) -> None:
    """A failed member and the degraded array it leaves are one incident: one mail, named by the worse."""
    controller, sink = smtp
    report = run_checks(Host(EXAMPLES / "failed-member"), Config())
    alerter = make(tmp_path, controller.port, Clock())
    alerter.process(report.findings, [r.name for r in report.results])
    [mail] = sink.messages
    assert mail["subject"] == "[hostagent] CRITICAL md0 degraded on hv1 (+1 more)"
    assert "$ mdadm --detail /dev/md0" in mail["body"]
    assert "What happened: sda2 failed in md0 and is no longer used" in mail["body"]
    assert mail["body"].index("md0 (raid1) is degraded") < mail["body"].index("sda2 failed in md0")
    # each alert keeps its own state and audit record, under the one mail's Message-ID
    records = [json.loads(line) for line in (tmp_path / "state/audit.jsonl").read_text().splitlines()]
    alerts = [r for r in records if r["event"] == "alert"]
    assert sorted(r["subject"] for r in alerts) == ["md0", "md0/sda2"]
    assert len({r["message_id"] for r in alerts}) == 1
    assert set(alerter.records()) == {"md.degraded|md0", "md.failed_member|md0/sda2"}
    # the member removed and the array whole again: one RESOLVED mail for both
    alerter.process([], ["md"])
    assert [m["subject"] for m in sink.messages[1:]] == ["[hostagent] RESOLVED md0 degraded on hv1 (+1 more)"]


def test_only_an_alert_about_a_parent_subject_gathers_its_children(tmp_path: Path, smtp: Any) -> None:
    controller, sink = smtp
    md1 = Finding("md.degraded", "md", "md1", Severity.CRITICAL, "md1 is degraded")
    # a failed member whose spare took over: the array is whole, so the member is an incident alone
    lone = Finding("md.failed_member", "md", "md2/sdc1", Severity.WARNING, "sdc1 failed in md2")
    # the controller's subjects: host/array and host/array/member
    fleet_array = Finding("md.degraded", "md", "hv2/md0", Severity.CRITICAL, "md0 is degraded")
    fleet_member = Finding("md.failed_member", "md", "hv2/md0/sdb1", Severity.WARNING, "sdb1 failed in md0")
    make(tmp_path, controller.port, Clock()).process([degraded(), md1, lone, fleet_member, fleet_array], ["md"])
    assert sorted(m["subject"] for m in sink.messages) == [
        "[hostagent] CRITICAL hv2/md0 degraded on hv1 (+1 more)", "[hostagent] CRITICAL md0 degraded on hv1",
        "[hostagent] CRITICAL md1 degraded on hv1", "[hostagent] WARNING md2/sdc1 failed member on hv1"]


def test_several_recipients_and_routing_by_severity(tmp_path: Path, smtp: Any) -> None:
    controller, sink = smtp
    routes = (Route(("ops@example.com", "noc@example.com")), Route(("pager@example.com",), "critical"))
    alerter = make(tmp_path, controller.port, Clock(), routes=routes)
    alerter.process([degraded(Severity.WARNING)], ["md"])
    assert sink.messages[-1]["to"] == ["ops@example.com", "noc@example.com"]
    alerter.process([degraded(Severity.CRITICAL)], ["md"])  # escalation is a new alert
    assert sink.messages[-1]["to"] == ["ops@example.com", "noc@example.com", "pager@example.com"]
    assert sink.messages[-1]["subject"] == "[hostagent] CRITICAL md0 degraded on hv1 (escalated)"


def self_signed(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1 made with openssl, and a server context that uses it."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return cert, context


def test_starttls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, context = self_signed(tmp_path)
    with sink_server(tls_context=context, require_starttls=True) as (controller, sink):
        untrusting = make(tmp_path / "a", controller.port, Clock(), smtp={"security": "starttls"})
        untrusting.process([degraded()], ["md"])
        assert sink.messages == [] and "CERTIFICATE_VERIFY_FAILED" in " ".join(untrusting.last_errors)
        trusting = make(tmp_path / "b", controller.port, Clock(), smtp={"security": "starttls", "ca_file": str(cert)})
        trusting.process([degraded()], ["md"])
        assert [m["subject"] for m in sink.messages] == ["[hostagent] CRITICAL md0 degraded on hv1"]


def test_smtp_down_spools_and_delivers_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    clock = Clock()
    alerter = make(tmp_path, port, clock)
    alerter.process([degraded()], ["md"])
    alerter.process([Finding("smart.pending", "smart", "sda", Severity.WARNING, "sda: 8 pending sectors")],
                    ["md", "smart"])
    assert len(list((tmp_path / "state/spool").glob("*.json"))) == 3  # new, new, and md0 resolved
    assert alerter.last_errors and alerter.spool_age() is not None
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        restarted = make(tmp_path, port, clock)
        clock.now += 3600
        assert restarted.flush() == 3
        assert restarted.flush() == 0
        assert sorted(m["subject"] for m in sink.messages) == [
            "[hostagent] CRITICAL md0 degraded on hv1", "[hostagent] RESOLVED md0 degraded on hv1",
            "[hostagent] WARNING sda pending on hv1"]
        assert list((tmp_path / "state/spool").glob("*.json")) == []
    finally:
        controller.stop()


def test_flapping_is_suppressed_with_a_summary(tmp_path: Path, smtp: Any) -> None:
    controller, sink = smtp
    clock = Clock()
    alerter = make(tmp_path, controller.port, clock, flap_window=600.0, flap_threshold=3)
    for _ in range(5):
        alerter.process([degraded()], ["md"])
        clock.now += 30
        alerter.process([], ["md"])
        clock.now += 30
    kinds = [m["subject"].rsplit(" on hv1", 1)[1] or m["subject"].split()[1] for m in sink.messages]
    # it comes back a third time within the window: one flapping message, then silence
    assert kinds == ["CRITICAL", "RESOLVED", "CRITICAL", "RESOLVED", "CRITICAL", "RESOLVED", " (flapping)"]
    assert "came back 3 times within 10 min" in sink.messages[-1]["body"]
    clock.now += 700  # quiet for a whole window: one message says how it settled
    alerter.process([], ["md"])
    assert sink.messages[-1]["subject"] == "[hostagent] RESOLVED md0 degraded on hv1"
    assert "settled after flapping" in sink.messages[-1]["body"]


def test_hook_program_gets_the_alert(tmp_path: Path, smtp: Any) -> None:
    controller, _ = smtp
    out = tmp_path / "hook.out"
    hook = tmp_path / "hook.sh"
    fields = "$HOSTAGENT_KIND $HOSTAGENT_CODE $HOSTAGENT_SUBJECT $HOSTAGENT_SEVERITY"
    hook.write_text(f'#!/bin/sh\necho "{fields}" > {out}\ncat >> {out}\n')
    hook.chmod(0o755)
    make(tmp_path, controller.port, Clock(), hook=str(hook)).process([degraded()], ["md"])
    first, payload = out.read_text().split("\n", 1)
    assert first == "new md.degraded md0 CRITICAL"
    assert json.loads(payload)["summary"].startswith("md0 (raid1) is degraded")
    audit = [json.loads(line) for line in (tmp_path / "state/audit.jsonl").read_text().splitlines()]
    assert audit[-1]["event"] == "alert" and audit[-1]["hook_error"] is None


def test_implicit_tls_with_login(tmp_path: Path) -> None:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    cert, context = self_signed(tmp_path)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"s3cret")

    password = tmp_path / "smtp.password"
    password.write_text("s3cret\n")
    with sink_server(ssl_context=context, authenticator=authenticator, auth_require_tls=False) as (controller, sink):
        alerter = make(tmp_path, controller.port, Clock(),
                       smtp={"security": "tls", "ca_file": str(cert), "username": "hostagent",
                             "password_file": str(password)})
        alerter.process([degraded()], ["md"])
        assert [m["subject"] for m in sink.messages] == ["[hostagent] CRITICAL md0 degraded on hv1"]
        assert logins == [(b"hostagent", b"s3cret")]


def test_a_corrupt_spool_entry_is_set_aside_reported_and_the_others_are_sent(tmp_path: Path) -> None:
    port = free_port()
    clock = Clock()
    alerter = make(tmp_path, port, clock)
    alerter.process([degraded()], ["md"])  # SMTP down: spooled
    spool = tmp_path / "state/spool"
    (spool / "0000-garbage.json").write_bytes(b'{"message": "half a mess')
    (spool / "0001-shape.json").write_text('{"message": 5, "to": "ops"}')
    sink = Sink()
    with sink_server(sink) as (controller, _):
        again = make(tmp_path, controller.port, clock)
        clock.now += 3600  # past the retry time
        assert again.flush() == 1
        assert [m["subject"] for m in sink.messages] == ["[hostagent] CRITICAL md0 degraded on hv1"]
        assert sorted(p.name for p in (spool / "corrupt").glob("*.json")) == ["0000-garbage.json", "0001-shape.json"]
        found = {(f.code, f.subject, f.severity) for f in again.delivery_findings("agent")}
        assert found == {("alert.spool_corrupt", "0000-garbage.json", Severity.WARNING),
                         ("alert.spool_corrupt", "0001-shape.json", Severity.WARNING)}
        again.process(again.delivery_findings("agent"), ["agent"])  # as the daemon does: through the routes
        assert sum("spool corrupt" in m["subject"] for m in sink.messages) == 2
        assert "Unterminated string" in (spool / "corrupt/0000-garbage.why").read_text()
        assert "of the wrong type" in (spool / "corrupt/0001-shape.why").read_text()


class Refusing(Sink):
    """Answers DATA with a permanent 554."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "554 5.7.1 message refused by policy"


def test_a_5xx_to_the_message_is_permanent_and_a_4xx_is_not(tmp_path: Path) -> None:
    clock = Clock()
    with sink_server(Refusing()) as (controller, _):
        alerter = make(tmp_path, controller.port, clock)
        alerter.process([degraded()], ["md"])
    spool = tmp_path / "state/spool"
    assert list(spool.glob("*.json")) == []  # not retried
    failed = list((spool / "failed").glob("*.json"))
    assert len(failed) == 1 and "554 5.7.1 message refused by policy" in failed[0].with_suffix(".why").read_text()
    findings = alerter.delivery_findings("agent")
    assert [(f.code, f.severity) for f in findings] == [("alert.undeliverable", Severity.CRITICAL)]
    assert "554 5.7.1" in findings[0].summary


def test_the_same_alert_event_keeps_its_message_id_and_is_spooled_once(tmp_path: Path) -> None:
    """Raised twice from the same state (a crash before the state was saved): one spool entry."""
    port = free_port()
    clock = Clock()
    first = make(tmp_path / "a", port, clock)
    second = make(tmp_path / "b", port, clock)
    first.process([degraded()], ["md"])
    clock.now += 5
    second.outbox = first.outbox  # the restarted daemon finds the first one's outbox
    second.process([degraded()], ["md"])
    entries = [first.outbox.load(path) for path in first.outbox.waiting()]
    assert len(entries) == 1 and entries[0].message_id.startswith("<") and "@hostagent.hv1>" in entries[0].message_id


def test_a_new_alert_never_waits_for_the_courier_stuck_on_a_slow_server(tmp_path: Path) -> None:
    """While the courier is inside a send to a server that dribbles its banner, process() spools the
    next alert and returns: the daemon's checks never wait on SMTP."""
    import time

    from tests.integration.test_alert_faults import silent_server

    port = free_port()
    alerter = make(tmp_path, port, Clock())  # smtp.timeout 5 s: each attempt is held up to 15 s
    with silent_server(port):
        alerter.start_courier()
        try:
            alerter.process([degraded()], ["md"])
            deadline = time.monotonic() + 30
            while not alerter._flush_lock.locked() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert alerter._flush_lock.locked()  # the courier is sending, held by the server
            alerter.process([degraded(), Finding("smart.pending", "smart", "sda", Severity.WARNING,
                                                 "sda: 8 pending sectors")], ["md", "smart"])
            assert alerter._flush_lock.locked()  # returned while the send is still held
            assert len(alerter.outbox.waiting()) == 2  # and the new alert is durably in the outbox
        finally:
            alerter.stop_courier(wait=1.0)


def test_a_spool_that_cannot_be_written_is_itself_an_alert(tmp_path: Path) -> None:
    """alert.spool_unwritable: the spool path is a file (as after a botched restore), and the server is
    down: the mail is held in memory, and the alerter says that a restart would lose it."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state/spool").write_text("not a directory\n")
    alerter = make(tmp_path, free_port(), Clock())
    alerter.process([degraded()], ["md"])
    [finding] = [f for f in alerter.delivery_findings("alerts") if f.code == "alert.spool_unwritable"]
    assert finding.severity is Severity.CRITICAL
    assert "cannot be written" in finding.summary and "1 mail(s) held in memory only" in finding.summary
    assert "a restart before they are sent loses them" in finding.summary
