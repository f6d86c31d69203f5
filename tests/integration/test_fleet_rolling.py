"""``fleet maintenance --rolling`` over three netns hosts, each with a real agent daemon on the libvirt
test driver: one host at a time, and a host whose maintenance fails stops the rollout."""

from __future__ import annotations

import datetime as dt
import json
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostagent.maintenance.journal import JournalStore
from tests.integration.test_cli import hostagent
from tests.integration.test_fleet import controller_config
from tests.integration.test_hypervisor import DOMAIN
from tests.sshfleet import REPO, USER, SshFleet, agent_command

SITE = next((REPO / ".venv/lib").glob("python3*/site-packages"))


def as_agent(argv: list[str]) -> list[str]:
    """Run as the agents' account with Debian's python3, this checkout and the venv's libraries."""
    user = pwd.getpwnam(USER)
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "env",
            f"PYTHONPATH={REPO}:{SITE}", *argv]


@pytest.fixture
def hosts() -> Iterator[tuple[SshFleet, list[subprocess.Popen[bytes]]]]:
    base = Path(tempfile.mkdtemp(prefix="haroll-", dir="/tmp"))
    daemons: list[subprocess.Popen[bytes]] = []
    with SshFleet(base, 3, agents=False) as fleet:
        try:
            for host in fleet.hosts:  # these agents also reach libvirt: the venv's libraries on their path
                sock = host.directory / "run" / "sock" / "rpc.sock"
                shutil.chown(host.state, USER)  # this daemon runs as the agents' account (fake reboots)
                host.authorize(fleet.controller_public, agent_command(sock))
                domains = "\n".join(DOMAIN.format(name=n, memory=128, metadata="", devices="") for n in ("g1", "g2"))
                (host.directory / "node.xml").write_text(f"<node>\n{domains}\n</node>\n")
                daemon = ["/usr/bin/python3", "-m", "hostagent", "--config", str(host.config), "watch",
                          "--state-dir", str(host.state)]
                run = host.directory / "run"  # the daemon's pid and log, writable by the agents' account
                run.mkdir()
                shutil.chown(run, USER)
                pidfile, log = run / "daemon.pid", run / "daemon.log"
                reboot = (["/bin/false"] if host.name == "hv2" else
                          ["/usr/bin/python3", "-m", "tests.fake_reboot", str(pidfile), str(log), "--", *daemon])
                host.config.write_text(
                    f'[maintenance]\nuri = "test://{host.directory / "node.xml"}"\nsave_dir = "{host.state}"\n'
                    f"reboot_command = {json.dumps(reboot)}\n[checks.smart]\nenabled = false\n"
                    f'[alerts]\nenabled = false\n[agent]\nrpc_socket = "{sock}"\nrpc_user = "{USER}"\n')
                log.touch()
                shutil.chown(log, USER)
                with log.open("ab") as out:
                    process = subprocess.Popen(as_agent(daemon), stdout=out, stderr=out, cwd="/")
                daemons.append(process)
                pidfile.write_text(f"{process.pid}\n")
                shutil.chown(pidfile, USER)
            yield fleet, daemons
        finally:
            for host in fleet.hosts:
                pidfile = host.directory / "run" / "daemon.pid"
                if pidfile.exists():
                    subprocess.run(["kill", pidfile.read_text().strip()], check=False)
            for process in daemons:
                process.terminate()
                process.wait(timeout=30)
    shutil.rmtree(base, ignore_errors=True)


def test_rolling_goes_host_by_host_and_stops_at_a_failure(hosts: tuple[SshFleet, list[subprocess.Popen[bytes]]],
                                                           tmp_path: Path) -> None:
    fleet, _ = hosts
    config = controller_config(fleet, tmp_path, extra="rolling_start_delay = 3.0\nrolling_timeout = 120.0\n")
    when = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=6)).isoformat()
    result = hostagent("--config", str(config), "fleet", "maintenance", "hypervisors", "--reboot-at", when,
                       "--rolling", "--reason", "kernel 6.1.99", "--json", timeout=300)
    outcome = json.loads(result.stdout)
    assert result.returncode == 1, result.stderr
    assert outcome["hosts"]["hv1"]["outcome"] == "done"
    assert outcome["hosts"]["hv2"]["outcome"] == "maintenance failed"
    assert outcome["stopped"].startswith("hv2: maintenance failed") and outcome["not_started"] == ["hv3"]
    journals = {h.name: JournalStore(h.state / "maintenance").all() for h in fleet.hosts}
    assert journals["hv3"] == []  # never scheduled
    first, second = journals["hv1"][0], journals["hv2"][0]
    assert first.phase == "done" and first.reason == "kernel 6.1.99"  # the reason travelled percent-encoded
    assert second.phase == "failed" and "the reboot command failed" in (second.error or "")
    assert second.created >= (first.entered("done") or 0)  # hv2 was scheduled only once hv1 was done
    assert {g.state for g in second.guests.values()} == {"running"}  # its guests came back without a reboot
    assert "hv1: maintenance" in result.stderr  # progress, on stderr beside --json


def test_parallel_schedules_over_rpc_through_sshd_leave_one_maintenance_and_bad_times_are_clean(
        hosts: tuple[SshFleet, list[subprocess.Popen[bytes]]], tmp_path: Path) -> None:
    """Issue #34, I2 and I3 over the real boundary: four schedules at once through sshd to one host's
    daemon; exactly one is planned, the others are told it is already planned, one cancel leaves none."""
    import threading
    import time
    from urllib.parse import quote

    from tests.integration.test_rpc_boundary import ask, connect

    fleet, _ = hosts
    client = connect(fleet, 0, tmp_path)
    try:  # the agent's daemon answers once it has started
        deadline = time.monotonic() + 120
        while not ask(client, "maintenance list").get("ok"):
            assert time.monotonic() < deadline, "hv1's agent never answered"
            time.sleep(0.5)
    finally:
        client.close()
    when = quote((dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).isoformat(timespec="seconds"), safe="")
    answers: list[dict[str, object]] = []

    def schedule() -> None:
        client = connect(fleet, 0, tmp_path)
        try:
            answers.append(ask(client, f"maintenance schedule --reboot-at {when} --reason parallel"))
        finally:
            client.close()

    threads = [threading.Thread(target=schedule) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    planned = [a for a in answers if a.get("ok")]
    assert len(answers) == 4 and len(planned) == 1, answers
    assert all("is already planned" in str(a.get("error")) for a in answers if not a.get("ok")), answers
    store = JournalStore(fleet.hosts[0].state / "maintenance")
    assert len([j for j in store.all() if not j.final]) == 1
    client = connect(fleet, 0, tmp_path)
    try:
        assert ask(client, "maintenance cancel")["ok"] is True
        assert store.active() is None
        far = ask(client, "maintenance schedule --reboot-at " + quote("9999-12-31T23:59:59-14:00") + " --dry-run")
        assert far["ok"] is False and "outside 1970-01-01 .. 2100-01-01" in str(far["error"]), far
        assert "Traceback" not in json.dumps(far) and str(REPO) not in json.dumps(far)
        soon = ask(client, "maintenance schedule --reboot-at now --notify-owners --reason x")
        assert soon["ok"] is False and "min_notice_lead" in str(soon["error"]), soon
    finally:
        client.close()
