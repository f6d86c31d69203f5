"""``hostagent rpc``: what a request may contain, and what each verb answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostagent.errors import HostagentError
from hostagent.rpc import Refused, allowed_verbs, forward, key_fingerprint, parse_request, requester
from hostagent.rpcserver import Answerer, Published

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples" / "hosts"


@pytest.mark.parametrize("command", ["report; id", "report && id", "report | id", "report > /tmp/x", "$(id)", "`id`",
                                     "report\nid", "report\tid", "report 'x'", 'report "x"', "report \\x", "re*",
                                     "report ~", "report #", "report !", "report {a,b}", "report (x)"])
def test_anything_a_shell_would_interpret_is_refused(command: str) -> None:
    with pytest.raises(Refused, match="is not allowed in a request"):
        parse_request(command)


@pytest.mark.parametrize(("command", "message"), [
    ("", "no command"),
    ("reboot", "unknown verb 'reboot'"),
    ("disk fail sda", "unknown verb 'disk fail'"),
    ("check --only md", "unknown verb 'check'"),
    ("report --verbose", "it takes none"),
    ("maintenance schedule", "--reboot-at WHEN is required"),
    ("maintenance schedule --reboot-at", "--reboot-at needs a value"),
    ("maintenance schedule --reboot-at 2099-01-01T00:00:00Z --dry-run --dry-run", "--dry-run given twice"),
    ("maintenance schedule --reboot-at now --force", "--force is refused over RPC"),
    ("maintenance schedule --reboot-at now --force-unbootable", "--force-unbootable is refused over RPC"),
    ("maintenance schedule --reboot-at now --reason %ff", "not percent-encoded UTF-8"),
    ("maintenance schedule --reboot-at now --reason a%0Ab", "the control character"),
    ("maintenance schedule --reboot-at now --reason " + "a" * 201, "the limit is 200"),
    ("report \udcff", "a byte that is not UTF-8"),
    ("x" * 2000, "the limit is 1024"),
])
def test_malformed_requests_say_what_is_wrong(command: str, message: str) -> None:
    with pytest.raises(Refused, match=message):
        parse_request(command)


def test_valid_requests_and_percent_encoded_text() -> None:
    request = parse_request("maintenance schedule --reboot-at 2099-01-01T00:00:00+00:00 --reason kernel%20"
                            "6.1%3B%20see%20%2342 --notify-owners")
    assert request.verb == "maintenance schedule"
    assert request.options == {"--reboot-at": "2099-01-01T00:00:00+00:00", "--reason": "kernel 6.1; see #42",
                               "--notify-owners": True}
    assert parse_request("hostagent rpc disk status").verb == "disk status"


def test_a_key_can_be_narrowed_to_some_verbs() -> None:
    assert parse_request("version", allowed_verbs("version,report")).verb == "version"
    with pytest.raises(Refused, match="verb 'maintenance cancel' is not allowed for this key"):
        parse_request("maintenance cancel", allowed_verbs("version,report"))
    with pytest.raises(HostagentError, match="--allow reboot: no such verb"):
        allowed_verbs("report,reboot")
    assert allowed_verbs("report,maintenance") == ("report", "maintenance list", "maintenance status",
                                                   "maintenance schedule", "maintenance cancel")
    assert "maintenance schedule" not in allowed_verbs("read")


def answerer(tmp_path: Path, published: Published, audit: list[dict[str, object]]) -> Answerer:
    return Answerer(lambda: published, tmp_path / "maintenance", ["/bin/false", "--state-dir", str(tmp_path)],
                    audit=audit.append)


def test_read_verbs_are_answered_from_what_the_daemon_published(tmp_path: Path) -> None:
    audit: list[dict[str, object]] = []
    published = Published()
    server = answerer(tmp_path, published, audit)
    early = server.answer({"op": "request", "command": "report", "allow": ["report"]}, "pid 1 uid 0")
    assert early["ok"] is False and "first check cycle" in early["error"]  # never a report made up on the spot
    published.report = {"schema": "hostagent.report/1", "status": "WARNING"}
    published.status = {"pid": 7, "last_cycle": {"at": 1000.0}, "status": "WARNING"}
    reply = server.answer({"op": "request", "command": "report", "allow": ["report"], "key": "SHA256:x",
                           "client": "10.0.0.1"}, "pid 1 uid 0")
    assert reply["result"]["source"] == "daemon" and reply["result"]["report"]["status"] == "WARNING"
    assert reply["result"]["daemon"] == {"pid": 7, "last_cycle_at": 1000.0, "status": "WARNING"}


def test_the_daemon_validates_again_and_never_widens_the_allowed_verbs(tmp_path: Path) -> None:
    audit: list[dict[str, object]] = []
    server = answerer(tmp_path, Published(), audit)
    server.allow = ("version", "report")
    widened = server.answer({"op": "request", "command": "maintenance cancel",
                             "allow": ["maintenance cancel"]}, "pid 1 uid 995")
    assert widened["refused"] is True and "not allowed for this key" in widened["error"]
    forged = server.answer({"op": "request", "command": "report; id", "allow": ["report"]}, "pid 1 uid 995")
    assert forged["refused"] is True
    for junk in (None, [], {"op": "shell"}, {"op": "request", "command": 5, "allow": ["report"]}):
        assert server.answer(junk, "pid 1 uid 995")["refused"] is True
    assert [a["action"] for a in audit] == ["refused"] * 6 and all(a["peer"] == "pid 1 uid 995" for a in audit)


def test_a_failing_acting_verb_is_an_error_reply_and_is_audited(tmp_path: Path) -> None:
    audit: list[dict[str, object]] = []
    server = answerer(tmp_path, Published(), audit)  # the child is /bin/false
    reply = server.answer({"op": "request", "command": "maintenance cancel", "allow": ["maintenance cancel"],
                           "key": "SHA256:abc", "client": "10.0.0.1"}, "pid 1 uid 995")
    assert reply["ok"] is False and reply["error"] == "exit 1"
    assert audit[-1] == {**audit[-1], "action": "maintenance cancel", "key": "SHA256:abc", "client": "10.0.0.1"}


def test_the_key_fingerprint_is_the_one_ssh_keygen_prints(tmp_path: Path) -> None:
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    printed = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")], capture_output=True, text=True,
                             check=True).stdout.split()[1]
    (tmp_path / "auth").write_text("publickey " + (tmp_path / "k.pub").read_text())
    who = requester("label", {"SSH_USER_AUTH": str(tmp_path / "auth"), "SSH_CONNECTION": "10.1.2.3 5 10.1.2.4 22"})
    assert who == {"key": printed, "client": "10.1.2.3"}
    assert key_fingerprint("ssh-ed25519 !!!") is None
    assert requester("ctl\x1b[2J", {})["key"] == "ctl\\x1b[2J"


def test_a_forwarder_without_a_daemon_says_not_running_and_the_report_age(tmp_path: Path) -> None:
    import os
    import socket
    import time

    missing, code = forward("report", ("report",), str(tmp_path / "none.sock"), {"key": None, "client": None})
    assert code == 1 and missing["agent"] == "not running" and missing["report_age_s"] is None
    assert "no report since the host booted" in missing["error"] and "result" not in missing
    stale = tmp_path / "rpc.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(stale))  # bound, never listening: what a killed daemon leaves
    os.utime(stale, (time.time() - 120, time.time() - 120))
    reply, _ = forward("report", ("report",), str(stale), {"key": None, "client": None})
    assert reply["agent"] == "not running" and 119 <= reply["report_age_s"] < 200
