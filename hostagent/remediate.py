"""Automatic remedies: what ``hostagent check --act`` (and the daemon) does about findings.

Today that is the hung-member ladder under ``checks.hung.policy = "fail"``: waiting for a
human is the outage.  The outcome of every step goes into the finding's detail.
"""

from __future__ import annotations

import dataclasses

from hostagent.actions import AuditLog
from hostagent.actions.hung import force_fail
from hostagent.config import Config
from hostagent.errors import HostagentError
from hostagent.host import Host
from hostagent.model import CheckResult, Finding, Report


def act(host: Host, report: Report, config: Config, audit: AuditLog) -> Report:
    hung_config = config.checks.hung
    if hung_config.policy != "fail":
        return report
    hung = [f for f in report.findings if f.code == "disk.hung"]
    if not hung:
        return report
    hung_members = {f.subject.split("/", 1)[1] for f in report.findings if f.code.startswith("disk.hung")}
    replaced: dict[tuple[str, str], Finding] = {}
    for finding in hung:
        array, member = finding.subject.split("/", 1)
        try:
            outcomes, notes = force_fail(host, array, member, apply=True, audit=audit,
                                         timeout=config.agent.command_timeout, unblock_after=hung_config.unblock_after,
                                         hung_members=hung_members - {member})
            lines = [f"{'ok' if o.ok else 'FAILED'}: $ {' '.join(o.step.argv)}"
                     + (f" ({o.error or o.output})" if not o.ok else "") for o in outcomes] + notes
        except HostagentError as err:
            lines = [f"not forced out: {err}"]
        replaced[(finding.code, finding.subject)] = dataclasses.replace(
            finding, detail=finding.detail + "\nactions taken:\n" + "\n".join(f"  {line}" for line in lines))
    results = tuple(
        dataclasses.replace(r, findings=tuple(replaced.get((f.code, f.subject), f) for f in r.findings))
        if isinstance(r, CheckResult) else r
        for r in report.results
    )
    return dataclasses.replace(report, results=results)
