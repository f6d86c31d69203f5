"""``hostagent fleet audit-dns`` against a real authoritative server: Debian's NSD on loopback,
serving zones this test writes: one domain whose nameservers are all at one provider in one /24,
one with two providers in different networks, and the providers' own zones."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_alerts import free_port
from tests.integration.test_cli import hostagent

NSD = shutil.which("nsd") or "/usr/sbin/nsd"
pytestmark = pytest.mark.skipif(not Path(NSD).exists(), reason="needs Debian's nsd")

SOA = "@ 3600 IN SOA ns1.dnsprov.test. hostmaster.dnsprov.test. 1 3600 600 86400 300\n"
ZONES = {
    # every NS at one provider, all addresses in one /24
    "spof.test": ["@ NS ns1.dnsprov.test.", "@ NS ns2.dnsprov.test.", "www A 198.51.100.10",
                  "api A 198.51.100.11"],
    # two providers under different registrable domains, in different networks
    "diverse.test": ["@ NS ns1.alpha-dns.test.", "@ NS ns.beta-dns.example.", "www A 203.0.113.10"],
    "dnsprov.test": ["@ NS ns1.dnsprov.test.", "ns1 A 10.53.1.1", "ns2 A 10.53.1.2"],
    "alpha-dns.test": ["@ NS ns1.alpha-dns.test.", "ns1 A 10.53.7.1", "ns1 AAAA 2001:db8:53::1"],
    "beta-dns.example": ["@ NS ns.beta-dns.example.", "ns A 172.20.9.9", "ns AAAA 2001:db8:99::9"],
    # one provider, but its two servers in different /24s of one /16
    "onenet.test": ["@ NS ns1.gamma-dns.test.", "@ NS ns2.gamma-dns.test.", "www A 203.0.113.20"],
    "gamma-dns.test": ["@ NS ns1.gamma-dns.test.", "ns1 A 10.60.1.1", "ns2 A 10.60.200.1"],
}


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("nsd")
    port = free_port()
    conf = ["server:", f"  ip-address: 127.0.0.1@{port}", '  username: ""', '  chroot: ""',
            f"  zonesdir: {directory}", f"  pidfile: {directory}/nsd.pid", '  database: ""',
            f"  xfrdfile: {directory}/xfrd.state", f"  zonelistfile: {directory}/zone.list",
            f"  logfile: {directory}/nsd.log", "  server-count: 1", "  do-ip6: no", "  verbosity: 2",
            "remote-control:", "  control-enable: no"]
    for zone, records in ZONES.items():
        (directory / f"{zone}.zone").write_text(f"$ORIGIN {zone}.\n$TTL 300\n{SOA}" + "\n".join(records) + "\n")
        conf += ["zone:", f"  name: {zone}", f"  zonefile: {zone}.zone"]
    (directory / "nsd.conf").write_text("\n".join(conf) + "\n")
    checked = subprocess.run(["nsd-checkconf", str(directory / "nsd.conf")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen([NSD, "-d", "-c", str(directory / "nsd.conf")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        _wait_answering(port, directory / "nsd.log")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=20)


def _wait_answering(port: int, log: Path) -> None:
    import dns.message
    import dns.query

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            dns.query.udp(dns.message.make_query("spof.test", "SOA"), "127.0.0.1", port=port, timeout=0.5)
            return
        except (OSError, dns.exception.Timeout):
            time.sleep(0.2)
    raise AssertionError(f"nsd never answered on port {port}:\n{log.read_text() if log.exists() else ''}")


def audit(server: str, *args: str) -> tuple[int, dict[str, object]]:
    run = hostagent("fleet", "audit-dns", *args, "--nameserver", server, "--json")
    assert run.stderr == "", run.stderr
    return run.returncode, json.loads(run.stdout)


def test_single_provider_in_one_subnet_is_flagged(nsd: str) -> None:
    code, result = audit(nsd, "spof.test")
    found = {(f["code"], f["subject"]) for f in result["findings"]}  # type: ignore[index, union-attr]
    assert found == {("dns.ns_one_provider", "spof.test"), ("dns.ns_one_subnet", "spof.test")}
    assert code == 1
    servers = result["domains"][0]["nameservers"]  # type: ignore[index]
    assert [(s["name"], s["provider"], s["addresses"]) for s in servers] == [
        ("ns1.dnsprov.test", "dnsprov.test", ["10.53.1.1"]), ("ns2.dnsprov.test", "dnsprov.test", ["10.53.1.2"])]
    text = hostagent("fleet", "audit-dns", "spof.test", "--nameserver", nsd).stdout
    assert "every nameserver is at one provider (dnsprov.test)" in text
    assert "recommend: add a secondary DNS provider" in text
    assert "every nameserver address is in 10.53.1.0/24" in text


def test_diverse_providers_are_clean(nsd: str) -> None:
    code, result = audit(nsd, "diverse.test")
    assert result["findings"] == [] and code == 0
    servers = result["domains"][0]["nameservers"]  # type: ignore[index]
    assert sorted(s["provider"] for s in servers) == ["alpha-dns.test", "beta-dns.example"]
    assert "no single point of failure found" in hostagent("fleet", "audit-dns", "diverse.test",
                                                           "--nameserver", nsd).stdout


def test_one_network_and_service_hostnames(nsd: str) -> None:
    code, result = audit(nsd, "onenet.test", "--service", "www.spof.test", "--service", "api.spof.test")
    found = {(f["code"], f["subject"]) for f in result["findings"]}  # type: ignore[index, union-attr]
    assert ("dns.ns_one_network", "onenet.test") in found  # two /24s, one /16
    assert ("dns.ns_one_subnet", "onenet.test") not in found
    assert ("dns.services_one_domain", "spof.test") in found
    assert ("dns.services_one_provider", "dnsprov.test") in found
    assert result["services"] == {"www.spof.test": "spof.test", "api.spof.test": "spof.test"} and code == 1
    _, mixed = audit(nsd, "--service", "www.spof.test", "--service", "www.diverse.test")
    assert not any(f["code"].startswith("dns.services") for f in mixed["findings"])  # type: ignore[union-attr]


def test_unresolvable_domain_and_bad_input(nsd: str) -> None:
    code, result = audit(nsd, "missing.test")
    assert code == 2 and result["findings"][0]["code"] == "dns.ns_unresolvable"  # type: ignore[index]
    bad = hostagent("fleet", "audit-dns", "spof.test", "--nameserver", "not-an-ip")
    assert bad.returncode == 3 and "--nameserver not-an-ip: expected an IP address" in bad.stderr
    none = hostagent("fleet", "audit-dns")
    assert none.returncode == 3 and "name at least one DOMAIN" in none.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # a port that never answers
        code, result = audit(f"127.0.0.1:{silent.getsockname()[1]}", "spof.test", "--timeout", "1")
    assert code == 2 and "within the timeout" in result["findings"][0]["summary"]  # type: ignore[index]
