"""The RPC boundary against real OpenSSH (tests/sshfleet.py): the controller's key on the unprivileged
agents' account gets the verbs its key line allows and nothing else; that account reaches the
root daemon only through its socket; a second account reaches nothing (docs/security.md)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from hostagent.config import FleetConfig
from hostagent.fleet.controller import AGENT_DOWN, Controller, fleet_findings
from tests.integration.test_fleet import controller_config, load
from tests.sshfleet import REPO, USER, SshFleet, agent_command

OTHER = "hafleet2"  # a second, real account on the host


@pytest.fixture(scope="module")
def fleet() -> Iterator[SshFleet]:
    base = Path(tempfile.mkdtemp(prefix="harpc-", dir="/tmp"))
    with SshFleet(base, 2) as hosts:
        hosts.hosts[1].authorize(hosts.controller_public, agent_command(hosts.hosts[1].socket, allow="report,status"))
        yield hosts
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def canary() -> Iterator[Path]:
    path = Path(f"/tmp/harpc-canary-{os.getpid()}")
    path.unlink(missing_ok=True)
    yield path
    assert not path.exists(), "an attempt ran a command of its own"


def connect(fleet: SshFleet, index: int, tmp: Path) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(fleet.known_hosts(tmp / "known_hosts")))
    client.connect(fleet.hosts[index].address, username=USER, key_filename=str(fleet.controller_key),
                   allow_agent=False, look_for_keys=False, timeout=5)
    return client


def ask(client: paramiko.SSHClient, command: str | bytes) -> dict[str, object]:
    channel = client.get_transport().open_session(timeout=10)  # type: ignore[union-attr]
    channel.settimeout(30)
    channel.exec_command(command)  # type: ignore[arg-type]  # paramiko sends bytes as they are
    out = b""
    while chunk := channel.recv(65536):
        out += chunk
    channel.close()
    return json.loads(out.decode().splitlines()[-1])  # type: ignore[no-any-return]


def audit(fleet: SshFleet, index: int) -> list[dict[str, object]]:
    path = fleet.hosts[index].state / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def ssh_argv(fleet: SshFleet, tmp: Path, *extra: str) -> list[str]:
    return ["-i", str(fleet.controller_key), "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={tmp / 'known_hosts'}",
            *extra]


def test_the_controller_key_gets_its_read_verbs_and_nothing_else(fleet: SshFleet, tmp_path: Path,
                                                                  canary: Path) -> None:
    client = connect(fleet, 0, tmp_path)
    host = fleet.hosts[0]
    try:
        report = ask(client, "report")
        assert report["ok"] is True and report["result"]["source"] == "daemon"  # type: ignore[index]
        for attempt in (f"report; touch {canary}", f"$(touch {canary})", f"report && touch {canary}",
                        f"touch {canary}", f"sh -c 'touch {canary}'"):
            reply = ask(client, attempt)
            assert reply["ok"] is False and reply["refused"] is True, attempt
        forced = ask(client, "maintenance schedule --reboot-at now --reason x --force")
        assert forced["refused"] is True and "--force is refused over RPC" in str(forced["error"])
        unbootable = ask(client, "maintenance schedule --reboot-at now --force-unbootable")
        assert unbootable["refused"] is True and "--force-unbootable is refused over RPC" in str(unbootable["error"])
        transport = client.get_transport()
        assert transport is not None
        with pytest.raises(paramiko.ChannelException):  # restrict: no port forwarding either way
            transport.open_channel("direct-tcpip", (host.address, 22), ("127.0.0.1", 0), timeout=10)
        with pytest.raises(paramiko.SSHException):
            transport.request_port_forward("127.0.0.1", 0)
    finally:
        client.close()
    narrowed = connect(fleet, 1, tmp_path)  # hv2's key line: --allow report,status
    try:
        outside = ask(narrowed, "maintenance cancel")
        assert outside["refused"] is True
        assert "'maintenance cancel' is not allowed for this key" in str(outside["error"])
        assert ask(narrowed, "status")["ok"] is True
    finally:
        narrowed.close()
    target = f"{USER}@{host.address}"
    pty = subprocess.run(["ssh", "-tt", *ssh_argv(fleet, tmp_path), target], input=f"touch {canary}\nexit\n",
                         capture_output=True, text=True, timeout=30)
    assert pty.returncode == 255 and "PTY allocation request failed" in pty.stderr  # restrict: no pty
    shell = subprocess.run(["ssh", "-T", *ssh_argv(fleet, tmp_path), target], input=f"touch {canary}\nexit\n",
                           capture_output=True, text=True, timeout=30)
    assert '"refused": true' in shell.stdout  # a shell request runs the forced command, which refuses
    source = tmp_path / "payload"
    source.write_text("x")
    for mode in (["-O"], []):  # the old scp protocol, and scp over SFTP
        copy = subprocess.run(["scp", *mode, *ssh_argv(fleet, tmp_path), str(source), f"{target}:{canary}"],
                              capture_output=True, text=True, timeout=30)
        assert copy.returncode != 0, copy
    sftp = subprocess.run(["sftp", *ssh_argv(fleet, tmp_path), target], input=f"put {source} {canary}\n",
                          capture_output=True, text=True, timeout=30)
    assert sftp.returncode != 0, sftp
    refused = [a for a in audit(fleet, 0) if a.get("action") == "refused"]
    assert any("--force is refused" in str(a["error"]) and a["key"] == "controller" and a["client"] == "10.213.1.1"
               for a in refused)


BAD_REQUESTS = [
    (b"report \xff\xfe", "not UTF-8"),
    (b"report\x1b[2J", "'\\x1b' is not allowed"),
    (b"maintenance schedule --reboot-at now --reason %1b%5b2J", "control character"),
    (b"maintenance schedule --reboot-at now --reason %ff", "not percent-encoded UTF-8"),
    (b"report " + b"x" * 2000, "the limit is 1024"),
    (b"reboot", "unknown verb 'reboot'"),
    (b"disk fail sda", "unknown verb 'disk fail'"),
    (b"report --verbose", "unknown option '--verbose'"),
    (b"maintenance schedule --reboot-at now --yes", "unknown option '--yes'"),
    (b"disk status ../../etc/shadow", "unknown option '../../etc/shadow'"),
    (b"report;id", "';' is not allowed"),
    (b"report $(id)", "'$' is not allowed"),
    (b"maintenance schedule --reboot-at $(reboot)", "'$' is not allowed"),
]


@pytest.mark.parametrize(("request_bytes", "message"), BAD_REQUESTS)
def test_every_bad_request_gets_a_json_refusal_and_an_audit_record(fleet: SshFleet, tmp_path: Path,
                                                                    request_bytes: bytes, message: str) -> None:
    before = len(audit(fleet, 0))
    client = connect(fleet, 0, tmp_path)
    try:
        reply = ask(client, request_bytes)
    finally:
        client.close()
    assert reply["ok"] is False and reply["refused"] is True and message in str(reply["error"]), reply
    deadline = time.monotonic() + 10
    while len(audit(fleet, 0)) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    record = audit(fleet, 0)[before:]
    assert record and record[-1]["action"] == "refused" and message in str(record[-1]["error"])
    assert all(c.isprintable() for c in str(record[-1]["subject"]))  # stored escaped, safe to print


def as_user(user: str, argv: list[str], groups: str | None = None) -> subprocess.CompletedProcess[str]:
    entry = pwd.getpwnam(user)
    group_args = [f"--groups={groups}"] if groups else ["--clear-groups"]
    return subprocess.run(["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", *group_args, *argv],
                          capture_output=True, text=True, timeout=30)


CONNECT = ("import json, socket, sys\n"
           "s = socket.socket(socket.AF_UNIX)\n"
           "try:\n    s.connect(sys.argv[1])\n"
           "except OSError as err:\n    print('connect:', err.strerror); sys.exit(3)\n"
           "s.sendall(json.dumps({'op': 'request', 'command': 'report', 'allow': ['report']}).encode() + b'\\n')\n"
           "s.shutdown(socket.SHUT_WR)\nprint(s.makefile().read())\n")


def test_the_rpc_account_reads_no_state_and_no_other_account_reaches_the_socket(fleet: SshFleet) -> None:
    host = fleet.hosts[0]
    journal_dir = host.state / "maintenance"
    journal_dir.mkdir(exist_ok=True)
    (journal_dir / "0123456789ab.json").write_text("{}")
    for target in (host.state, host.state / "audit.jsonl", journal_dir / "0123456789ab.json",
                   host.state / "report.json"):
        denied = as_user(USER, ["cat", str(target)] if target.is_file() else ["ls", str(target)])
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, target
    (journal_dir / "0123456789ab.json").unlink()
    if subprocess.run(["id", OTHER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER], check=True)
    mine = as_user(USER, ["/usr/bin/python3", "-c", CONNECT, str(host.socket)])
    assert mine.returncode == 0 and json.loads(mine.stdout)["ok"] is True, mine
    other = as_user(OTHER, ["/usr/bin/python3", "-c", CONNECT, str(host.socket)])
    assert other.returncode == 3 and "Permission denied" in other.stdout  # the directory and socket modes
    # even with the socket's group (a misconfiguration), the daemon answers by the peer's uid only
    gid = pwd.getpwnam(USER).pw_gid
    intruder = as_user(OTHER, ["/usr/bin/python3", "-c", CONNECT, str(host.socket)], groups=str(gid))
    uid = pwd.getpwnam(OTHER).pw_uid
    assert intruder.returncode == 0 and json.loads(intruder.stdout)["refused"] is True, intruder
    assert f"uid {uid} may not use this socket" in json.loads(intruder.stdout)["error"]
    assert any(a.get("error") == f"uid {uid} may not use the RPC socket" for a in audit(fleet, 0))
    mode = os.stat(host.socket)
    assert oct(mode.st_mode & 0o777) == "0o660" and mode.st_uid == 0 and mode.st_gid == gid
    assert oct(os.stat(host.socket.parent).st_mode & 0o777) == "0o750"


def test_a_stopped_daemon_is_reported_as_not_running_and_the_controller_shows_agent_down(
        fleet: SshFleet, tmp_path: Path) -> None:
    host = fleet.hosts[0]
    host.stop_agent()
    try:
        os.utime(host.socket, (time.time() - 300, time.time() - 300))  # its last report, 5 minutes ago
        client = connect(fleet, 0, tmp_path)
        try:
            reply = ask(client, "report")
        finally:
            client.close()
        assert reply["ok"] is False and reply["agent"] == "not running" and "result" not in reply
        assert 299 <= float(reply["report_age_s"]) < 400  # type: ignore[arg-type]
        assert "last report 3" in str(reply["error"])
        config = controller_config(fleet, tmp_path, extra='limit = ["hv1"]\n')
        controller = Controller(load(config))  # type: ignore[arg-type]
        try:
            result = controller.poll()[0]
            states = controller.store.hosts()
        finally:
            controller.close()
        assert result.status == AGENT_DOWN and states[0].status == AGENT_DOWN
        found = [f for f in fleet_findings(states, time.time(), FleetConfig()) if f.subject == "hv1"]
        assert [f.code for f in found] == ["fleet.agent_stale"] and "not running" in found[0].summary
    finally:
        host.start_agent()
    with socket.socket(socket.AF_UNIX) as probe:  # back: the restarted daemon took over its stale socket
        probe.connect(str(host.socket))


def test_a_hostile_host_cannot_flood_the_controller_or_its_terminal(fleet: SshFleet, tmp_path: Path) -> None:
    """A compromised host answers the poll with 20 MiB, then with escape sequences: the controller
    drops the first, shows the second escaped, and keeps polling the other host."""
    host = fleet.hosts[1]
    config = controller_config(fleet, tmp_path)
    try:
        host.authorize(fleet.controller_public, "head -c 20000000 /dev/zero")
        controller = Controller(load(config))  # type: ignore[arg-type]
        try:
            results = {r.host: r for r in controller.poll()}
        finally:
            controller.close()
        assert results["hv1"].ok, results["hv1"]
        assert not results["hv2"].ok and f"reply larger than {16 << 20} bytes" in str(results["hv2"].error)
        host.authorize(fleet.controller_public, r"printf '\033]0;owned\007\033[2J{\"x\": 1'")
        shown = subprocess.run([str(REPO / ".venv/bin/hostagent"), "--config", str(config), "fleet", "poll"],
                               capture_output=True, text=True, timeout=120)
        assert "hv2" in shown.stdout and "\x1b" not in shown.stdout + shown.stderr, shown
        assert "\\x1b" in shown.stdout, shown.stdout  # shown, escaped
    finally:
        host.authorize(fleet.controller_public, agent_command(host.socket, allow="report,status"))
