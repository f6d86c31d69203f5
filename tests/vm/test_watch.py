"""hostagent watch inside the VM: a member failed with mdadm --fail reaches an SMTP sink on the host."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.integration.test_alerts import Sink, sink_server
from tests.vm.conftest import MdHelper, md_session
from tests.vm.harness import VM
from tests.vm.test_md_scenarios import wait_for

GUEST_CONFIG = """[alerts.smtp]
host = "10.0.2.100"
port = 25
timeout = 10
[[alerts.routes]]
to = ["ops@example.com"]
"""


@pytest.fixture(scope="module")
def mail() -> Iterator[tuple[Controller, Sink]]:
    with sink_server() as server:
        yield server


@pytest.fixture(scope="module")
def mail_vm(mail: tuple[Controller, Sink]) -> Iterator[VM]:
    machine = VM(disks=2, smtp_port=mail[0].port)
    try:
        yield machine
    finally:
        machine.close()


def start_watch(md: MdHelper) -> None:
    md.vm.run("hostname hv-test")
    md.vm.run(f"mkdir -p /etc/hostagent && cat > /etc/hostagent/hostagent.toml <<'EOF'\n{GUEST_CONFIG}EOF")
    md.vm.run("python3 -m hostagent watch --state-dir /tmp/state >/dev/null 2>/tmp/watch.err & "
              "echo $! > /tmp/agent.pid")
    wait_for(lambda: "hostagent watch started" in md.vm.run("cat /tmp/watch.err", check=False).stdout,
             "the daemon to start", 120)


def test_failed_member_reaches_the_mail_sink_on_the_host(mail: tuple[Controller, Sink], mail_vm: VM) -> None:
    _, sink = mail
    with md_session(mail_vm) as md:
        members = md.members(2)
        md.create("1", members)
        start_watch(md)
        assert sink.messages == []  # a clean mirror: nothing to say
        md.fail("md0", members[1])
        failed = md.kernel_name(members[1])

        def arrived() -> list[dict[str, Any]]:
            return [m for m in sink.messages if "md0" in m["subject"]]

        wait_for(lambda: len(arrived()) >= 1, "the mail", 120)
        [incident] = arrived()  # the degraded array and its failed member: one incident, one mail
        assert incident["subject"] == "[hostagent] CRITICAL md0 degraded on hv-test (+1 more)"
        assert f"{failed} failed in md0" in incident["body"]
        assert f"{failed}[1](F)" in incident["body"]  # the mdstat evidence
        assert incident["to"] == ["ops@example.com"]
        # both alerts were raised, under that one mail's Message-ID: no second mail is on its way
        audit = [json.loads(line) for line in md.vm.run("cat /tmp/state/audit.jsonl").stdout.splitlines()]
        alerts = {(r["subject"], r["message_id"]) for r in audit if r["event"] == "alert"}
        assert {subject for subject, _ in alerts} == {"md0", f"md0/{failed}"}, alerts
        assert len({message_id for _, message_id in alerts}) == 1, alerts
