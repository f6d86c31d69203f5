"""``hostagent fleet audit-dns``: single points of failure in the DNS your services depend on.

For each domain: its NS set, and where those nameservers are.
- ``dns.ns_one_provider``: every nameserver is under one provider's registrable domain
  (public suffix list): one provider's outage, or one attack on it, takes the domain down.
- ``dns.ns_one_subnet``: every nameserver address is in one /24 (IPv4) or /48 (IPv6).
- ``dns.ns_one_network``: every address, the glue the answer carried included, is in one wider
  network (/16 and /32 by default, ``--network-prefix``): one upstream, one routing incident.
- ``dns.ns_unresolvable``: the NS set or a nameserver's addresses cannot be resolved.
For the service hostnames (``--service``): ``dns.services_one_domain`` when every one lives under
one registrable domain, ``dns.services_one_provider`` when the zones of all of them are served by
one provider.

Lookups go to the resolvers of /etc/resolv.conf, or to ``--nameserver``; dnspython is the
controller extra's.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from hostagent.errors import HostagentError
from hostagent.model import Finding, Remedy, Severity
from hostagent.records import field, record

CHECK = "dns"
SECONDARY = ("add a secondary DNS provider: a second set of nameservers at a different company, "
             "kept in sync by zone transfer (AXFR/IXFR) or by your deployment")
ALTERNATE = ("register an alternate domain at a different registrar, served by a different DNS "
             "provider, and use it for failover endpoints")


@record
class Nameserver:
    name: str
    provider: str
    addresses: list[str] = field(default_factory=list)
    glue: bool = False  # the addresses came with the NS answer (additional section)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "provider": self.provider, "addresses": self.addresses, "glue": self.glue}


@record
class DomainAudit:
    domain: str
    nameservers: list[Nameserver]
    findings: list[Finding]

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "nameservers": [n.to_json() for n in self.nameservers],
                "findings": [f.to_json() for f in self.findings]}


class Lookup:
    """dnspython queries against chosen resolvers; every failure becomes a HostagentError naming the name."""

    def __init__(self, nameservers: list[str], timeout: float) -> None:
        try:
            import dns.resolver
        except ImportError:
            raise HostagentError("audit-dns needs dnspython: pip install 'hostagent[controller]'") from None
        from publicsuffixlist import PublicSuffixList

        if nameservers:
            self.resolver = dns.resolver.Resolver(configure=False)
            addresses, ports = [], set()
            for server in nameservers:
                address, port = _host_port(server)
                addresses.append(address)
                ports.add(port)
            if len(ports) != 1:
                raise HostagentError(f"--nameserver: all must use one port, got {sorted(ports)}")
            self.resolver.nameservers = addresses
            self.resolver.port = ports.pop()
        else:
            self.resolver = dns.resolver.Resolver()
        self.resolver.lifetime = timeout
        self.psl = PublicSuffixList()

    def query(self, name: str, rdtype: str) -> Any:
        import dns.exception
        import dns.resolver

        try:
            return self.resolver.resolve(name, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            raise HostagentError(f"{name}: no such domain (NXDOMAIN)") from None
        except dns.exception.Timeout:
            servers = ", ".join(str(n) for n in self.resolver.nameservers)
            raise HostagentError(f"{name} {rdtype}: no answer from {servers} within the timeout") from None
        except dns.exception.DNSException as err:
            raise HostagentError(f"{name} {rdtype}: {err}") from None

    def provider(self, name: str) -> str:
        """The registrable domain a hostname is under: ns1.example.co.uk -> example.co.uk."""
        return self.psl.privatesuffix(name.rstrip(".").lower()) or name.rstrip(".").lower()

    def zone_of(self, name: str) -> str:
        """The zone a hostname lives in: the closest enclosing name with an NS set."""
        import dns.resolver

        try:
            return str(dns.resolver.zone_for_name(name, resolver=self.resolver)).rstrip(".")
        except Exception as err:
            raise HostagentError(f"{name}: cannot find its zone ({err})") from None


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):
        address, _, port = text[1:].partition("]:")
    elif text.count(":") == 1:
        address, _, port = text.partition(":")
    else:
        address, port = text, ""
    try:
        ipaddress.ip_address(address)
        return address, int(port) if port else 53
    except ValueError:
        raise HostagentError(f"--nameserver {text}: expected an IP address, optionally with :PORT") from None


def nameservers_of(lookup: Lookup, domain: str) -> list[Nameserver]:
    answer = lookup.query(domain, "NS")
    names = sorted(str(r.target).rstrip(".").lower() for r in answer)
    if not names:
        raise HostagentError(f"{domain}: no NS records")
    glue: dict[str, list[str]] = {}
    for rrset in answer.response.additional:
        if rrset.rdtype in (1, 28):  # A, AAAA
            glue.setdefault(str(rrset.name).rstrip(".").lower(), []).extend(str(r) for r in rrset)
    found = []
    for name in names:
        server = Nameserver(name, lookup.provider(name))
        if name in glue:
            server.addresses, server.glue = sorted(glue[name]), True
        else:
            for rdtype in ("A", "AAAA"):
                server.addresses += sorted(str(r) for r in lookup.query(name, rdtype))
        found.append(server)
    return found


def evaluate(domain: str, servers: list[Nameserver], network_prefix: tuple[int, int]) -> list[Finding]:
    """The single points of failure of one NS set (pure)."""
    findings = []
    providers = sorted({s.provider for s in servers})
    names = ", ".join(s.name for s in servers)
    if len(providers) == 1:
        findings.append(Finding(
            "dns.ns_one_provider", CHECK, domain, Severity.WARNING,
            f"{domain}: every nameserver is at one provider ({providers[0]})",
            f"nameservers: {names}", Remedy(SECONDARY, "an outage or attack at one provider takes the domain down")))
    unresolved = [s.name for s in servers if not s.addresses]
    if unresolved:
        findings.append(Finding("dns.ns_unresolvable", CHECK, domain, Severity.CRITICAL,
                                f"{domain}: nameservers without an address: {', '.join(unresolved)}"))
    addresses = [ipaddress.ip_address(a) for s in servers for a in s.addresses]
    subnets = _networks(addresses, (24, 48))
    if addresses and len(subnets) == 1:
        findings.append(Finding(
            "dns.ns_one_subnet", CHECK, domain, Severity.WARNING,
            f"{domain}: every nameserver address is in {subnets.pop()}",
            "addresses: " + ", ".join(str(a) for a in addresses),
            Remedy(SECONDARY, "one subnet is one site, one router, one attack target")))
    elif addresses and len(networks := _networks(addresses, network_prefix)) == 1:
        source = "glue" if all(s.glue for s in servers) else "addresses"
        findings.append(Finding(
            "dns.ns_one_network", CHECK, domain, Severity.WARNING,
            f"{domain}: all nameserver {source} in one network ({networks.pop()})",
            "addresses: " + ", ".join(str(a) for a in addresses),
            Remedy(SECONDARY, "one network is one upstream: a routing incident or a flood there takes them all")))
    return findings


def _networks(addresses: list[Any], prefixes: tuple[int, int]) -> set[str]:
    found = set()
    for address in addresses:
        length = prefixes[0] if address.version == 4 else prefixes[1]
        found.add(str(ipaddress.ip_network(f"{address}/{length}", strict=False)))
    return found


def evaluate_services(services: list[str], zones: dict[str, str], providers: dict[str, set[str]],
                      registrable: dict[str, str]) -> list[Finding]:
    """Service hostnames that share one domain, or one DNS provider (pure)."""
    if len(services) < 2:
        return []
    findings = []
    domains = sorted(set(registrable.values()))
    if len(domains) == 1:
        findings.append(Finding(
            "dns.services_one_domain", CHECK, domains[0], Severity.WARNING,
            f"every service hostname is under {domains[0]}: {', '.join(services)}",
            "one registrar problem, expiry or DNS outage of that domain takes every service down",
            Remedy(ALTERNATE, "failover endpoints must not depend on the domain that failed")))
    served_by = set.union(*(providers[zones[s]] for s in services))
    if len(served_by) == 1:
        provider = served_by.pop()
        findings.append(Finding(
            "dns.services_one_provider", CHECK, provider, Severity.WARNING,
            f"every service hostname's zone is served by one DNS provider ({provider})",
            "zones: " + ", ".join(sorted({zones[s] for s in services})),
            Remedy(SECONDARY + "; and " + ALTERNATE, "an attack on the provider takes every service down")))
    return findings


def audit(domains: list[str], services: list[str], *, nameservers: list[str], timeout: float = 5.0,
          network_prefix: tuple[int, int] = (16, 32)) -> dict[str, Any]:
    lookup = Lookup(nameservers, timeout)
    results: list[DomainAudit] = []
    providers: dict[str, set[str]] = {}
    zones: dict[str, str] = {}
    wanted = [d.rstrip(".").lower() for d in domains]
    for service in services:
        try:
            zones[service] = lookup.zone_of(service)
        except HostagentError as err:
            results.append(DomainAudit(service, [], [Finding("dns.ns_unresolvable", CHECK, service,
                                                             Severity.CRITICAL, str(err))]))
            continue
        if zones[service] not in wanted:
            wanted.append(zones[service])
    for domain in wanted:
        try:
            servers = nameservers_of(lookup, domain)
        except HostagentError as err:
            results.append(DomainAudit(domain, [], [Finding("dns.ns_unresolvable", CHECK, domain,
                                                            Severity.CRITICAL, str(err))]))
            continue
        providers[domain] = {s.provider for s in servers}
        results.append(DomainAudit(domain, servers, evaluate(domain, servers, network_prefix)))
    resolved = [s for s in services if s in zones and zones[s] in providers]
    service_findings = evaluate_services(resolved, zones, providers, {s: lookup.provider(s) for s in resolved})
    findings = [f for r in results for f in r.findings] + service_findings
    return {"domains": [r.to_json() for r in results], "services": {s: zones.get(s) for s in services},
            "findings": [f.to_json() for f in findings],
            "status": Severity.worst(f.severity for f in findings).name}


def render(result: dict[str, Any]) -> str:
    lines = []
    for entry in result["domains"]:
        lines.append(entry["domain"])
        for server in entry["nameservers"]:
            via = " (glue)" if server["glue"] else ""
            lines.append(f"  NS {server['name']:<32} {server['provider']:<24} {', '.join(server['addresses'])}{via}")
    lines.append("")
    if not result["findings"]:
        lines.append("no single point of failure found")
    for finding in result["findings"]:
        lines.append(f"{finding['severity']:<8} {finding['code']:<26} {finding['summary']}")
        if finding["remedy"]:
            lines.append(f"         recommend: {finding['remedy']['what']}")
    return "\n".join(lines) + "\n"
