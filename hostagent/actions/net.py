"""Flood mitigations: local blackhole routes for source prefixes, and RFC 7999 blackhole
announcements of an attacked address through an ExaBGP API pipe.

Each mitigation is opt-in, a dry run unless applied, capped (``mitigation_max`` active at once,
``mitigation_max_ttl`` at most), expiring, and audited.  The active ones are kept in
``<state>/mitigations.json`` (replaced atomically under a lock: the daemon and the command line
both write it); the daemon removes expired ones every net cycle, ``hostagent net expire`` does
it by hand.

Interlocks: a blackhole never covers one of this host's addresses, its gateways, the address of
the SSH session giving the command, loopback or link-local space, or a ``never_block`` prefix; and
it is never wider than /16 (IPv4) or /32 (IPv6).  ``ip`` runs in a child process with a timeout.
The ExaBGP pipe is written without blocking (a named pipe with no reader fails at once, ENXIO), so
a stopped ExaBGP cannot hang the agent.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from checks.net import Config
from hostagent.actions import AuditLog, Outcome, Step, perform
from hostagent.durable import write_durable
from hostagent.errors import ActionRefused, HostagentError, ProbeUnavailable
from hostagent.host import Host
from hostagent.records import record

MITIGATIONS_FILE = "mitigations.json"
WIDEST = {4: 16, 6: 32}
BLACKHOLE_COMMUNITY = "65535:666"  # RFC 7999 BLACKHOLE
ALWAYS_PROTECTED = ("127.0.0.0/8", "169.254.0.0/16", "::1/128", "fe80::/10", "0.0.0.0/32", "::/128")
Kind = Literal["blackhole", "announce"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@record(frozen=True)
class Mitigation:
    kind: Kind
    prefix: str
    created: float
    expires: float
    reason: str
    applied: bool

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.prefix}"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self)}


@record(frozen=True)
class Result:
    """What one mitigation command did: the mitigation, the steps or pipe lines, and any error."""

    mitigation: Mitigation
    commands: tuple[str, ...]
    applied: bool
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"mitigation": self.mitigation.to_json(), "commands": list(self.commands), "applied": self.applied,
                "error": self.error}


# -- the store -----------------------------------------------------------------------------


class MitigationStore:
    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        if directory is None:
            raise HostagentError("mitigations need a state directory (agent.state_dir or --state-dir)")
        self.path = Path(directory) / MITIGATIONS_FILE

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, Mitigation]]:
        """The active mitigations by id, written back when the block ends without an error."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            active = self._load()
            yield active
            write_durable(self.path, (json.dumps([m.to_json() for m in active.values()], indent=2) + "\n").encode())

    def active(self) -> list[Mitigation]:
        return sorted(self._load().values(), key=lambda m: m.created) if self.path.exists() else []

    def _load(self) -> dict[str, Mitigation]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise HostagentError(f"{self.path}: unreadable ({err}); fix or remove it, then re-run") from None
        try:
            found = [Mitigation(m["kind"], m["prefix"], float(m["created"]), float(m["expires"]), m["reason"],
                                bool(m["applied"])) for m in raw]
        except (KeyError, TypeError, ValueError) as err:
            raise HostagentError(f"{self.path}: not a mitigation list ({err})") from None
        return {m.id: m for m in found}


# -- interlocks ----------------------------------------------------------------------------


def protected_networks(host: Host, config: Config, timeout: float) -> list[tuple[str, Network]]:
    """What a blackhole must never cover, each with why."""
    found: list[tuple[str, Network]] = []
    for text in ALWAYS_PROTECTED:
        found.append(("loopback, link-local or unspecified space", ipaddress.ip_network(text)))
    for text in config.never_block:
        found.append(("listed in checks.net.never_block", ipaddress.ip_network(text, strict=False)))
    session = os.environ.get("SSH_CONNECTION", "").split()
    if session:
        found.append(("the SSH session giving this command", ipaddress.ip_network(session[0])))
    addresses = _ip_json(host, ["-j", "address", "show"], timeout)
    for link in addresses:
        for info in link.get("addr_info", []):
            if "local" in info:
                found.append((f"an address of this host ({link.get('ifname')})", ipaddress.ip_network(info["local"])))
    for family in ("-4", "-6"):
        for route in _ip_json(host, [family, "-j", "route", "show", "default"], timeout):
            if route.get("gateway"):
                found.append(("this host's gateway", ipaddress.ip_network(route["gateway"])))
    return found


def _ip_json(host: Host, argv: list[str], timeout: float) -> list[dict[str, Any]]:
    result = host.run("ip", argv, name="ip-" + "-".join(a.strip("-") for a in argv), timeout=timeout)
    if result.returncode != 0:
        raise ProbeUnavailable(f"ip {' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    try:
        data = json.loads(result.stdout or "[]")
    except ValueError as err:
        raise ProbeUnavailable(f"ip {' '.join(argv)}: unreadable JSON ({err})") from None
    return data if isinstance(data, list) else []


def parse_prefix(text: str, *, host_route: bool = False) -> Network:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ActionRefused(f"{text!r} is not an IP address or prefix") from None
    if host_route and network.prefixlen != network.max_prefixlen:
        raise ActionRefused(f"{text}: an announcement is for one attacked address (/32 or /128)")
    if network.prefixlen < WIDEST[network.version]:
        raise ActionRefused(f"{network} is wider than /{WIDEST[network.version]}: it would cut off too much")
    return network


def _refuse_protected(network: Network,
                      protected: list[tuple[str, Network]]) -> None:
    for why, other in protected:
        if other.version == network.version and (network.overlaps(other)):
            raise ActionRefused(f"{network} covers {other} ({why}): not blackholed")


def _admit(active: dict[str, Mitigation], candidate: Mitigation, config: Config) -> None:
    if candidate.id not in active and len(active) >= config.mitigation_max:
        raise ActionRefused(f"{len(active)} mitigations are active, the cap (checks.net.mitigation_max) is "
                            f"{config.mitigation_max}: withdraw or let some expire first")


def _ttl(ttl: float | None, config: Config) -> float:
    value = config.mitigation_ttl if ttl is None else ttl
    if not 0 < value <= config.mitigation_max_ttl:
        raise ActionRefused(f"--ttl {value:g}: must be above 0 and at most {config.mitigation_max_ttl:g} s "
                            "(checks.net.mitigation_max_ttl)")
    return value


# -- blackhole routes ----------------------------------------------------------------------


def blackhole(host: Host, prefix: str, *, config: Config, store: MitigationStore, audit: AuditLog, apply: bool,
              ttl: float | None = None, reason: str = "", timeout: float = 30.0) -> Result:
    network = parse_prefix(prefix)
    seconds = _ttl(ttl, config)
    _refuse_protected(network, protected_networks(host, config, timeout))
    now = time.time()
    mitigation = Mitigation("blackhole", str(network), now, now + seconds, reason, apply)
    step = Step("net.blackhole", str(network), f"drop traffic to {network} (the flood's sources) for {seconds:g} s",
                ("ip", "route", "add", "blackhole", str(network)))
    with store.locked() as active:
        _admit(active, mitigation, config)
        previous = active.get(mitigation.id)
        if previous is not None and previous.applied:
            # already routed: only the expiry moves
            mitigation = Mitigation("blackhole", str(network), previous.created, mitigation.expires, reason, True)
            if apply:
                active[mitigation.id] = mitigation
                audit.record({"event": "mitigation.extend", **mitigation.to_json()})
            return Result(mitigation, (), apply)
        outcome = perform(host, [step], apply=apply, audit=audit, timeout=timeout)[0]
        if apply and outcome.ok:
            active[mitigation.id] = mitigation
            audit.record({"event": "mitigation.start", **mitigation.to_json()})
    return Result(mitigation, (" ".join(step.argv),), apply, _error(outcome))


def _error(outcome: Outcome) -> str | None:
    if outcome.ok:
        return None
    return outcome.error or outcome.output or f"exit status {outcome.returncode}"


# -- ExaBGP announcements ------------------------------------------------------------------


def announce_line(prefix: str, next_hop: str) -> str:
    return f"announce route {prefix} next-hop {next_hop} community [{BLACKHOLE_COMMUNITY}]"


def withdraw_line(prefix: str, next_hop: str) -> str:
    return f"withdraw route {prefix} next-hop {next_hop}"


def write_pipe(path: str, line: str) -> None:
    """One API command to the ExaBGP process reading the named pipe ``path``; never blocks."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise ProbeUnavailable(f"ExaBGP pipe {path}: {err.strerror}") from None
    if not stat.S_ISFIFO(mode):
        raise ProbeUnavailable(f"ExaBGP pipe {path}: not a named pipe")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.ENXIO:
            raise ProbeUnavailable(f"ExaBGP pipe {path}: no process is reading it (is ExaBGP running?)") from None
        raise ProbeUnavailable(f"ExaBGP pipe {path}: {err.strerror}") from None
    try:
        os.write(fd, (line + "\n").encode())  # below PIPE_BUF: written whole or not at all
    except OSError as err:
        raise ProbeUnavailable(f"ExaBGP pipe {path}: {err.strerror} (the reader is not keeping up)") from None
    finally:
        os.close(fd)


def announce(host: Host, address: str, *, config: Config, store: MitigationStore, audit: AuditLog, apply: bool,
             ttl: float | None = None, reason: str = "") -> Result:
    network = parse_prefix(address, host_route=True)
    seconds = _ttl(ttl, config)
    if config.exabgp_pipe is None:
        raise ActionRefused("no ExaBGP pipe configured (checks.net.exabgp_pipe)")
    if apply and host.is_snapshot:
        raise ActionRefused(f"{host.root} is a snapshot: nothing can be applied to it")
    now = time.time()
    mitigation = Mitigation("announce", str(network), now, now + seconds, reason, apply)
    line = announce_line(str(network), config.exabgp_next_hop)
    with store.locked() as active:
        _admit(active, mitigation, config)
        error = None
        if apply:
            try:
                write_pipe(config.exabgp_pipe, line)
            except HostagentError as err:
                error = str(err)
            audit.record({"event": "mitigation.start" if error is None else "mitigation.failed",
                          **mitigation.to_json(), "pipe": config.exabgp_pipe, "line": line, "error": error})
            if error is None:
                active[mitigation.id] = mitigation
    return Result(mitigation, (line,), apply, error)


# -- removal -------------------------------------------------------------------------------


def withdraw(host: Host, mitigation_id: str, *, config: Config, store: MitigationStore, audit: AuditLog,
             apply: bool, why: str = "withdrawn by hand", timeout: float = 30.0) -> Result:
    with store.locked() as active:
        mitigation = active.get(mitigation_id)
        if mitigation is None:
            known = ", ".join(active) or "none"
            raise HostagentError(f"no active mitigation {mitigation_id!r} (active: {known})")
        result = _remove(host, mitigation, config, audit, apply, why, timeout)
        if apply and result.error is None:
            del active[mitigation_id]
    return result


def expire(host: Host, *, config: Config, store: MitigationStore, audit: AuditLog, apply: bool,
           now: float | None = None, timeout: float = 30.0) -> list[Result]:
    """Remove every mitigation past its expiry; one that fails to go stays listed and is retried."""
    moment = time.time() if now is None else now
    if not store.path.exists():
        return []
    results = []
    with store.locked() as active:
        for mitigation in [m for m in active.values() if m.expires <= moment]:
            result = _remove(host, mitigation, config, audit, apply, "expired", timeout)
            if apply and result.error is None:
                del active[mitigation.id]
            results.append(result)
    return results


def _remove(host: Host, mitigation: Mitigation, config: Config, audit: AuditLog, apply: bool, why: str,
            timeout: float) -> Result:
    if mitigation.kind == "blackhole":
        step = Step("net.unblackhole", mitigation.prefix, f"remove the blackhole for {mitigation.prefix} ({why})",
                    ("ip", "route", "del", "blackhole", mitigation.prefix))
        outcome = perform(host, [step], apply=apply, audit=audit, timeout=timeout)[0]
        error = _error(outcome)
        if error and "No such process" in error:
            error = None  # already gone (removed by hand, or the host rebooted)
        result = Result(mitigation, (" ".join(step.argv),), apply, error)
    else:
        line = withdraw_line(mitigation.prefix, config.exabgp_next_hop)
        error = None
        if apply:
            try:
                if config.exabgp_pipe is None:
                    raise ActionRefused("no ExaBGP pipe configured (checks.net.exabgp_pipe)")
                write_pipe(config.exabgp_pipe, line)
            except HostagentError as err:
                error = str(err)
        result = Result(mitigation, (line,), apply, error)
    if apply:
        audit.record({"event": "mitigation.end" if result.error is None else "mitigation.end_failed",
                      **mitigation.to_json(), "why": why, "error": result.error})
    return result
