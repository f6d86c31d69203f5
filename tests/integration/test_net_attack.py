"""Real floods in sealed network namespaces (tests/netlab.py): the net check, the daemon's page, the
blackhole remedy, and RFC 7999 announcements through a real ExaBGP BGP session.

Every test that sends test traffic also captures on the host's side and asserts it saw none of it.
"""

from __future__ import annotations

import json
import mailbox
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.netlab import ATTACKER_IP, TARGET_IP, Lab, lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("tcpdump") is None,
                                reason="needs root (network namespaces) and tcpdump")
REPO = Path(__file__).resolve().parents[2]
CYCLE = 5.0  # the daemon's net interval (watch.net_interval)
ONLY_NET = "".join(f"[checks.{name}]\nenabled = false\n" for name in ("md", "hung", "smart", "erc", "boot"))


@pytest.fixture
def net() -> Iterator[Lab]:
    with lab() as sealed:
        yield sealed


def write_config(tmp_path: Path, text: str = "") -> Path:
    path = tmp_path / "hostagent.toml"
    path.write_text(ONLY_NET + text)
    return path


def cycle(net: Lab, config: Path, state: Path) -> list[dict[str, Any]]:
    """One run of the net check inside the target namespace, as the daemon runs it."""
    run = net.exec(net.target, sys.executable, "-m", "hostagent", "--config", str(config), "check", "--only", "net",
                   "--json", "--state-dir", str(state), check=False)
    assert run.returncode in (0, 1, 2), run.stderr
    return list(json.loads(run.stdout)["findings"])


def codes(findings: list[dict[str, Any]]) -> list[str]:
    return sorted(f["code"] for f in findings)


def test_the_lab_is_sealed(net: Lab) -> None:
    target = net.routes(net.target)
    assert not any(line.startswith("default") for line in target.splitlines())
    assert "blackhole default" in net.routes(net.attacker)
    assert net.exec(net.attacker, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
    # nothing of the host's namespace is reachable: the host's own addresses are not routed
    host_address = subprocess.run(["ip", "-4", "-j", "route", "get", "1.1.1.1"], capture_output=True, text=True)
    if host_address.returncode == 0 and json.loads(host_address.stdout):
        source = json.loads(host_address.stdout)[0].get("prefsrc")
        if source:
            unreachable = net.exec(net.target, "ip", "route", "get", source, check=False)
            assert unreachable.returncode != 0, unreachable.stdout


def test_syn_flood_fires_within_two_cycles_naming_port_and_prefix(net: Lab, tmp_path: Path) -> None:
    config, state = write_config(tmp_path), tmp_path / "state"
    net.sysctl(net.target, "net.ipv4.tcp_syncookies=0")
    net.sysctl(net.target, "net.ipv4.tcp_max_syn_backlog=4096")
    with net.listener(8080), net.capture_host_side(tmp_path / "host-side.txt") as seen:
        assert codes(cycle(net, config, state)) == ["net.syncookies_off"]  # the baseline cycle: no flood yet
        flood = threading.Thread(target=net.syn_flood,
                                 args=(8080, 3000, {"10.77.1.0": 0.95, "10.77.2.0": 0.05}, 2 * CYCLE))
        flood.start()
        results = []
        for _ in range(2):
            time.sleep(CYCLE)
            results.append(cycle(net, config, state))
            # fired, and at its full severity: on a loaded machine the first cycle may see the backlog
            # still filling (WARNING); the flood runs on for the second
            if any(f["code"] == "net.syn_flood" and f["severity"] == "CRITICAL" for f in results[-1]):
                break
        flood.join()
    assert seen == [0, 1], "the host's side saw test traffic (or the capture was dead)"
    flood_findings = [f for f in results[-1] if f["code"] == "net.syn_flood"]
    assert len(flood_findings) == 1, results
    finding = flood_findings[0]
    assert finding["subject"] == f"{TARGET_IP}:8080"
    assert "top sources 10.77.1.0/24" in finding["summary"]
    assert finding["severity"] == "CRITICAL"  # well above syn_recv_critical (1024) half-open connections
    blackholes = [c[3] for c in finding["remedy"]["commands"] if c[:3] == ["hostagent", "net", "blackhole"]]
    assert blackholes == ["10.77.1.0/24"]  # 10.77.2.0/24 sent 5%: below blackhole_min_share
    assert ["sysctl", "-w", "net.ipv4.tcp_syncookies=1"] in finding["remedy"]["commands"]
    off = next(f for f in results[-1] if f["code"] == "net.syncookies_off")
    assert off["severity"] == "CRITICAL"


def test_normal_load_of_200_connections_per_second_is_not_a_finding(net: Lab, tmp_path: Path) -> None:
    config, state = write_config(tmp_path), tmp_path / "state"
    with (net.listener(8080), net.capture_host_side(tmp_path / "host-side.txt") as seen,
          net.normal_load(8080, 200) as clients):
        found = [cycle(net, config, state)]
        for _ in range(3):
            time.sleep(CYCLE)
            found.append(cycle(net, config, state))
        clients.kill()
        progress = (clients.stdout.read() if clients.stdout else "").split()
    assert seen == [0, 1]
    made, failed = int(progress[-2]), int(progress[-1])
    assert made >= 2000 and failed == 0, (made, failed)  # the load was real: 15 s at 200/s
    assert found == [[], [], [], []]


def test_pps_spike_and_icmp_flood_are_detected(net: Lab, tmp_path: Path) -> None:
    config = write_config(tmp_path, "[checks.net]\npps_warmup = 3\npps_floor = 2000\nicmp_echo_warning = 200\n")
    state = tmp_path / "state"
    with net.capture_host_side(tmp_path / "host-side.txt") as seen:
        for _ in range(5):  # learn the quiet baseline
            assert cycle(net, config, state) == []
            time.sleep(1)
        blast = threading.Thread(target=net.udp_blast, args=(9999, 4.0))
        blast.start()
        time.sleep(2)
        spike = cycle(net, config, state)
        blast.join()
        cycle(net, config, state)
        net.echo_flood(3000, 2.0)
        echo = cycle(net, config, state)
    assert seen == [0, 1]
    pps = [f for f in spike if f["code"] == "net.pps_spike"]
    assert [f["subject"] for f in pps] == ["veth-t"], spike
    assert "packets/s received" in pps[0]["summary"] and "the usual" in pps[0]["summary"]
    assert "net.icmp_flood" in codes(echo), echo


def test_blackhole_dry_run_apply_list_and_expiry(net: Lab, tmp_path: Path) -> None:
    config, state = write_config(tmp_path), tmp_path / "state"

    def hostagent(*args: str) -> subprocess.CompletedProcess[str]:
        return net.exec(net.target, sys.executable, "-m", "hostagent", "--config", str(config), "net", *args,
                        "--state-dir", str(state), check=False)

    dry = hostagent("blackhole", "10.77.1.0/24", "--ttl", "3")
    assert dry.returncode == 0 and "[dry run] ip route add blackhole 10.77.1.0/24" in dry.stdout
    assert "blackhole 10.77.1.0/24" not in net.routes(net.target)
    refused = hostagent("blackhole", "10.77.0.0/24", "--apply")
    assert refused.returncode == 3 and "an address of this host (veth-t)" in refused.stderr
    # one mitigation that cannot expire during the test (an hour) and one that does (3 s): a 3 s one alone
    # raced the CLI's starts on a loaded machine before the "not yet expired" check
    applied = hostagent("blackhole", "10.77.1.0/24", "--ttl", "3600", "--reason", "test flood", "--apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "blackhole 10.77.1.0/24" in net.routes(net.target)
    listed = json.loads(hostagent("mitigations", "--json").stdout)["mitigations"]
    assert [(m["id"], m["reason"]) for m in listed] == [("blackhole:10.77.1.0/24", "test flood")]
    early = hostagent("expire", "--apply")
    assert "nothing has expired" in early.stdout and "blackhole 10.77.1.0/24" in net.routes(net.target)
    short = hostagent("blackhole", "10.77.2.0/24", "--ttl", "3", "--reason", "short", "--apply")
    assert short.returncode == 0 and "blackhole 10.77.2.0/24" in net.routes(net.target), short.stdout + short.stderr
    time.sleep(3.5)
    expired = hostagent("expire", "--apply")
    assert "[applied] ip route del blackhole 10.77.2.0/24" in expired.stdout, expired.stdout + expired.stderr
    assert "10.77.1.0/24" not in expired.stdout  # the hour-long one stays
    routes = net.routes(net.target)
    assert "blackhole 10.77.2.0/24" not in routes and "blackhole 10.77.1.0/24" in routes
    withdrawn = hostagent("withdraw", "blackhole:10.77.1.0/24", "--apply")
    assert withdrawn.returncode == 0 and "blackhole 10.77.1.0/24" not in net.routes(net.target), withdrawn
    assert json.loads(hostagent("mitigations", "--json").stdout)["mitigations"] == []
    events = [json.loads(line)["event"] for line in (state / "audit.jsonl").read_text().splitlines()]
    assert events.count("mitigation.start") == 2 and events.count("mitigation.end") == 2, events
    assert events[:3] == ["start", "done", "mitigation.start"], events


def test_daemon_pages_at_once_blackholes_and_lets_it_expire(net: Lab, tmp_path: Path) -> None:
    """The daemon in the target namespace: a CRITICAL flood is mailed in its cycle, the top prefix is
    blackholed (checks.net.mitigate = "apply"), and the route is removed when it expires."""
    maildir, state = tmp_path / "mail", tmp_path / "state"
    config = write_config(tmp_path, '[checks.net]\nmitigate = "apply"\nmitigation_ttl = 12\n'
                                    '[alerts.smtp]\nhost = "127.0.0.1"\nport = 8025\n'
                                    '[[alerts.routes]]\nto = ["noc@example.com"]\n')
    net.sysctl(net.target, "net.ipv4.tcp_syncookies=0")
    net.sysctl(net.target, "net.ipv4.tcp_max_syn_backlog=4096")
    smtp = net.popen(net.target, [sys.executable, "-m", "aiosmtpd", "-n", "-l", "127.0.0.1:8025", "-c",
                                  "aiosmtpd.handlers.Mailbox", str(maildir)])
    log = tmp_path / "watch.log"
    with log.open("w") as errors:
        daemon = net.popen(net.target, [sys.executable, "-m", "hostagent", "--config", str(config), "watch",
                                        "--state-dir", str(state)], stderr=errors, cwd=REPO)
    try:
        with net.listener(8080), net.capture_host_side(tmp_path / "host-side.txt") as seen:
            time.sleep(CYCLE + 1)  # the daemon's first cycle is the baseline
            net.syn_flood(8080, 3000, {"10.77.1.0": 0.95, "10.77.2.0": 0.05}, CYCLE)
            # a cycle that samples the flood half-sent (a loaded machine sends it slower) pages WARNING first
            # and CRITICAL as it escalates: the page that counts is the CRITICAL one, within three cycles
            mail = wait_for(lambda: [m for m in mailbox.Maildir(str(maildir))
                                     if "syn flood" in m["Subject"] and "CRITICAL" in m["Subject"]],
                            "the CRITICAL flood page", 3 * CYCLE)
            wait_for(lambda: "blackhole 10.77.1.0/24" in net.routes(net.target), "the blackhole route", 2 * CYCLE)
            wait_for(lambda: "blackhole 10.77.1.0/24" not in net.routes(net.target), "the expiry", 12 + 3 * CYCLE)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        smtp.kill()
        smtp.wait()
    assert seen == [0, 1]
    assert "CRITICAL" in mail[0]["Subject"] and f"{TARGET_IP}:8080" in mail[0]["Subject"]
    body = mail[0].get_payload()
    assert "10.77.1.0/24" in str(body)
    events = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events if e["event"].startswith("mitigation")]
    assert kinds[0] == "mitigation.start" and kinds[-1] == "mitigation.end", kinds
    assert {e["prefix"] for e in events if e["event"].startswith("mitigation")} == {"10.77.1.0/24"}
    # the blackhole cleared the half-open connections (they would linger a minute of SYN-ACK retries)
    order = [(e["event"], e.get("kind"), e.get("code")) for e in events]
    resolved = order.index(("alert", "resolved", "net.syn_flood"))
    assert order.index(("mitigation.start", "blackhole", None)) < resolved < order.index(
        ("mitigation.end", "blackhole", None))


SPEAKER = """
process blackhole {{
    run {python} {relay} {pipe};
    encoder text;
}}
neighbor {target} {{
    router-id {attacker};
    local-address {attacker};
    local-as 65001;
    peer-as 65002;
    api {{ processes [ blackhole ]; }}
}}
"""
ROUTER = """
process collector {{
    run {python} {collect} {received};
    encoder json;
}}
neighbor {attacker} {{
    router-id {target};
    local-address {target};
    local-as 65002;
    peer-as 65001;
    passive;
    api {{ processes [ collector ]; receive {{ parsed; update; }} }}
}}
"""
RELAY = """import os, sys
with os.fdopen(os.open(sys.argv[1], os.O_RDWR), "r") as pipe:  # O_RDWR: writers may come and go
    for line in pipe:
        sys.stdout.write(line)
        sys.stdout.flush()
"""
COLLECT = """import sys
with open(sys.argv[1], "a") as out:
    for line in sys.stdin:
        out.write(line)
        out.flush()
"""


def test_exabgp_announcement_reaches_a_bgp_peer_with_the_blackhole_community(net: Lab, tmp_path: Path) -> None:
    """Our API text, parsed by a real ExaBGP (the speaker, attacker namespace), crosses a real BGP session
    to a second ExaBGP (the "router", target namespace) that prints what it received as JSON."""
    exabgp = Path(sys.executable).parent / "exabgp"
    pipe, received = tmp_path / "exabgp.pipe", tmp_path / "received.jsonl"
    os.mkfifo(pipe)
    (tmp_path / "relay.py").write_text(RELAY)
    (tmp_path / "collect.py").write_text(COLLECT)
    values = {"python": sys.executable, "relay": tmp_path / "relay.py", "collect": tmp_path / "collect.py",
              "pipe": pipe, "received": received, "attacker": ATTACKER_IP, "target": TARGET_IP}
    (tmp_path / "speaker.conf").write_text(SPEAKER.format(**values))
    (tmp_path / "router.conf").write_text(ROUTER.format(**values))
    config = write_config(tmp_path, f'[checks.net]\nexabgp_pipe = "{pipe}"\nexabgp_next_hop = "192.0.2.1"\n')
    env = dict(os.environ, exabgp_daemon_user="root", exabgp_daemon_drop="false")
    logs = [(tmp_path / "router.log").open("w"), (tmp_path / "speaker.log").open("w")]
    speakers = [
        net.popen(net.target, [str(exabgp), "server", str(tmp_path / "router.conf")],
                  env=dict(env, exabgp_tcp_bind=TARGET_IP), stdout=logs[0], stderr=subprocess.STDOUT),
        net.popen(net.attacker, [str(exabgp), "server", str(tmp_path / "speaker.conf")],
                  env=dict(env, exabgp_tcp_bind=""), stdout=logs[1], stderr=subprocess.STDOUT)]

    def hostagent(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hostagent", "--config", str(config), "net", *args,
                               "--state-dir", str(tmp_path / "state")], capture_output=True, text=True)

    def updates() -> list[dict[str, Any]]:
        lines = received.read_text().splitlines() if received.exists() else []
        messages = [json.loads(line)["neighbor"]["message"] for line in lines if '"type": "update"' in line]
        return [m["update"] for m in messages if "update" in m]

    try:
        with net.capture_host_side(tmp_path / "host-side.txt") as seen:
            # the speaker's End-of-RIB marker arrives once the session is established
            wait_for(lambda: received.exists() and '"eor"' in received.read_text(), "the BGP session", 60)
            dry = hostagent("announce", TARGET_IP)
            assert dry.returncode == 0 and (f"[dry run] announce route {TARGET_IP}/32 next-hop 192.0.2.1 "
                                            "community [65535:666]") in dry.stdout
            applied = hostagent("announce", TARGET_IP, "--ttl", "2", "--apply")
            assert applied.returncode == 0, applied.stdout + applied.stderr
            wait_for(lambda: any("announce" in u for u in updates()), "the announcement at the peer", 20)
            time.sleep(2.5)
            expired = hostagent("expire", "--apply")
            assert expired.returncode == 0, expired.stdout + expired.stderr
            wait_for(lambda: any("withdraw" in u for u in updates()), "the withdrawal at the peer", 20)
    finally:
        for process in speakers:
            process.terminate()
            process.wait(timeout=30)
        for handle in logs:
            handle.close()
    assert seen == [0, 1]
    announced = next(u for u in updates() if "announce" in u)
    assert announced["attribute"]["community"] == [[65535, 666]]
    assert announced["announce"]["ipv4 unicast"]["192.0.2.1"] == [{"nlri": f"{TARGET_IP}/32"}]
    withdrawn = next(u for u in updates() if "withdraw" in u)
    assert withdrawn["withdraw"]["ipv4 unicast"] == [{"nlri": f"{TARGET_IP}/32"}]
    assert json.loads(hostagent("mitigations", "--json").stdout)["mitigations"] == []
