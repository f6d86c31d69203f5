"""A model-based search for the next break of the alert path (issue #35, docs/alerts.md, "Delivery").

hypothesis's ``RuleBasedStateMachine`` drives the real alerter, outbox, courier (``flush``) and state
database against a real SMTP server (aiosmtpd on loopback) whose behaviour each rule may change, with
injected clocks (the wall clock and CLOCK_BOOTTIME).  Its rules, between any two steps:

- findings open and close, and a cycle alerts on them;
- an outbox or state write fails, the state database is locked by another process or deleted;
- the SMTP server is down, slow, answers 4xx or 5xx, or accepts;
- the wall clock steps forward or back; time passes;
- the daemon is killed (nothing of it runs on) and started again;
- the hostname carries non-ASCII or control characters.

After every step it checks:

- no Message-ID is accepted twice, except inside the documented window (a kill while the outbox could
  not record a sent mail);
- a RESOLVED never reaches the sink before its alert;
- ``undelivered()`` (what ``status`` shows) names every event the sink has not accepted, unless it was
  only ever held in memory and a kill lost it (docs/alerts.md);
- once the server has accepted mail for ``retry_interval`` and the courier has run, every event the
  sink has not accepted is set aside (refused for good) or lost as above: nothing just waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import errno
import os
import shutil
import sqlite3
import tempfile
from email import message_from_bytes
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hostagent.actions import AuditLog
from hostagent.alerts import outbox as outbox_module
from hostagent.alerts.alerter import Alerter
from hostagent.alerts.outbox import Outbox
from hostagent.alerts.settings import AlertsConfig, Route, SmtpConfig
from hostagent.model import Finding, Severity
from hostagent.records import replace
from hostagent.state import StateStore
from tests.integration.test_alerts import free_port

SUBJECTS = ("md0", "md1", "sdb")
RETRY = 30.0  # alerts.retry_interval in the model (monotonic seconds)
HOSTNAMES = st.sampled_from(["hv1", "häst-01", "hv\nBcc: evil@example.com", "hv\x00\x1b[31m", "ホスト.example",
                             "a" * 300, ""])


class Server:
    """aiosmtpd with a behaviour the model sets: accept, 4xx, 5xx or slow (the banner and replies
    held past the client's timeout, so no message is ever half-accepted)."""

    def __init__(self) -> None:
        self.mode = "accept"
        self.accepted: list[tuple[str, str, str]] = []  # (Message-ID, X-Hostagent-Alerts, subject) in order

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if self.mode == "slow":
            await asyncio.sleep(0.5)
            return "421 too slow"
        if self.mode == "4xx":
            return "451 try again later"
        if self.mode == "5xx":
            return "550 refused for good"
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.content, policy=email.policy.default)
        # a long Message-ID is folded onto a line of its own (legal; the folding space is not the ID's)
        self.accepted.append((str(parsed["Message-ID"]).strip(), str(parsed["X-Hostagent-Alerts"] or ""),
                              str(parsed["Subject"] or "")))
        return "250 OK"


class Faults:
    """What the model breaks: the outbox's writes, the state's writes."""

    def __init__(self) -> None:
        self.outbox = False
        self.state = False


class FaultyOutbox(Outbox):
    faults: Faults

    def add(self, entry: outbox_module.Entry) -> bool:
        if self.faults.outbox:
            raise OSError(errno.EROFS, "Read-only file system (the model)")
        return super().add(entry)

    def mark_sent(self, entry: outbox_module.Entry, at: float) -> None:
        if self.faults.outbox:
            raise OSError(errno.EROFS, "Read-only file system (the model)")
        super().mark_sent(entry, at)

    def save(self, entry: outbox_module.Entry) -> None:
        if self.faults.outbox:
            raise OSError(errno.ENOSPC, "No space left on device (the model)")
        super().save(entry)


class FaultyState(StateStore):
    faults: Faults

    def put(self, key: str, value: Any) -> None:
        if self.faults.state:
            raise sqlite3.OperationalError("disk I/O error (the model)")
        super().put(key, value)


class AlertModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="alert-model-"))
        self.server = Server()
        self.port = free_port()
        self.closed_port = free_port()  # nothing listens there: "down"
        self.controller = Controller(self.server, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        self.faults = Faults()
        self.wall = 1_800_000_000.0
        self.mono = 1000.0
        self.boot = "boot-1"
        self.mode = "accept"
        self.up_since: float | None = self.mono  # monotonic time since when the server accepts
        self.findings: dict[str, Severity] = {}
        self.events: set[str] = set()  # every Message-ID seen in the outbox or in memory
        self.lost: set[str] = set()  # held in memory only, and a kill lost them
        self.dup_allowed: set[str] = set()  # sent, and a kill before its sent record was written
        self.unmailed: set[str] = set()  # alerts ("code subject") whose mail was set aside or lost
        self.locker: sqlite3.Connection | None = None
        self.hostname = "hv1"
        self.alerter: Alerter | None = None

    # -- the agent ------------------------------------------------------------------------------------

    def config(self) -> AlertsConfig:
        port = self.port if self.mode != "down" else self.closed_port
        return AlertsConfig(smtp=SmtpConfig(host="127.0.0.1", port=port, timeout=0.1),
                            routes=(Route(("ops@example.com",)),), retry_interval=RETRY, flap_threshold=99)

    def start(self) -> None:
        state = FaultyState(self.tmp / "state", timeout=0.05)  # a lock is a failure at once, not a 10 s wait
        state.faults = self.faults
        self.alerter = Alerter(self.config(), state, self.tmp / "state/spool", self.hostname,
                               AuditLog(self.tmp / "state"), clock=lambda: self.wall, monotonic=lambda: self.mono,
                               boot=lambda: self.boot)
        outbox = FaultyOutbox(self.alerter.outbox.directory)
        outbox.faults = self.faults
        self.alerter.outbox = outbox

    @initialize(hostname=HOSTNAMES)
    def begin(self, hostname: str) -> None:
        self.hostname = hostname
        self.start()

    def teardown(self) -> None:
        if self.locker is not None:
            self.locker.close()
        self.controller.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def observe(self) -> None:
        """Every event the agent holds now, in the outbox or in memory."""
        assert self.alerter is not None
        with contextlib.suppress(OSError):
            for path in [*self.alerter.outbox.waiting(), *self.alerter.outbox.sent()]:
                with contextlib.suppress(OSError, ValueError):
                    self.events.add(self.alerter.outbox.load(path).message_id)
        self.events |= set(self.alerter._memory)
        for name, _ in self.alerter.outbox.set_aside_entries("failed"):
            with contextlib.suppress(OSError, ValueError):
                entry = self.alerter.outbox.load(self.alerter.outbox.directory / "failed" / name)
                self.unmailed |= {key.replace("|", " ", 1) for key in entry.records}

    # -- rules ------------------------------------------------------------------------------------------

    @rule(subject=st.sampled_from(SUBJECTS), severity=st.sampled_from([Severity.WARNING, Severity.CRITICAL]))
    def open_finding(self, subject: str, severity: Severity) -> None:
        self.findings[subject] = severity

    @rule(subject=st.sampled_from(SUBJECTS))
    def close_finding(self, subject: str) -> None:
        self.findings.pop(subject, None)

    @rule()
    def cycle(self) -> None:
        assert self.alerter is not None
        findings = [Finding("t.broken", "t", subject, severity, f"{subject} is broken")
                    for subject, severity in sorted(self.findings.items())]
        self.alerter.process(findings, ["t"])
        self.observe()

    @rule()
    def courier(self) -> None:
        assert self.alerter is not None
        self.alerter.flush()
        self.observe()

    @rule(mode=st.sampled_from(["accept", "down", "slow", "4xx", "5xx"]))
    def smtp(self, mode: str) -> None:
        assert self.alerter is not None
        if mode == "accept" and self.mode != "accept":
            self.up_since = self.mono
        elif mode != "accept":
            self.up_since = None
        self.mode = mode
        self.server.mode = "accept" if mode == "down" else mode
        self.alerter.config = self.config()

    @rule(broken=st.booleans())
    def outbox_writes(self, broken: bool) -> None:
        self.faults.outbox = broken

    @rule(broken=st.booleans())
    def state_writes(self, broken: bool) -> None:
        self.faults.state = broken

    @rule(held=st.booleans())
    def state_locked(self, held: bool) -> None:
        if held and self.locker is None:
            self.locker = sqlite3.connect(str(self.tmp / "state/state.db"), timeout=1, isolation_level=None)
            self.locker.execute("BEGIN EXCLUSIVE")
        elif not held and self.locker is not None:
            self.locker.close()
            self.locker = None

    @precondition(lambda self: self.locker is None)
    @rule()
    def state_deleted(self) -> None:
        for name in ("state.db", "state.db-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp / "state" / name)

    @rule(seconds=st.floats(min_value=-7200, max_value=86400 * 3))
    def wall_clock_steps(self, seconds: float) -> None:
        self.wall += seconds

    @rule(seconds=st.sampled_from([1.0, RETRY / 2, RETRY, 4 * RETRY, 3600.0]))
    def time_passes(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds

    @rule(hostname=HOSTNAMES, rebooted=st.booleans())
    def killed_and_started(self, hostname: str, rebooted: bool) -> None:
        assert self.alerter is not None
        self.observe()
        self.lost |= set(self.alerter._memory)
        # accepted, with no sent record yet: the one window for a duplicate (docs/alerts.md)
        self.dup_allowed |= set(self.alerter._accepted) | set(self.alerter._unrecorded)
        self.unmailed |= {key.replace("|", " ", 1) for entry in self.alerter._memory.values() for key in entry.records}
        with contextlib.suppress(Exception):
            self.alerter.state.close()
        if rebooted:
            self.boot = f"boot-{self.mono}"
            self.mono = 5.0
            if self.mode == "accept":
                self.up_since = self.mono
        self.hostname = hostname
        self.start()

    # -- invariants ---------------------------------------------------------------------------------------

    @invariant()
    def no_message_is_accepted_twice(self) -> None:
        ids = [message_id for message_id, _, _ in self.server.accepted]
        twice = {m for m in ids if ids.count(m) > 1} - self.dup_allowed
        assert not twice, f"accepted twice: {twice}"

    @invariant()
    def a_resolved_never_comes_before_its_alert(self) -> None:
        opened: set[str] = set()
        for _, alerts, subject in self.server.accepted:
            for item in filter(None, (part.strip() for part in alerts.split(","))):
                kind, _, rest = item.partition(" ")
                if kind == "resolved":
                    assert rest in opened or rest in self.unmailed, f"RESOLVED {rest} before its alert: {subject}"
                else:
                    opened.add(rest)

    @invariant()
    def status_names_every_undelivered_event(self) -> None:
        if self.alerter is None:
            return
        accepted = {message_id for message_id, _, _ in self.server.accepted}
        view = self.alerter.undelivered()
        named = {item["message_id"] for item in view if item["message_id"]}
        files = {item["file"] for item in view if item.get("file")}
        for message_id in self.events - accepted - self.lost:
            if self.alerter.outbox.where(message_id) == "sent":
                continue  # sent: accepted by the server as far as the agent knows (a 250 it recorded)
            assert message_id in named or self.alerter.outbox.file_name(message_id) in files, \
                f"{message_id} is neither accepted nor named by status: {view}"

    @invariant()
    def once_the_server_has_been_up_nothing_just_waits(self) -> None:
        if self.alerter is None or self.up_since is None or self.mono - self.up_since < RETRY:
            return
        if self.faults.outbox or self.faults.state:
            return  # the bound holds once the disk takes writes again
        self.alerter.flush()
        self.observe()
        accepted = {message_id for message_id, _, _ in self.server.accepted}
        for message_id in self.events - accepted - self.lost:
            place = self.alerter.outbox.where(message_id)
            assert place in ("failed", "sent"), f"{message_id} still {place or 'in memory'} with the server up"


AlertModel.TestCase.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
test_alert_model = AlertModel.TestCase


def test_a_clock_step_back_neither_holds_a_retry_nor_makes_the_outbox_young(tmp_path: Path) -> None:
    """The reproduction of issue #35's third case, kept as a plain test beside the model."""
    server = Server()
    port, closed = free_port(), free_port()
    controller = Controller(server, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        clock = {"wall": 1_800_000_000.0, "mono": 100.0}
        config = AlertsConfig(smtp=SmtpConfig(host="127.0.0.1", port=closed, timeout=0.3),
                              routes=(Route(("ops@example.com",)),), retry_interval=60.0)
        alerter = Alerter(config, StateStore(tmp_path / "state"), tmp_path / "state/spool", "hv1",
                          AuditLog(tmp_path / "state"), clock=lambda: clock["wall"], monotonic=lambda: clock["mono"],
                          boot=lambda: "b1")
        alerter.process([Finding("md.degraded", "md", "md0", Severity.CRITICAL, "md0 degraded")], ["md"])
        assert server.accepted == [] and alerter.last_errors  # the network was down at boot
        clock["wall"] -= 3 * 3600  # NTP corrects a clock that was three hours ahead
        clock["mono"] += 61
        alerter.config = replace(config, smtp=replace(config.smtp, port=port))
        assert (alerter.spool_age() or 0) >= 61  # not negative, and counting: it can become overdue
        alerter.flush()
        assert len(server.accepted) == 1, "the retry waited out the clock's step"
    finally:
        controller.stop()
