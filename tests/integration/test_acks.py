"""Acknowledging a known problem: no reminders while acked, a worse severity or the resolution is
still mailed (aiosmtpd), the ack expires, and every ack is audited; on a host and on the controller."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostagent.alerts import acks
from hostagent.model import Severity
from hostagent.state import StateStore
from tests.integration.test_alerts import Clock, degraded, make, sink_server
from tests.integration.test_cli import hostagent


@pytest.fixture
def smtp() -> Iterator[Any]:
    with sink_server() as server:
        yield server


def ack(state: Path, *args: str, fleet: bool = False) -> Any:
    return hostagent("fleet" if fleet else "alert", "ack", *args, "--state-dir", str(state))


def now_clock() -> Clock:
    clock = Clock()
    clock.now = time.time()  # the CLI dates its acks by the real clock
    return clock


def subjects(sink: Any) -> list[str]:
    return [m["subject"] for m in sink.messages]


def test_an_acked_problem_sends_no_reminders_and_mails_its_resolution(tmp_path: Path, smtp: Any) -> None:
    controller, sink = smtp
    clock = now_clock()
    alerter = make(tmp_path, controller.port, clock, reminder_interval=3600.0)
    alerter.process([degraded()], ["md"])
    assert subjects(sink) == ["[hostagent] CRITICAL md0 degraded on hv1"]
    done = ack(tmp_path / "state", "md.degraded", "md0", "--until", "8h", "--comment", "new disk on its way (T-42)")
    assert done.returncode == 0, done.stderr
    assert "md.degraded md0: acknowledged by " in done.stdout and "T-42" in done.stdout
    for _ in range(5):  # five reminder intervals: not one reminder
        clock.now += 3601
        alerter.process([degraded()], ["md"])
    assert subjects(sink) == ["[hostagent] CRITICAL md0 degraded on hv1"]
    alerter.process([], ["md"])  # fixed: the resolution is mailed, and the ack goes with the problem
    assert subjects(sink)[-1] == "[hostagent] RESOLVED md0 degraded on hv1"
    assert acks.active(StateStore(tmp_path / "state"), clock.now) == {}
    events = [json.loads(line) for line in (tmp_path / "state/audit.jsonl").read_text().splitlines()]
    [acked] = [e for e in events if e.get("event") == "ack"]
    assert (acked["code"], acked["subject"], acked["comment"], acked["severity"]) == (
        "md.degraded", "md0", "new disk on its way (T-42)", "CRITICAL")
    assert [e["why"] for e in events if e.get("event") == "ack-ended"] == ["resolved"]


def test_a_worse_severity_is_mailed_and_ends_the_ack(tmp_path: Path, smtp: Any) -> None:
    controller, sink = smtp
    clock = now_clock()
    alerter = make(tmp_path, controller.port, clock, reminder_interval=3600.0)
    alerter.process([degraded(Severity.WARNING)], ["md"])
    assert ack(tmp_path / "state", "md.degraded", "md0").returncode == 0
    clock.now += 60
    alerter.process([degraded(Severity.CRITICAL)], ["md"])
    assert subjects(sink)[-1] == "[hostagent] CRITICAL md0 degraded on hv1 (escalated)"
    clock.now += 3601  # the ack ended with the escalation: reminders are back
    alerter.process([degraded(Severity.CRITICAL)], ["md"])
    assert subjects(sink)[-1] == "[hostagent] CRITICAL md0 degraded on hv1 (reminder)"


def test_an_ack_expires(tmp_path: Path, smtp: Any) -> None:
    controller, sink = smtp
    clock = now_clock()
    alerter = make(tmp_path, controller.port, clock, reminder_interval=3600.0)
    alerter.process([degraded()], ["md"])
    assert ack(tmp_path / "state", "md.degraded", "md0", "--until", "2h").returncode == 0
    clock.now += 3601
    alerter.process([degraded()], ["md"])
    assert len(sink.messages) == 1
    clock.now += 3601 + 60  # past the ack's end: the overdue reminder goes out
    alerter.process([degraded()], ["md"])
    assert subjects(sink)[-1] == "[hostagent] CRITICAL md0 degraded on hv1 (reminder)"


def test_bad_acks_are_refused_with_the_reason(tmp_path: Path, smtp: Any) -> None:
    controller, _ = smtp
    alerter = make(tmp_path, controller.port, now_clock())
    alerter.process([degraded()], ["md"])
    state = tmp_path / "state"
    missing = ack(state, "md.degraded", "md9")
    assert missing.returncode == 3 and "no open alert md.degraded md9" in missing.stderr
    assert "open: md.degraded md0" in missing.stderr
    for until, why in (("yesterday", "give a span"), ("2020-01-01 00:00", "not in the future"),
                       ("90d", "at most 30 days")):
        refused = ack(state, "md.degraded", "md0", "--until", until)
        assert refused.returncode == 3 and why in refused.stderr and "Traceback" not in refused.stderr
    assert acks.active(StateStore(state), time.time()) == {}  # nothing half-written
    listed = hostagent("alert", "acks", "--state-dir", str(state))
    assert listed.stdout == "no acknowledged alerts\n"
    assert ack(state, "md.degraded", "md0", "--comment", "on it").returncode == 0
    listed = json.loads(hostagent("alert", "acks", "--json", "--state-dir", str(state)).stdout)
    assert [(a["code"], a["subject"], a["comment"]) for a in listed] == [("md.degraded", "md0", "on it")]
    gone = hostagent("alert", "unack", "md.degraded", "md0", "--state-dir", str(state))
    assert gone.returncode == 0 and "reminders resume" in gone.stdout


def test_the_controller_acks_a_hosts_problem(tmp_path: Path, smtp: Any) -> None:
    """fleet ack HOST/SUBJECT: the controller's own reminders of hv2's problem stop."""
    controller, sink = smtp
    clock = now_clock()
    alerter = make(tmp_path, controller.port, clock, reminder_interval=3600.0)
    from hostagent.model import Finding

    host_problem = Finding("md.degraded", "fleet", "hv2/md0", Severity.CRITICAL, "hv2: md0 is degraded")
    alerter.process([host_problem], ["fleet"])
    done = ack(tmp_path / "state", "md.degraded", "hv2/md0", "--comment", "DC ticket 7", fleet=True)
    assert done.returncode == 0, done.stderr
    clock.now += 3601
    alerter.process([host_problem], ["fleet"])
    assert len(sink.messages) == 1


def test_a_malformed_ack_record_is_ignored_not_fatal(tmp_path: Path, smtp: Any) -> None:
    """A record of another shape under ack. (a hand edit, a newer version) silences nothing and
    stops nothing: the reminder still goes out."""
    controller, sink = smtp
    clock = now_clock()
    alerter = make(tmp_path, controller.port, clock, reminder_interval=3600.0)
    alerter.process([degraded()], ["md"])
    StateStore(tmp_path / "state").put("ack.md.degraded|md0", {"code": "md.degraded", "until": "soon"})
    assert acks.active(StateStore(tmp_path / "state"), clock.now) == {}
    clock.now += 3601
    alerter.process([degraded()], ["md"])
    assert subjects(sink)[-1] == "[hostagent] CRITICAL md0 degraded on hv1 (reminder)"
