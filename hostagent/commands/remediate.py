"""Automatic remedies: what ``hostagent check --act`` (and the daemon) does about findings.

- The hung-member ladder under ``checks.hung.policy = "fail"``: waiting for a human is the outage.
- Flood mitigations under ``checks.net.mitigate``: the blackhole routes and announcements of a
  CRITICAL ``net.syn_flood`` finding's remedy ("dry-run" only records what it would do), and the
  removal of expired ones whenever the net check ran.

The outcome of every step goes into the finding's detail.
"""

from __future__ import annotations

import logging

from hostagent.actions import AuditLog
from hostagent.actions.hung import force_fail
from hostagent.actions.net import MitigationStore, announce, blackhole, expire
from hostagent.config import Config
from hostagent.errors import HostagentError
from hostagent.host import Host
from hostagent.model import Finding, Report, Severity
from hostagent.records import replace

log = logging.getLogger("hostagent")


def act(host: Host, report: Report, config: Config, audit: AuditLog) -> Report:
    replaced = _fail_hung(host, report, config, audit)
    replaced.update(_mitigate(host, report, config, audit))
    if not replaced:
        return report
    results = tuple(
        replace(r, findings=tuple(replaced.get((f.code, f.subject), f) for f in r.findings))
        for r in report.results
    )
    return replace(report, results=results)


def _with_actions(finding: Finding, lines: list[str]) -> Finding:
    return replace(finding,
                               detail=finding.detail + "\nactions taken:\n" + "\n".join(f"  {line}" for line in lines))


def _fail_hung(host: Host, report: Report, config: Config, audit: AuditLog) -> dict[tuple[str, str], Finding]:
    hung_config = config.checks.hung
    hung = [f for f in report.findings if f.code == "disk.hung"]
    if hung_config.policy != "fail" or not hung:
        return {}
    hung_members = {f.subject.split("/", 1)[1] for f in report.findings if f.code.startswith("disk.hung")}
    replaced: dict[tuple[str, str], Finding] = {}
    for finding in hung:
        array, member = finding.subject.split("/", 1)
        log.warning("%s: forcing it out: %s", finding.subject, finding.summary)
        try:
            outcomes, notes = force_fail(host, array, member, apply=True, audit=audit,
                                         timeout=config.agent.command_timeout, unblock_after=hung_config.unblock_after,
                                         hung_members=hung_members - {member})
            lines = [f"{'ok' if o.ok else 'FAILED'}: $ {' '.join(o.step.argv)}"
                     + (f" ({o.error or o.output})" if not o.ok else "") for o in outcomes] + notes
        except HostagentError as err:
            lines = [f"not forced out: {err}"]
        log.warning("%s: %s", finding.subject, "; ".join(lines))
        replaced[(finding.code, finding.subject)] = _with_actions(finding, lines)
    return replaced


def expire_mitigations(host: Host, config: Config, audit: AuditLog) -> None:
    """Remove the mitigations past their expiry; whatever made them, and whatever ``act`` says."""
    if audit.path is None or host.is_snapshot:
        return
    try:
        results = expire(host, config=config.checks.net, store=MitigationStore(audit.path.parent), audit=audit,
                         apply=True, timeout=config.agent.command_timeout)
    except HostagentError as err:
        log.error("expired mitigations could not be removed: %s", err)
        return
    for result in results:
        if result.error:
            log.error("mitigation %s expired but could not be removed: %s", result.mitigation.id, result.error)


def _mitigate(host: Host, report: Report, config: Config, audit: AuditLog) -> dict[tuple[str, str], Finding]:
    net_config = config.checks.net
    if not any(r.name == "net" for r in report.results) or audit.path is None:
        return {}
    expire_mitigations(host, config, audit)
    store = MitigationStore(audit.path.parent)
    timeout = config.agent.command_timeout
    if net_config.mitigate == "off":
        return {}
    replaced: dict[tuple[str, str], Finding] = {}
    apply = net_config.mitigate == "apply"
    for finding in report.findings:
        if finding.code != "net.syn_flood" or finding.severity is not Severity.CRITICAL or finding.remedy is None:
            continue
        lines = []
        for argv in finding.remedy.commands:
            if argv[:3] not in (("hostagent", "net", "blackhole"), ("hostagent", "net", "announce")):
                continue
            target, reason = argv[3], f"automatic: {finding.summary}"
            try:
                if argv[2] == "blackhole":
                    done = blackhole(host, target, config=net_config, store=store, audit=audit, apply=apply,
                                     reason=reason, timeout=timeout)
                else:
                    done = announce(host, target, config=net_config, store=store, audit=audit, apply=apply,
                                    reason=reason)
                state = "dry run" if not apply else ("FAILED: " + done.error if done.error else "applied")
                lines += [f"{state}: {command}" for command in done.commands] or [f"{state}: {done.mitigation.id}"]
            except HostagentError as err:
                lines.append(f"not mitigated ({target}): {err}")
        if lines:
            log.warning("%s: %s", finding.subject, "; ".join(lines))
        replaced[(finding.code, finding.subject)] = _with_actions(finding, lines)
    return replaced
