"""``hostagent rpc``: what a request may contain, and what each verb answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostagent.errors import HostagentError
from hostagent.rpc import Refused, Server, allowed_verbs, parse_request, serve

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
    ("check --all", "check: unknown option '--all'"),
    ("check --only md,raid", "no such check"),
    ("report --verbose", "it takes none"),
    ("maintenance schedule", "--reboot-at WHEN is required"),
    ("maintenance schedule --reboot-at", "--reboot-at needs a value"),
    ("maintenance schedule --reboot-at 2099-01-01T00:00:00Z --force --force", "--force given twice"),
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
    assert parse_request("hostagent rpc check --only md,boot").options == {"--only": "md,boot"}


def test_a_key_can_be_narrowed_to_some_verbs() -> None:
    assert parse_request("version", allowed_verbs("version,report")).verb == "version"
    with pytest.raises(Refused, match="verb 'maintenance cancel' is not allowed for this key"):
        parse_request("maintenance cancel", allowed_verbs("version,report"))
    with pytest.raises(HostagentError, match="--allow reboot: no such verb"):
        allowed_verbs("report,reboot")


def test_report_prefers_the_daemons_published_report(tmp_path: Path) -> None:
    audit: list[dict[str, object]] = []
    server = Server(None, state_dir=str(tmp_path))
    fresh, code = serve(server, "report", audit.append)  # no daemon: the checks run now
    assert code == 0 and fresh["result"]["source"] == "checks run now" and fresh["result"]["daemon"] is None
    (tmp_path / "status.json").write_text(json.dumps({"pid": 7, "last_cycle": {"at": 1000.0}, "status": "OK"}))
    (tmp_path / "report.json").write_text(json.dumps({"schema": "hostagent.report/1", "status": "WARNING"}))
    published, _ = serve(server, "report", audit.append)
    assert published["result"]["source"] == "daemon" and published["result"]["report"]["status"] == "WARNING"
    assert published["result"]["daemon"] == {"pid": 7, "last_cycle_at": 1000.0, "status": "OK"}
    assert [a["action"] for a in audit] == ["report", "report"]


def test_a_snapshot_root_is_always_checked_afresh(tmp_path: Path) -> None:
    (tmp_path / "status.json").write_text(json.dumps({"last_cycle": {"at": 1000.0}}))
    (tmp_path / "report.json").write_text("{}")
    server = Server(None, root=str(EXAMPLES / "failed-member"), state_dir=str(tmp_path))
    reply, _ = serve(server, "check --only md", lambda event: None)
    assert reply["result"]["report"]["status"] == "CRITICAL"
    reply, _ = serve(server, "report", lambda event: None)
    assert reply["result"]["source"] == "checks run now"


def test_refusals_are_audited_with_the_request(tmp_path: Path) -> None:
    audit: list[dict[str, object]] = []
    reply, code = serve(Server(None, state_dir=str(tmp_path)), "report; rm -rf /", audit.append)
    assert code == 2 and reply == {"schema": "hostagent.rpc/1", "ok": False, "refused": True,
                                   "error": "character ';' is not allowed in a request (no shell runs it)"}
    assert audit[0]["action"] == "refused" and audit[0]["subject"] == "report; rm -rf /"
