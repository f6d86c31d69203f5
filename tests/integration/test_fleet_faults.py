"""One host's bad reply never silences the fleet: real sshds whose forced command sends each broken
reply the issue lists, beside a real agent; ``fleet watch`` polls, pages, alerts and keeps running."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostagent.fleet.controller import Controller
from tests.integration.test_alerts import sink_server
from tests.integration.test_fleet import DEGRADED, controller_config, load
from tests.sshfleet import SshFleet

REPO = Path(__file__).resolve().parent.parent.parent
OK_HEAD = '{"schema": "hostagent.rpc/1", "ok": true, "result": '

# host name -> (the reply's bytes, a fragment its recorded error must contain)
BAD_REPLIES: dict[str, tuple[str, str]] = {
    "hv2": ("[" * 100_000 + "]" * 100_000, "nested deeper than"),
    "hv3": (OK_HEAD + '{"report": {"status": "OK", "findings": [], "n": ' + "9" * 5000 + "}}}", "unusable reply"),
    "hv4": (OK_HEAD + '{"report": [1]}}', "result.report is list"),
    "hv5": (OK_HEAD + '{"report": {"status": "CRITICAL", "findings": {"code": "md.degraded"}}}}',
            "findings is dict"),
    "hv6": (OK_HEAD + '{"report": {"status": "BOGUS", "findings": []}}}', "status 'BOGUS'"),
    "hv7": (OK_HEAD + '{"report": {"status": "OK", "findings": [], "inventory": ' + "[" * 40 + "]" * 40 + "}}}",
            "nested deeper than"),
    "hv8": (OK_HEAD + '{"report": {"status": "WARNING", "findings": [{"code": "x", "subject": "y", '
            '"summary": "z", "severity": 7}]}}}', "severity '7'"),
}
OVERSIZE = "hv9"  # 17 MiB of one line: over the transport's cap
HOSTS = 1 + len(BAD_REPLIES) + 1


@pytest.fixture(scope="module")
def fleet() -> Iterator[SshFleet]:
    base = Path(tempfile.mkdtemp(prefix="hafaults-", dir="/tmp"))
    with SshFleet(base, HOSTS, agents=False) as hosts:
        by_name = {h.name: h for h in hosts.hosts}
        by_name["hv1"].start_agent(root=DEGRADED)
        for name, (reply, _) in BAD_REPLIES.items():
            path = by_name[name].directory / "reply.json"
            path.write_text(reply + "\n")
            path.chmod(0o644)
            by_name[name].authorize(hosts.controller_public, f"cat {path}")
        by_name[OVERSIZE].authorize(hosts.controller_public, "head -c 17000000 /dev/zero | tr '\\\\0' x")
        yield hosts
    shutil.rmtree(base, ignore_errors=True)


def test_each_bad_reply_is_that_hosts_error_and_the_good_host_is_stored(fleet: SshFleet, tmp_path: Path) -> None:
    controller = Controller(load(controller_config(fleet, tmp_path)))  # type: ignore[arg-type]
    try:
        results = {r.host: r for r in controller.poll()}
    finally:
        controller.close()
    assert len(results) == HOSTS
    assert results["hv1"].ok and results["hv1"].status == "CRITICAL", results["hv1"]
    for name, (_, fragment) in BAD_REPLIES.items():
        assert not results[name].ok and fragment in (results[name].error or ""), (name, results[name].error)
        assert (results[name].error or "").startswith(f"host {name}:")
    assert "larger than" in (results[OVERSIZE].error or ""), results[OVERSIZE].error
    states = {s.name: s for s in controller.store.hosts()}
    assert any(f["code"] == "md.degraded" for f in states["hv1"].findings)
    assert all(states[name].last_error for name in [*BAD_REPLIES, OVERSIZE])


def test_fleet_watch_keeps_polling_paging_and_alerting_past_every_bad_host(fleet: SshFleet, tmp_path: Path) -> None:
    page = tmp_path / "page"
    prom = tmp_path / "fleet.prom"
    with sink_server() as (smtp, sink):
        config = controller_config(fleet, tmp_path, port=smtp.port,
                                   extra=f'poll_interval = 1.0\npage_dir = "{page}"\nprom_file = "{prom}"\n'
                                         'host_findings = "controller"\n')
        errors = tmp_path / "watch.log"
        with errors.open("w") as handle:
            watch = subprocess.Popen([sys.executable, "-m", "hostagent", "--config", str(config), "fleet", "watch"],
                                     stdout=subprocess.DEVNULL, stderr=handle, text=True, cwd=REPO)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:  # three whole cycles: the daemon outlived the bad hosts twice
                if errors.read_text().count(f"polled {HOSTS} hosts") >= 3 and len(sink.messages) > len(BAD_REPLIES):
                    break
                time.sleep(0.5)
        finally:
            watch.send_signal(signal.SIGTERM)
            watch.wait(timeout=60)
        err = errors.read_text()
    assert watch.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.count(f"polled {HOSTS} hosts") >= 3, err[-3000:]
    subjects = [m["subject"] for m in sink.messages]
    for name in [*BAD_REPLIES, OVERSIZE]:  # each bad host is paged as its own problem
        assert any(f" {name} " in s and "unreachable" in s for s in subjects), (name, subjects)
    assert any("hv1/" in s and "CRITICAL" in s for s in subjects), subjects  # the good host's own finding
    rows = {r["host"]: r for r in json.loads((page / "fleet.json").read_text())["hosts"]}
    assert set(rows) == {f"hv{i}" for i in range(1, HOSTS + 1)}
    assert rows["hv1"]["status"] == "CRITICAL" and rows["hv1"]["reachable"]
    assert all(rows[name]["status"] == "UNREACHABLE" for name in [*BAD_REPLIES, OVERSIZE])
    html = (page / "index.html").read_text()
    assert html.count('<article class="host') == HOSTS
    metrics = prom.read_text()
    assert 'hostagent_fleet_host_up{host="hv1"} 1' in metrics and 'hostagent_fleet_host_up{host="hv4"} 0' in metrics


def test_status_and_page_show_a_store_row_the_controller_cannot_read(fleet: SshFleet, tmp_path: Path) -> None:
    """A row left by an older or broken controller (findings of the wrong shape, an unknown status)
    becomes that host's UNKNOWN row; the others and the commands go on."""
    import sqlite3

    config = controller_config(fleet, tmp_path, extra='limit = ["hv1", "hv2"]\n')
    assert _hostagent("--config", str(config), "fleet", "poll").returncode == 1  # hv2 fails, hv1 answers
    db = sqlite3.connect(tmp_path / "fleet-state" / "fleet.sqlite")
    db.execute("UPDATE hosts SET status='NO SUCH STATUS', findings='[1, \"x\"]', last_error=NULL, "
               "last_seen=last_attempt WHERE name='hv2'")
    db.commit()
    db.close()
    status = _hostagent("--config", str(config), "fleet", "status", "--json")
    assert status.returncode == 0, status.stderr
    rows = {r["host"]: r for r in json.loads(status.stdout)}
    assert rows["hv2"]["status"] == "UNKNOWN" and "stored state unusable" in rows["hv2"]["error"]
    assert rows["hv1"]["status"] == "CRITICAL"
    out = tmp_path / "page"
    page = _hostagent("--config", str(config), "fleet", "page", "--out", str(out))
    assert page.returncode == 0 and "Traceback" not in page.stderr, page.stderr
    assert 'data-host="hv2" data-status="UNKNOWN"' in (out / "index.html").read_text()


def test_a_poll_with_hung_hosts_takes_one_hosts_budget_not_their_sum(fleet: SshFleet, tmp_path: Path) -> None:
    """Four sshds stopped with SIGSTOP (their ports still accept): the whole poll ends within one host's
    budget (connect_timeout + command_timeout), where polling them one after another could not."""
    config = load(controller_config(fleet, tmp_path))
    fleet_config = config.fleet  # type: ignore[attr-defined]
    fleet_config_bound = fleet_config.connect_timeout + fleet_config.command_timeout
    stopped = [h for h in fleet.hosts if h.name in ("hv2", "hv3", "hv4", "hv5")]
    serial_floor = len(stopped) * fleet_config.connect_timeout
    assert serial_floor > fleet_config.connect_timeout * 2  # the bound below tells the two apart
    controller = Controller(config)  # type: ignore[arg-type]
    for host in stopped:
        host.stop()
    try:
        started = time.monotonic()
        results = {r.host: r for r in controller.poll()}
        elapsed = time.monotonic() - started
    finally:
        for host in stopped:
            host.cont()
        controller.close()
    assert results["hv1"].ok
    assert all(not results[h.name].ok for h in stopped)
    # concurrent: about one banner timeout, however many hosts hang; one after another it would be the
    # hung hosts' times added up, or more (measured in this run, so a slow machine moves both sides)
    spent = {h.name: results[h.name].seconds for h in stopped}
    assert all(seconds >= fleet_config.connect_timeout * 0.9 for seconds in spent.values()), spent  # timed out
    assert elapsed < sum(spent.values()), (elapsed, spent, fleet_config_bound, serial_floor)


def _hostagent(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hostagent", *argv], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_a_failing_part_of_the_cycle_is_alerted_and_the_rest_still_runs(fleet: SshFleet, tmp_path: Path) -> None:
    """The page directory is a file: the page cannot be written; the poll, the metrics and the alerts
    still happen, and the controller's own failure is mailed as fleet.cycle_failed."""
    blocker = tmp_path / "page"
    blocker.write_text("not a directory\n")
    prom = tmp_path / "fleet.prom"
    with sink_server() as (smtp, sink):
        config = controller_config(fleet, tmp_path, port=smtp.port,
                                   extra=f'limit = ["hv1", "hv4"]\npage_dir = "{blocker}"\nprom_file = "{prom}"\n')
        result = _hostagent("--config", str(config), "fleet", "watch", "--once")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "status page failed" in result.stderr
    assert 'hostagent_fleet_host_up{host="hv1"} 1' in prom.read_text()
    subjects = [m["subject"] for m in sink.messages]
    assert any("controller cycle failed" in s and "CRITICAL" in s for s in subjects), subjects
    assert any(" hv4 " in s and "unreachable" in s for s in subjects), subjects
    failed = next(m for m in sink.messages if "cycle failed" in m["subject"])
    assert "status page" in failed["body"] and str(blocker) in failed["body"]


def test_a_stored_row_of_the_wrong_shape_is_that_hosts_finding_and_the_others_are_alerted() -> None:
    """fleet_findings over a row left with findings that are not objects (an older store): that host
    gets fleet.unreadable_state, the others their usual findings."""
    from hostagent.config import FleetConfig
    from hostagent.fleet.controller import fleet_findings
    from hostagent.fleet.store import HostState

    now = 10_000.0
    broken = HostState("hv1", "a", (), now, now, None, "0.1.0", "CRITICAL", [1, "x"],  # type: ignore[list-item]
                       {"daemon": {"last_cycle_at": now}}, 0.1)
    silent = HostState("hv2", "b", (), now, now - 3600, None, "0.1.0", "OK", [], {"daemon": {"last_cycle_at": now}},
                       0.1)
    found = {(f.code, f.subject) for f in fleet_findings([broken, silent], now, FleetConfig(host_findings="both"))}
    assert found == {("fleet.unreadable_state", "hv1"), ("fleet.stale", "hv2")}
