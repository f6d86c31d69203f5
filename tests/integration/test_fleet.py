"""The fleet controller against real OpenSSH: six sshds in network namespaces, each forcing
``hostagent rpc`` for the controller's key (tests/sshfleet.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from hostagent.config import parse_config
from hostagent.fleet.controller import Controller, fleet_findings
from tests.helpers import label_values, promtool_problems
from tests.integration.test_alerts import sink_server
from tests.integration.test_cli import hostagent
from tests.sshfleet import USER, SshFleet, agent_command

REPO = Path(__file__).resolve().parent.parent.parent
DEGRADED = str(REPO / "examples/hosts/failed-member")


@pytest.fixture(scope="module")
def fleet() -> Iterator[SshFleet]:
    base = Path(tempfile.mkdtemp(prefix="hafleet-", dir="/tmp"))  # the agents' account must read it: not pytest's
    with SshFleet(base, 6) as hosts:
        hv = {h.name: h for h in hosts.hosts}
        hv["hv2"].start_agent(root=DEGRADED)
        hv["hv5"].authorize(hosts.controller_public, "echo garbage; echo more garbage")
        hv["hv6"].authorize(hosts.controller_public, agent_command(hv["hv6"].socket, allow="version"))
        yield hosts
    shutil.rmtree(base, ignore_errors=True)


def controller_config(fleet: SshFleet, tmp: Path, *, skip_known: tuple[str, ...] = (), extra: str = "",
                      port: int | None = None) -> Path:
    known = fleet.known_hosts(tmp / "known_hosts", skip=skip_known)
    inventory = fleet.inventory(tmp / "inventory.ini")
    alerts = (f'[alerts.smtp]\nhost = "127.0.0.1"\nport = {port}\n[[alerts.routes]]\nto = ["ops@example.com"]\n'
              if port else "[alerts]\nenabled = false\n")
    path = tmp / "controller.toml"
    path.write_text(f'[fleet]\ninventory = "{inventory}"\nkey = "{fleet.controller_key}"\nknown_hosts = "{known}"\n'
                    f'state_dir = "{tmp / "fleet-state"}"\nconnect_timeout = 3.0\ncommand_timeout = 20.0\n'
                    f"{extra}{alerts}")
    return path


def load(path: Path) -> object:
    import tomllib

    return parse_config(tomllib.loads(path.read_text()), source=str(path))


def test_a_poll_tells_every_host_apart(fleet: SshFleet, tmp_path: Path) -> None:
    hv = {h.name: h for h in fleet.hosts}
    replaced = tmp_path / "replaced_key"
    from tests.sshfleet import keygen

    other = keygen(replaced)
    config = controller_config(fleet, tmp_path)
    known = tmp_path / "known_hosts"
    known.write_text(known.read_text().replace(hv["hv3"].host_key_line,
                                               f"{hv['hv3'].address} {' '.join(other.split()[:2])}"))
    hv["hv4"].stop()
    try:
        controller = Controller(load(config), accept_new=True)  # type: ignore[arg-type]
        started = time.monotonic()
        results = {r.host: r for r in controller.poll()}
        elapsed = time.monotonic() - started
    finally:
        hv["hv4"].cont()
    assert results["hv1"].ok and results["hv1"].status in ("OK", "INFO", "WARNING", "UNKNOWN")
    assert results["hv2"].ok and results["hv2"].status == "CRITICAL"  # the snapshot root: a failed member
    assert "host key CHANGED" in (results["hv3"].error or "") and "SHA256:" in (results["hv3"].error or "")
    assert not results["hv4"].ok and "hv4" in (results["hv4"].error or "")
    assert "garbage reply" in (results["hv5"].error or "") and "'garbage more garbage'" in (results["hv5"].error or "")
    assert "request refused" in (results["hv6"].error or "") and "'report' is not allowed" in (results["hv6"].error
                                                                                               or "")
    # the stopped sshd cost only its own time: the hosts were polled at once, so the whole poll took less
    # than its hosts' times added up (one after another it takes at least that), whatever the machine's
    # speed (a bound in seconds here was a timed assertion: docs/testing.md)
    assert elapsed < sum(r.seconds for r in results.values()), (elapsed, {n: r.seconds for n, r in results.items()})
    assert results["hv4"].seconds > 0
    assert known.read_text().count(hv["hv3"].address) == 1  # --accept-new never replaces a changed key
    states = {s.name: s for s in controller.store.hosts()}
    assert states["hv1"].version == "0.1.0" and states["hv1"].last_seen is not None
    assert any(f["code"] == "md.degraded" for f in states["hv2"].findings)
    controller.close()


def test_status_json_and_text(fleet: SshFleet, tmp_path: Path) -> None:
    config = controller_config(fleet, tmp_path)
    poll = hostagent("--config", str(config), "fleet", "poll", "--limit", "hv1,hv2")
    assert poll.returncode == 0, poll.stdout + poll.stderr
    status = hostagent("--config", str(config), "fleet", "status", "--json", "--limit", "hv1,hv2")
    rows = {r["host"]: r for r in json.loads(status.stdout)}
    assert rows["hv2"]["status"] == "CRITICAL" and rows["hv2"]["open_findings"] >= 1
    assert rows["hv1"]["version"] == "0.1.0" and rows["hv1"]["last_seen_ago"].endswith("s ago")
    text = hostagent("--config", str(config), "fleet", "status", "--limit", "hv1,hv2").stdout
    assert text.splitlines()[0].startswith("host") and "hv2" in text and "CRITICAL" in text


def test_an_unknown_host_key_needs_accept_new_and_is_then_kept(fleet: SshFleet, tmp_path: Path) -> None:
    config = controller_config(fleet, tmp_path, skip_known=("hv1",))
    refused = hostagent("--config", str(config), "fleet", "poll", "--limit", "hv1")
    assert refused.returncode == 1 and "unknown host key ssh-ed25519 SHA256:" in refused.stdout
    accepted = hostagent("--config", str(config), "fleet", "poll", "--limit", "hv1", "--accept-new")
    assert accepted.returncode == 0 and "accepted new host key: hv1" in accepted.stderr
    again = hostagent("--config", str(config), "fleet", "poll", "--limit", "hv1")  # recorded: no flag needed
    assert again.returncode == 0, again.stdout


INJECTIONS = ["report; touch /tmp/canary", "$(touch /tmp/canary)", "`touch /tmp/canary`", "report | touch /tmp/canary",
              "report > /tmp/canary", "report\ntouch /tmp/canary", "report && touch /tmp/canary",
              "touch /tmp/canary", "sh -c 'touch /tmp/canary'", "maintenance schedule --reboot-at $(touch /tmp/canary)"]


def test_the_forced_command_refuses_every_shell_trick(fleet: SshFleet, tmp_path: Path) -> None:
    canary = Path("/tmp/canary")
    canary.unlink(missing_ok=True)
    host = fleet.hosts[0]
    client = paramiko.SSHClient()
    client.load_host_keys(str(fleet.known_hosts(tmp_path / "known_hosts")))
    client.connect(host.address, username=USER, key_filename=str(fleet.controller_key), allow_agent=False,
                   look_for_keys=False, timeout=5)
    try:
        for attempt in INJECTIONS:
            _, stdout, _ = client.exec_command(attempt, timeout=30)
            reply = json.loads(stdout.read().decode())
            assert reply["ok"] is False and reply["refused"] is True, attempt
        _, stdout, _ = client.exec_command("version", timeout=30)
        assert json.loads(stdout.read().decode())["ok"] is True  # the same channel works for a real verb
    finally:
        client.close()
    assert not canary.exists()
    audit = [json.loads(line) for line in (host.state / "audit.jsonl").read_text().splitlines()]
    refused = [a for a in audit if a.get("event") == "rpc" and a["action"] == "refused"]
    assert len(refused) >= len(INJECTIONS) and all(a.get("client") for a in refused)  # with the client's address
    # an interactive shell is refused too: restrict allows no pty, and the forced command runs instead
    shell = subprocess.run(["ssh", "-i", str(fleet.controller_key), "-o", "BatchMode=yes",
                            "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}", f"{USER}@{host.address}"],
                           input="touch /tmp/canary\n", capture_output=True, text=True, timeout=30)
    assert json.loads(shell.stdout.splitlines()[-1])["refused"] is True and not canary.exists()


def test_alerts_for_silent_hosts_and_fleet_wide_criticals(fleet: SshFleet, tmp_path: Path) -> None:
    with sink_server() as (smtp, sink):
        config = controller_config(fleet, tmp_path, port=smtp.port,
                                   extra='limit = ["hv1", "hv2", "hv4"]\nhost_findings = "controller"\n'
                                         "digest_hour = 0\n")
        hv4 = fleet.hosts[3]
        hv4.stop()
        try:
            result = hostagent("--config", str(config), "fleet", "watch", "--once")
        finally:
            hv4.cont()
        assert result.returncode == 0, result.stderr
        subjects = [m["subject"] for m in sink.messages]
        assert any("fleet.unreachable" in s or ("CRITICAL" in s and "hv4" in s) for s in subjects), subjects
        assert any("hv2/" in s and "CRITICAL" in s for s in subjects), subjects  # the host's own finding
        assert any(s.startswith("[hostagent] fleet digest") for s in subjects), subjects
        digest = next(m for m in sink.messages if "digest" in m["subject"])
        assert "hv4" in digest["body"] and "UNREACHABLE" in digest["body"]


def test_a_stopped_agent_daemon_and_a_stale_report_are_alerted() -> None:
    from hostagent.config import FleetConfig
    from hostagent.fleet.store import HostState

    now = 10_000.0
    daemon_gone = HostState("hv1", "a", (), now, now, None, "0.1.0", "OK", [], {"daemon": None}, 0.1)
    silent = HostState("hv2", "b", (), now, now - 3600, None, "0.1.0", "OK", [],
                       {"daemon": {"last_cycle_at": now - 3600}}, 0.1)
    fine = HostState("hv3", "c", (), now, now, None, "0.1.0", "OK", [], {"daemon": {"last_cycle_at": now - 5}}, 0.1)
    found = {(f.code, f.subject) for f in fleet_findings([daemon_gone, silent, fine], now, FleetConfig())}
    assert ("fleet.agent_stale", "hv1") in found and ("fleet.stale", "hv2") in found
    assert not any(subject == "hv3" for _, subject in found)


def test_metrics_textfile_and_endpoint_and_sharding(fleet: SshFleet, tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = controller_config(fleet, tmp_path, extra=f'limit = ["hv1"]\nmetrics_listen = "127.0.0.1:{port}"\n'
                                                      f'prom_file = "{tmp_path / "fleet.prom"}"\n')
    import sys

    watch = subprocess.Popen([sys.executable, "-m", "hostagent", "--config", str(config), "fleet", "watch"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "fleet.prom").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        watch.terminate()
        watch.communicate(timeout=30)
    assert 'hostagent_fleet_host_up{host="hv1"} 1' in body
    assert promtool_problems(body) == ""
    assert 'hv2' not in body  # this controller's shard is hv1 only
    assert body == (tmp_path / "fleet.prom").read_text() or "hostagent_fleet_host_up" in (tmp_path / "fleet.prom"
                                                                                           ).read_text()
    other = controller_config(fleet, tmp_path / "other" if (tmp_path / "other").mkdir() is None else tmp_path,
                              extra='limit = ["hv2"]\n')
    assert hostagent("--config", str(other), "fleet", "poll").returncode == 0
    rows = json.loads(hostagent("--config", str(other), "fleet", "status", "--json").stdout)
    assert [r["host"] for r in rows] == ["hv2"]


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed (make test installs it)"
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1100,700", *args], capture_output=True, text=True, timeout=120)


def png_rows(path: Path) -> list[list[tuple[int, int, int]]]:
    """The pixels of an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes), row by row."""
    import struct
    import zlib

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks += body
        pos += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour_type in (2, 6)
    channels = 3 if colour_type == 2 else 4
    raw, stride = zlib.decompress(chunks), width * channels
    previous, rows = bytearray(stride), []
    for row in range(height):
        kind, line = raw[row * (stride + 1)], bytearray(raw[row * (stride + 1) + 1:(row + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append([tuple(line[i:i + 3]) for i in range(0, stride, channels)])  # type: ignore[misc]
        previous = line
    return rows


def rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def bar_fraction(rows: list[list[tuple[int, int, int]]], fill: tuple[int, int, int],
                 track: tuple[int, int, int]) -> tuple[float, int]:
    """On the first pixel row crossing a progress bar: the filled share of it, and where it ends."""
    for row in rows:
        if fill in row:
            start = row.index(fill)
            end = start
            while end < len(row) and row[end] in (fill, track):
                end += 1
            return row[start:end].count(fill) / (end - start), end
    raise AssertionError(f"no bar of colour {fill} on the page")


def card_columns(rows: list[list[tuple[int, int, int]]], borders: set[tuple[int, int, int]]) -> set[int]:
    """The x where host cards start: their 6-pixel left border in a status colour, running down the
    card for at least 60 pixels (the timeline's cells and the badges are shorter)."""
    runs: dict[int, int] = {}  # x -> how many rows in a row it has been a border start
    found = set()
    for row in rows:
        starts = {x for x in range(1, len(row) - 7) if row[x] in borders and row[x - 1] != row[x]
                  and all(row[x + i] == row[x] for i in range(6)) and row[x + 6] != row[x]}
        runs = {x: runs.get(x, 0) + 1 for x in starts}
        found |= {x for x, length in runs.items() if length >= 60}
    return found


def chromium_shot(page: Path, width: int, height: int, shot: Path) -> list[list[tuple[int, int, int]]]:
    result = chromium(f"--window-size={width},{height}", f"--screenshot={shot}", page.as_uri())
    assert shot.exists(), result.stderr
    rows = png_rows(shot)
    assert (len(rows[0]), len(rows)) == (width, height)
    return rows


def test_the_fleet_page_draws_groups_history_progress_maintenances_and_stale_hosts(
        fleet: SshFleet, tmp_path: Path) -> None:
    """Headless Chromium at desktop (1280 px) and phone (390 px) width, from the fleet of real sshds:
    a rebuild at 62.5% on hv3, a finished maintenance with its guests' downtime, 30 days of history,
    and hv5 unreachable with its last known state shown as stale."""
    from hostagent.fleet.publish import COLOURS
    from hostagent.fleet.store import FleetStore
    from hostagent.maintenance.journal import GuestRecord, Journal, JournalStore

    hv = {h.name: h for h in fleet.hosts}
    root = tmp_path / "rebuilding"  # the real example, its rebuild moved on to 62.5%
    shutil.copytree(REPO / "examples/hosts/degraded-recovering", root)
    mdstat = root / "proc/mdstat"
    mdstat.write_text(mdstat.read_text().replace("recovery =  0.4% (1024/208704)", "recovery = 62.5% (130440/208704)"))
    ended = time.time() - 2 * 86400
    done = Journal.new(ended, "kernel 6.1.0-28", ["web1", "db1"])
    done = dataclasses.replace(done, phase="done", guests={
        "web1": GuestRecord("web1", "running", save_started=ended, running_again=ended + 38, outcome="restored"),
        "db1": GuestRecord("db1", "running", save_started=ended, running_again=ended + 131, outcome="restored")})
    JournalStore(hv["hv3"].state / "maintenance").create(done)  # as the agent's own maintenance left it
    hv["hv3"].start_agent(root=str(root))
    try:
        inventory = tmp_path / "groups.ini"
        lines = ["[berlin]"] + [f"{h.name} ansible_host={h.address} ansible_user={USER}" for h in fleet.hosts[:3]]
        lines += ["[paris]"] + [f"{h.name} ansible_host={h.address} ansible_user={USER}" for h in fleet.hosts[4:5]]
        inventory.write_text("\n".join(lines) + "\n")
        config = controller_config(fleet, tmp_path)
        config.write_text(config.read_text().replace(str(tmp_path / "inventory.ini"), str(inventory)))
        # 30 days of history before today's poll: hv2 was fine until 3 days ago, hv5 last answered WARNING
        store, now = FleetStore(tmp_path / "fleet-state"), time.time()
        for days, host, status in ((25, "hv1", "OK"), (20, "hv2", "OK"), (9, "hv5", "OK"), (3, "hv2", "CRITICAL"),
                                   (2, "hv5", "WARNING")):  # in the order the polls happened
            store.record_success(host, hv[host].address, (), now - days * 86400, 0.1, "0.1.0",
                                 {"status": status, "findings": []}, None)
        assert hostagent("--config", str(config), "fleet", "poll").returncode == 1  # hv5 cannot be polled
        out = tmp_path / "page"
        env = {**os.environ, "TZ": "Europe/Berlin"}
        made = subprocess.run([sys.executable, "-m", "hostagent", "--config", str(config), "fleet", "page", "--out",
                               str(out)], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
        assert made.returncode == 0, made.stderr
    finally:
        hv["hv3"].start_agent(root=None)
    page = out / "index.html"
    dom = chromium("--dump-dom", page.as_uri()).stdout

    # groups, as the inventory has them, each host's card in its status
    sections = re.findall(r'<section class="group" data-group="([^"]+)">(.*?)</section>', dom, re.S)
    hosts_in = {group: re.findall(r'data-host="([^"]+)" data-status="([^"]+)"', body) for group, body in sections}
    assert [g for g, _ in sections] == ["berlin", "paris"]
    assert dict(hosts_in["berlin"])["hv2"] == "CRITICAL" and dict(hosts_in["paris"]) == {"hv5": "UNREACHABLE"}
    assert hosts_in["berlin"][0][0] == "hv2"  # worst first
    # the stale host keeps its last known state
    hv5 = dom[dom.index('data-host="hv5"'):]
    hv5 = hv5[:hv5.index("</article>")]
    assert "last known state WARNING" in hv5 and "(stale)" in hv5 and 'class="host stale"' in dom
    # history: hv2's 60 cells end in CRITICAL days ago and today, with OK before and gaps without reports
    hv2 = dom[dom.index('data-host="hv2"'):]
    cells = re.findall(r'<span data-status="([^"]+)"', hv2[:hv2.index("</article>")])
    assert len(cells) == 60 and cells[-1] == "CRITICAL" and "OK" in cells[:40] and "none" in cells
    assert cells.index("OK") < cells.index("CRITICAL")
    # the rebuild, and the finished maintenance with each guest's downtime, in local time with its zone
    assert re.search(r'data-kind="resync" data-percent="62\.5"', dom) and "md0 recover: 62.5%" in dom
    assert 'data-guest="db1">db1 2 min 11 s' in dom and 'data-guest="web1">web1 38 s' in dom
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d CES?T", dom), "local times with their zone"

    borders = {rgb(COLOURS[s]) for s in ("OK", "WARNING", "CRITICAL", "UNREACHABLE", "UNKNOWN")}
    fill, track = rgb("#218bff"), rgb("#d8dee4")  # the resync bar: a colour nothing else on the page has
    desktop = chromium_shot(page, 1280, 1400, tmp_path / "desktop.png")
    share, _ = bar_fraction(desktop, fill, track)
    assert 0.58 < share < 0.67, share  # the bar is drawn 62.5% full
    assert len(card_columns(desktop, borders)) >= 2  # cards side by side
    assert rgb(COLOURS["CRITICAL"]) in {p for row in desktop for p in row}

    phone = chromium_shot(page, 390, 2400, tmp_path / "phone.png")
    share, end = bar_fraction(phone, fill, track)
    assert 0.58 < share < 0.67 and end <= 390, (share, end)  # the whole bar fits the screen
    assert len(card_columns(phone, borders)) == 1  # one column on a phone


def test_a_dropped_connection_is_reopened_on_the_next_poll(fleet: SshFleet, tmp_path: Path) -> None:
    config = controller_config(fleet, tmp_path, extra='limit = ["hv1"]\n')
    controller = Controller(load(config))  # type: ignore[arg-type]
    try:
        first = controller.poll()[0]
        warm = controller.poll()[0]
        host = fleet.hosts[0]
        pids = run_in(host.namespace, "pids")
        subprocess.run(["kill", *pids], check=False)  # the sshd and every session of it: connections drop
        host.process.wait(timeout=10)  # type: ignore[union-attr]
        fleet.start(host)
        again = controller.poll()[0]
    finally:
        controller.close()
    assert first.ok and not first.reused and warm.ok and warm.reused
    assert again.ok and not again.reused  # noticed the dead connection, reconnected, answered


def run_in(namespace: str, what: str) -> list[str]:
    return subprocess.run(["ip", "netns", what, namespace], capture_output=True, text=True).stdout.split()


def test_history_is_kept_for_the_retention_only(tmp_path: Path) -> None:
    from hostagent.fleet.store import FleetStore

    store = FleetStore(tmp_path)
    report = {"status": "OK", "findings": []}
    for at in (1000.0, 2000.0, 3000.0):
        store.record_success("hv1", "a", ("dc1",), at, 0.1, "0.1.0", report, None)
    assert store.prune(older_than=2500.0) == 2
    assert store.history("hv1") == [(3000.0, "OK")]
    store.record_failure("hv1", "a", ("dc1",), 4000.0, "host hv1: cannot connect")
    state = store.hosts()[0]
    assert (state.last_seen, state.last_attempt, state.last_error) == (3000.0, 4000.0, "host hv1: cannot connect")


def test_a_host_in_its_announced_maintenance_window_is_not_paged_until_the_window_ends() -> None:
    import datetime as dt

    from hostagent.config import FleetConfig
    from hostagent.fleet.controller import status_rows
    from hostagent.fleet.publish import metrics, page
    from hostagent.fleet.store import HostState

    start = 10_000.0
    at = dt.datetime.fromtimestamp(start, dt.UTC).isoformat()
    announced = {"maintenance": {"active": {"id": "0123456789ab", "phase": "saving", "reboot_at": at,
                                            "reboot_at_utc": at}},
                 "daemon": {"last_cycle_at": start - 5}}
    fleet = FleetConfig(maintenance_window=1800.0)

    def down(now: float) -> HostState:  # last seen while it saved its guests, unreachable since
        return HostState("hv1", "a", (), now, start + 10, "connection refused", "0.1.0", "OK", [], announced, 0.1)

    before = HostState("hv1", "a", (), start - 30, start - 90, "connection refused", "0.1.0", "OK", [], announced, 0.1)
    assert {f.code for f in fleet_findings([before], start - 30, fleet)} == {"fleet.unreachable"}  # not yet begun
    assert fleet_findings([down(start + 600)], start + 600, fleet) == []  # rebooting: expected silence
    row = status_rows([down(start + 600)], start + 600, fleet)[0]
    assert (row["status"], row["reachable"]) == ("MAINTENANCE", False)
    late = fleet_findings([down(start + 1900)], start + 1900, fleet)
    assert [(f.code, f.subject) for f in late] == [("fleet.maintenance_overrun", "hv1")]
    assert "not back from maintenance 0123456789ab" in late[0].summary
    rows = status_rows([down(start + 1900)], start + 1900, fleet)
    assert rows[0]["status"] == "MAINTENANCE OVERRUN"
    assert "MAINTENANCE OVERRUN" in page(rows, start + 1900)
    assert 'hostagent_fleet_host_up{host="hv1"} 0' in metrics(rows, start + 1900)
    back = HostState("hv1", "a", (), start + 1990, start + 1990, None, "0.1.0", "OK", [],
                     {"maintenance": {"active": None}, "daemon": {"last_cycle_at": start + 1985}}, 0.1)
    assert fleet_findings([back], start + 2000, fleet) == []  # back and its maintenance over: nothing to say
    odd = HostState("hv2", "b", (), start, start, None, "0.1.0", "EXPLODED", [], {"daemon": None}, 0.1)
    assert "UNKNOWN" in page(status_rows([odd], start, fleet), start)  # a status the page does not know


def test_fleet_metrics_pass_promtool_with_lower_case_labels(fleet: SshFleet, tmp_path: Path) -> None:
    config = controller_config(fleet, tmp_path)
    hostagent("--config", str(config), "fleet", "poll")
    text = hostagent("--config", str(config), "fleet", "metrics").stdout
    assert promtool_problems(text) == ""
    assert label_values(text, "status") == {"maintenance_overrun", "unreachable", "critical", "unknown", "warning",
                                            "maintenance", "info", "ok"}
    assert label_values(text, "severity") == {"critical", "unknown", "warning", "info"}
    assert 'hostagent_fleet_host_status{host="hv2",status="critical"} 1' in text


def test_progress_bars_for_self_tests_and_saves_and_hosts_words_escaped() -> None:
    from hostagent.fleet.publish import bars, page

    report = {"inventory": {"arrays": [{"name": "md1", "sync": {"action": "idle", "progress": None}}]},
              "checks": [{"name": "smart", "readings": {"sda": {"selftest_percent_done": 40, "temperature_celsius": 30},
                                                        "sdb": {"temperature_celsius": 31}}}]}
    active = {"phase": "saving", "guests": {"a": {"state": "saved"}, "b": {"state": "saving"},
                                            "c": {"state": "planned"}, "d": {"state": "skipped"}}}
    assert [(b["kind"], b["label"], b["percent"], b["detail"]) for b in bars(report, active)] == [
        ("selftest", "sda self-test", 40.0, ""), ("save", "saving guests", 50.0, "2 of 4")]
    assert bars(None, None) == [] and bars({"inventory": "not a table", "checks": [1]}, {"phase": "saving"}) == []
    row = {"host": "hv<1>", "status": "CRITICAL", "groups": ["<b>rack</b>"], "reachable": True, "open_findings": 1,
           "findings": [{"code": "md.degraded", "severity": "CRITICAL", "summary": "<script>alert(1)</script>"}],
           "last_seen": 1.0, "last_seen_ago": "1 s ago", "version": "0.1.0", "error": None, "maintenance": None}
    html = page([row], 2.0)
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'data-host="hv&lt;1&gt;"' in html and "&lt;b&gt;rack&lt;/b&gt;" in html
