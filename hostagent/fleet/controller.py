"""The fleet controller: ask every agent over SSH, keep what they say, and alert on what no agent
can report about itself (a host gone silent, an agent daemon that stopped).

A poll asks all hosts at once, ``concurrency`` at a time; each host costs at most its own
connect and command timeouts, so one hung or dead host never delays the others beyond that.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from hostagent.config import Config, FleetConfig
from hostagent.errors import HostagentError
from hostagent.fleet.inventory import FleetHost, load, select
from hostagent.fleet.store import FleetStore, HostState
from hostagent.fleet.transport import Transport, TransportError
from hostagent.model import Finding, Severity
from hostagent.records import record

RPC_SCHEMA = "hostagent.rpc/1"
AGENT_DOWN = "AGENT DOWN"
log = logging.getLogger("hostagent.fleet")


class ReplyError(HostagentError):
    """An agent answered, but not with a usable reply."""


class AgentDown(ReplyError):
    """The host answered, but its agent daemon does not: there is no current report."""

    def __init__(self, message: str, report_age: float | None) -> None:
        super().__init__(message)
        self.report_age = report_age


@record(frozen=True)
class PollResult:
    host: str
    ok: bool
    seconds: float
    reused: bool = False
    status: str | None = None
    error: str | None = None


MAX_DEPTH = 32  # a report nests about 8 deep; deeper is a broken or hostile agent
SEVERITIES = ("OK", "INFO", "WARNING", "UNKNOWN", "CRITICAL")


def decode_reply(host: str, stdout: str, exit_status: int) -> dict[str, Any]:
    """The JSON document of an rpc reply, or ReplyError saying what came instead.

    Whatever the host sent (nesting 100,000 deep, a 5,000-digit number, a list where an object
    belongs) ends here as that host's ReplyError, never as an exception that stops the poll.
    """
    text = stdout.strip()
    try:
        document = json.loads(text.splitlines()[-1] if text else "")
    except (json.JSONDecodeError, IndexError):
        shown = text[:80].replace("\n", " ") or "nothing"
        raise ReplyError(f"host {host}: garbage reply (exit {exit_status}): {shown!r}") from None
    except RecursionError:
        raise ReplyError(f"host {host}: reply nested deeper than {MAX_DEPTH} levels; dropped") from None
    except ValueError as err:  # e.g. an integer over Python's digit limit
        raise ReplyError(f"host {host}: unusable reply: {str(err)[:120]}") from None
    if depth(document) > MAX_DEPTH:
        raise ReplyError(f"host {host}: reply nested deeper than {MAX_DEPTH} levels; dropped")
    if not isinstance(document, dict) or document.get("schema") != RPC_SCHEMA:
        raise ReplyError(f"host {host}: reply is not {RPC_SCHEMA}: {text[:80]!r}")
    if not document.get("ok") and document.get("agent") == "not running":
        age = document.get("report_age_s")
        raise AgentDown(f"host {host}: {_text(document.get('error'))}",
                        float(age) if isinstance(age, (int, float)) and not isinstance(age, bool) else None)
    if not document.get("ok"):
        kind = "refused" if document.get("refused") else "failed"
        raise ReplyError(f"host {host}: request {kind}: {_text(document.get('error'))}")
    return document


def depth(document: Any) -> int:
    """How deep lists and objects nest (iteratively: a deep document cannot exhaust the stack)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _text(value: Any, limit: int = 200) -> str:
    return str(value)[:limit]


def checked_report(host: str, document: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(result, report) of a ``report`` reply, checked field by field: ReplyError names the first bad one."""
    result = document.get("result")
    if not isinstance(result, dict):
        raise ReplyError(f"host {host}: reply without a result object")
    report = result.get("report")
    if not isinstance(report, dict):
        raise ReplyError(f"host {host}: result.report is {type(report).__name__}, not an object")
    if report.get("status") not in SEVERITIES:
        raise ReplyError(f"host {host}: result.report.status {_text(report.get('status'), 40)!r} is not one of "
                         f"{', '.join(SEVERITIES)}")
    findings = report.get("findings", [])
    if not isinstance(findings, list):
        raise ReplyError(f"host {host}: result.report.findings is {type(findings).__name__}, not a list")
    for index, finding in enumerate(findings):
        where = f"result.report.findings[{index}]"
        if not isinstance(finding, dict):
            raise ReplyError(f"host {host}: {where} is {type(finding).__name__}, not an object")
        for key in ("code", "subject", "summary"):
            if not isinstance(finding.get(key), str):
                raise ReplyError(f"host {host}: {where}.{key} is not a string")
        if finding.get("severity") not in SEVERITIES:
            raise ReplyError(f"host {host}: {where}.severity {_text(finding.get('severity'), 40)!r} is not one of "
                             f"{', '.join(SEVERITIES)}")
    for key in ("maintenance", "daemon"):
        if result.get(key) is not None and not isinstance(result.get(key), dict):
            raise ReplyError(f"host {host}: result.{key} is {type(result.get(key)).__name__}, not an object")
    daemon = result.get("daemon") or {}
    cycle = daemon.get("last_cycle_at")
    if cycle is not None and (isinstance(cycle, bool) or not isinstance(cycle, (int, float))):
        raise ReplyError(f"host {host}: result.daemon.last_cycle_at is not a number")
    return result, report


class Controller:
    def __init__(self, config: Config, *, accept_new: bool = False, limit: Iterable[str] = ()) -> None:
        self.config = config
        self.fleet: FleetConfig = config.fleet
        self.directory = Path(self.fleet.state_dir)
        self.store = FleetStore(self.directory)
        self.hosts = select(load(self.fleet.inventory), list(limit) or list(self.fleet.limit))
        self.transport = Transport(self.fleet.key, self.fleet.known_hosts, accept_new=accept_new,
                                   connect_timeout=self.fleet.connect_timeout,
                                   command_timeout=self.fleet.command_timeout, keepalive=self.fleet.keepalive,
                                   default_user=self.fleet.user)

    def ask(self, host: FleetHost, request: str) -> tuple[dict[str, Any], float, bool]:
        answer = self.transport.run(host, request)
        return decode_reply(host.name, answer.stdout, answer.exit_status), answer.seconds, answer.reused

    def poll(self, hosts: list[FleetHost] | None = None) -> list[PollResult]:
        """Ask every host for its report and store the answers (or why there was none)."""
        chosen = self.hosts if hosts is None else hosts
        budget = 2 * self.fleet.connect_timeout + 2 * self.fleet.command_timeout + 5  # one reconnect included
        results: dict[str, PollResult] = {}

        def one(host: FleetHost) -> PollResult:
            at = time.time()
            try:
                return ask_and_store(host, at)
            except Exception as err:  # even the store failing for one host never ends the poll
                error = f"host {host.name}: {type(err).__name__}: {_text(err)}"
                log.error("%s", error)
                return PollResult(host.name, False, time.time() - at, error=error)

        def ask_and_store(host: FleetHost, at: float) -> PollResult:
            try:
                document, seconds, reused = self.ask(host, "report")
                result, report = checked_report(host.name, document)
                self.store.record_success(host.name, host.address, host.groups, at, seconds,
                                          str(result.get("version")), report,
                                          {"maintenance": result.get("maintenance"), "daemon": result.get("daemon")})
                return PollResult(host.name, True, seconds, reused, str(report.get("status")))
            except AgentDown as err:  # reachable, but nothing on it is watched: never shown as healthy
                before = next((s.maintenance for s in self.store.hosts() if s.name == host.name), None) or {}
                self.store.record_success(host.name, host.address, host.groups, at, time.time() - at, "",
                                          {"status": AGENT_DOWN, "findings": []},
                                          {"maintenance": before.get("maintenance"), "daemon": None,
                                           "agent": "not running", "report_age_s": err.report_age,
                                           "error": str(err)})
                return PollResult(host.name, True, time.time() - at, status=AGENT_DOWN, error=str(err))
            except (TransportError, ReplyError) as err:
                self.store.record_failure(host.name, host.address, host.groups, at, str(err))
                return PollResult(host.name, False, time.time() - at, error=str(err))
            except Exception as err:  # one host's reply, however odd, is that host's error alone
                error = f"host {host.name}: unusable reply: {type(err).__name__}: {_text(err)}"
                log.error("%s", error)
                self.store.record_failure(host.name, host.address, host.groups, at, error)
                return PollResult(host.name, False, time.time() - at, error=error)

        pool = ThreadPoolExecutor(max_workers=max(self.fleet.concurrency, 1))
        futures = {pool.submit(one, host): host for host in chosen}
        done, late = wait(futures, timeout=budget + len(chosen) / max(self.fleet.concurrency, 1) * budget)
        for future in done:
            results[futures[future].name] = future.result()
        for future in late:  # cannot happen with paramiko's timeouts; recorded rather than waited for
            host = futures[future]
            error = f"host {host.name}: no answer within the poll's budget"
            self.store.record_failure(host.name, host.address, host.groups, time.time(), error)
            results[host.name] = PollResult(host.name, False, budget, error=error)
        pool.shutdown(wait=False)
        self.store.forget({h.name for h in self.store.hosts()} - {h.name for h in self.hosts})
        self.store.prune(time.time() - self.fleet.retention_days * 86400)
        return [results[h.name] for h in chosen]

    def close(self) -> None:
        self.transport.close()


def announced_maintenance(state: HostState) -> dict[str, Any] | None:
    """The maintenance the host last reported as not finished (its journal row), if any."""
    maintenance = (state.maintenance or {}).get("maintenance")
    active = maintenance.get("active") if isinstance(maintenance, dict) else None
    return active if isinstance(active, dict) else None


def maintenance_window(state: HostState, now: float, fleet: FleetConfig) -> tuple[str, float] | None:
    """("in", end) while the host is inside its announced maintenance window (its reboot time plus
    ``fleet.maintenance_window``), ("over", end) once that has passed with the maintenance not over."""
    active = announced_maintenance(state)
    if active is None:
        return None
    try:
        start = dt.datetime.fromisoformat(str(active["reboot_at_utc"])).timestamp()
    except (KeyError, ValueError, TypeError):
        return None
    if now < start:
        return None
    end = start + fleet.maintenance_window
    return ("in", end) if now <= end else ("over", end)


def fleet_findings(states: list[HostState], now: float, fleet: FleetConfig) -> list[Finding]:
    """What the controller alerts on: silent hosts, stopped agent daemons, and (when it is the
    controller's job, ``fleet.host_findings``) the hosts' own CRITICAL findings.  A host inside its
    announced maintenance window is expected to be silent; one not back by its end is paged."""
    found: list[Finding] = []
    for state in states:
        try:
            found += _host_findings(state, now, fleet)
        except Exception as err:  # a stored row of the wrong shape is that host's problem alone
            found.append(Finding("fleet.unreadable_state", "fleet", state.name, Severity.CRITICAL,
                                 f"{state.name}: its stored state cannot be read "
                                 f"({type(err).__name__}: {_text(err)}); poll it again"))
    return found


def _host_findings(state: HostState, now: float, fleet: FleetConfig) -> list[Finding]:
    found: list[Finding] = []
    seen = f"last seen {_ago(now - state.last_seen)}" if state.last_seen else "never seen"
    window = maintenance_window(state, now, fleet)
    if window is not None:
        active = announced_maintenance(state) or {}
        if window[0] == "over":
            found.append(Finding("fleet.maintenance_overrun", "fleet", state.name, Severity.CRITICAL,
                                 f"{state.name} is not back from maintenance {active.get('id')} "
                                 f"({active.get('phase')} when {seen}); its window ended "
                                 f"{_ago(now - window[1])}"))
        return found  # in the window: silence and a stopped daemon are the maintenance itself
    if state.last_error and (state.last_seen is None or (state.last_attempt or 0) > state.last_seen):
        found.append(Finding("fleet.unreachable", "fleet", state.name, Severity.CRITICAL,
                             f"{state.name} cannot be polled: {state.last_error} ({seen})"))
    elif state.last_seen is not None and now - state.last_seen > fleet.stale_after:
        found.append(Finding("fleet.stale", "fleet", state.name, Severity.CRITICAL,
                             f"no report from {state.name}: last seen {_ago(now - state.last_seen)}"))
    daemon = (state.maintenance or {}).get("daemon")
    if state.last_seen is not None and not state.last_error:
        last_cycle = (daemon or {}).get("last_cycle_at")
        down = (state.maintenance or {}).get("agent") == "not running"
        if down or last_cycle is None or state.last_seen - float(last_cycle) > fleet.stale_after:
            report_age = (state.maintenance or {}).get("report_age_s")
            age = ("not running, " + ("no report since the host booted" if report_age is None
                                      else f"last report {_ago(float(report_age))}") if down
                   else "never ran" if last_cycle is None
                   else f"last ran {_ago(state.last_seen - float(last_cycle))}")
            found.append(Finding("fleet.agent_stale", "fleet", state.name, Severity.CRITICAL,
                                 f"the hostagent daemon on {state.name} is not running its checks ({age}): "
                                 "nothing on that host is being watched"))
    if fleet.host_findings in ("controller", "both"):
        for item in state.findings:
            if item.get("severity") == "CRITICAL":
                found.append(Finding(str(item.get("code")), "fleet", f"{state.name}/{item.get('subject')}",
                                     Severity.CRITICAL, f"{state.name}: {item.get('summary')}"))
    return found


def _ago(seconds: float) -> str:
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def status_rows(states: list[HostState], now: float, fleet: FleetConfig | None = None) -> list[dict[str, Any]]:
    """One row per host; a row that cannot be built from what the host left in the store is shown
    as UNKNOWN with the reason, and the other rows are built as usual."""
    rows = []
    for state in states:
        try:
            rows.append(_row(state, now, fleet))
        except Exception as err:
            log.error("host %s: cannot show its stored state: %s: %s", state.name, type(err).__name__, _text(err))
            rows.append({"host": state.name, "address": state.address, "groups": list(state.groups),
                         "status": "UNKNOWN", "reachable": False, "open_findings": 0, "findings": [],
                         "last_seen": None, "last_seen_ago": "unknown", "version": None,
                         "error": f"stored state unusable: {type(err).__name__}: {_text(err)}",
                         "maintenance": None})
    return rows


def _row(state: HostState, now: float, fleet: FleetConfig | None) -> dict[str, Any]:
    reachable = not (state.last_error and (state.last_seen is None or (state.last_attempt or 0) > state.last_seen))
    active = announced_maintenance(state)
    window = maintenance_window(state, now, fleet) if fleet is not None else None
    status = state.status if reachable else "UNREACHABLE"
    if window is not None:
        status = "MAINTENANCE" if window[0] == "in" else "MAINTENANCE OVERRUN"
    return {"host": state.name, "address": state.address, "groups": list(state.groups),
            "status": status, "reachable": reachable,
            "open_findings": len([f for f in state.findings if f.get("severity") not in ("OK", "INFO")]),
            "findings": state.findings, "last_seen": state.last_seen,
            "last_seen_ago": _ago(now - state.last_seen) if state.last_seen else "never",
            "version": state.version, "error": state.last_error if not reachable else None,
            "maintenance": active, "last_known_status": state.status, "last_attempt": state.last_attempt}


def render_status(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'host':<20} {'status':<12} {'open':>4}  {'last seen':<14} {'version':<8} maintenance / error"]
    for row in rows:
        extra = row["error"] or (f"{row['maintenance'].get('phase')} {row['maintenance'].get('reboot_at')}"
                                 if row["maintenance"] else "")
        lines.append(f"{row['host']:<20} {row['status'] or '-':<12} {row['open_findings']:>4}  "
                     f"{row['last_seen_ago']:<14} {row['version'] or '-':<8} {extra}")
    return "\n".join(lines) + "\n"
