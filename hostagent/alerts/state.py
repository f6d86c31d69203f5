"""Which findings become messages: new, escalated, reminder, resolved, flapping (pure).

State per (code, subject) lives in the state store, so a restart neither repeats nor loses
an alert; problems that exist at the first start are new, so nothing starts silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hostagent.model import Finding, Severity
from hostagent.records import field, record, replace

KINDS = ("new", "escalated", "reminder", "resolved", "flapping")


@record(frozen=True)
class AlertRecord:
    code: str
    subject: str
    check: str
    severity: str
    summary: str
    status: str  # "open" or "resolved"
    first_seen: float
    last_seen: float
    next_reminder: float
    reminder_interval: float
    resolved_at: float | None = None
    reopenings: tuple[float, ...] = ()
    flapping: bool = False
    seq: int = 0  # the outbox event that last changed it (hostagent.alerts.outbox): a newer event wins
    thread: str | None = None  # the Message-ID of the incident's first mail: later mails reply to it

    @property
    def key(self) -> str:
        return f"{self.code}|{self.subject}"

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "reopenings": list(self.reopenings)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AlertRecord:
        known = {k: v for k, v in data.items() if k in _FIELDS}  # a newer agent's extra field is not fatal
        return cls(**{**known, "reopenings": tuple(data.get("reopenings", ()))})


_FIELDS = frozenset(("code", "subject", "check", "severity", "summary", "status", "first_seen", "last_seen",
                     "next_reminder", "reminder_interval", "resolved_at", "reopenings", "flapping", "seq", "thread"))


@record(frozen=True)
class Alert:
    kind: str
    finding: Finding
    record: AlertRecord
    note: str = ""


@record(frozen=True)
class Policy:
    min_severity: Severity = Severity.WARNING
    reminder_interval: float = 86400.0
    reminder_backoff: float = 1.0  # 2.0: each reminder waits twice as long as the last
    flap_window: float = 3600.0
    flap_threshold: int = 3
    checks_that_ran: frozenset[str] = field(default_factory=frozenset)
    acknowledged: frozenset[str] = frozenset()  # keys whose reminders an operator has silenced


def alertable(finding: Finding, policy: Policy) -> bool:
    return finding.severity.rank >= policy.min_severity.rank


def step(records: dict[str, AlertRecord], findings: Iterable[Finding], policy: Policy,
         now: float) -> tuple[dict[str, AlertRecord], list[Alert]]:
    """Advance the state with one run's findings; only checks that ran can resolve anything.

    A problem that comes back ``flap_threshold`` times within ``flap_window`` is flapping:
    one "flapping" message, then silence until it has stayed open or resolved for a whole
    window, when one message says how it settled.
    """
    updated = dict(records)
    alerts: list[Alert] = []
    seen = set()
    for finding in findings:
        if not alertable(finding, policy):
            continue
        key = f"{finding.code}|{finding.subject}"
        seen.add(key)
        record = updated.get(key)
        if record is None or record.status == "resolved":
            updated[key], alert = _open(record, finding, policy, now)
            if alert is not None:
                alerts.append(alert)
            continue
        current = replace(record, last_seen=now, summary=finding.summary)
        if record.flapping:
            if now - max(record.reopenings, default=now) > policy.flap_window:
                current = replace(current, flapping=False, reopenings=(), next_reminder=now + policy.reminder_interval)
                alerts.append(Alert("new", finding, current, f"settled after flapping: still {finding.severity.name}"))
        elif Severity[finding.severity.name].rank > Severity[record.severity].rank:
            current = replace(current, severity=finding.severity.name, next_reminder=now + policy.reminder_interval,
                              reminder_interval=policy.reminder_interval)
            alerts.append(Alert("escalated", finding, current, f"was {record.severity}"))
        elif now >= record.next_reminder and key not in policy.acknowledged:
            interval = record.reminder_interval * policy.reminder_backoff
            current = replace(current, next_reminder=now + interval, reminder_interval=interval)
            alerts.append(Alert("reminder", finding, current, f"open for {(now - record.first_seen) / 3600:.1f} h"))
        updated[key] = replace(current, severity=finding.severity.name)
    for key, record in records.items():
        if key in seen or record.check not in policy.checks_that_ran:
            continue
        gone = Finding(record.code, record.check, record.subject, Severity.OK, f"resolved: {record.summary}")
        if record.status == "open":
            resolved = replace(record, status="resolved", resolved_at=now)
            updated[key] = resolved
            if not record.flapping:
                alerts.append(Alert("resolved", gone, resolved))
        elif record.flapping and record.resolved_at is not None and now - record.resolved_at > policy.flap_window:
            updated[key] = replace(record, flapping=False, reopenings=())
            alerts.append(Alert("resolved", gone, updated[key], "settled after flapping"))
    return updated, alerts


def _open(record: AlertRecord | None, finding: Finding, policy: Policy,
          now: float) -> tuple[AlertRecord, Alert | None]:
    reopenings: tuple[float, ...] = ()
    if record is not None:
        reopenings = (*(t for t in record.reopenings if now - t <= policy.flap_window), now)
    flapping = len(reopenings) >= policy.flap_threshold
    fresh = AlertRecord(finding.code, finding.subject, finding.check, finding.severity.name, finding.summary, "open",
                        now, now, now + policy.reminder_interval,
                        policy.reminder_interval, None, reopenings, flapping,
                        record.seq if record is not None else 0, record.thread if record is not None else None)
    if flapping and record is not None and record.flapping:
        return fresh, None
    if flapping:
        return fresh, Alert("flapping", finding, fresh,
                            f"it came back {len(reopenings)} times within {policy.flap_window / 60:.0f} min; "
                            "changes are not mailed until it settles")
    return fresh, Alert("new", finding, fresh)
