"""Glue: findings -> alert state -> spooled email, hook program and audit records."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from hostagent.actions import AuditLog
from hostagent.alerts.delivery import (
    Spool,
    body,
    compose,
    recipients,
    run_hook,
    sender,
    severity_of,
    subject_line,
)
from hostagent.alerts.settings import AlertsConfig
from hostagent.alerts.state import Alert, AlertRecord, Policy, step
from hostagent.model import Finding
from hostagent.state import StateStore

PREFIX = "alert."


class Alerter:
    def __init__(self, config: AlertsConfig, state: StateStore, spool_dir: Path, hostname: str, audit: AuditLog,
                 evidence: Callable[[Finding], str] = lambda finding: "",
                 clock: Callable[[], float] = time.time) -> None:
        self.config, self.state, self.hostname, self.audit = config, state, hostname, audit
        self.spool = Spool(spool_dir)
        self.evidence, self.clock = evidence, clock
        self.send = sender(config)
        self.last_errors: list[str] = []

    def records(self) -> dict[str, AlertRecord]:
        return {key[len(PREFIX):]: AlertRecord.from_json(value)
                for key, value in self.state.items(PREFIX).items() if value is not None}

    def process(self, findings: Iterable[Finding], checks_that_ran: Iterable[str]) -> list[Alert]:
        """Advance the alert state with a run's findings, queue and send what a human must hear."""
        now = self.clock()
        policy = Policy(severity_of(self.config.min_severity), self.config.reminder_interval,
                        self.config.reminder_backoff, self.config.flap_window, self.config.flap_threshold,
                        frozenset(checks_that_ran))
        before = self.records()
        after, alerts = step(before, findings, policy, now)
        for key, record in after.items():
            if before.get(key) != record:
                self.state.put(PREFIX + key, record.to_json())
        for alert in alerts:
            self._queue(alert, now)
        self.flush()
        return alerts

    def _queue(self, alert: Alert, now: float) -> None:
        to = recipients(self.config, alert)
        if to:
            text = body(alert, self.hostname, now, self.evidence(alert.finding))
            self.spool.add(compose(self.config, subject_line(alert, self.hostname), text, to, now), to, now)
        hook_error = (run_hook(self.config.hook, alert, self.hostname, self.config.hook_timeout)
                      if self.config.hook else None)
        self.audit.record({"event": "alert", "kind": alert.kind, "code": alert.record.code,
                           "subject": alert.record.subject, "severity": alert.record.severity, "to": to,
                           "hook_error": hook_error})

    def mail(self, subject: str, text: str, to: list[str], kind: str) -> None:
        """Queue and send a message that is not an alert (maintenance notices and reports), audited."""
        now = self.clock()
        if to:
            self.spool.add(compose(self.config, subject, text, to, now), to, now)
        self.audit.record({"event": "mail", "kind": kind, "subject": subject, "to": to})
        self.flush()

    def operators(self) -> list[str]:
        """Every address on any route: who hears about maintenance reports."""
        found: list[str] = []
        for route in self.config.routes:
            found += [address for address in route.to if address not in found]
        return found

    def flush(self) -> int:
        sent, self.last_errors = self.spool.flush(self.send, self.clock())
        return sent

    def spool_age(self) -> float | None:
        return self.spool.oldest_age(self.clock())

    def test(self) -> list[tuple[tuple[str, ...], str | None]]:
        """Send a test message to every route now (mdadm's TestMessage); (route, error or None)."""
        results: list[tuple[tuple[str, ...], str | None]] = []
        now = self.clock()
        for route in self.config.routes:
            text = (f"This is a test message from hostagent on {self.hostname}.\n"
                    f"Route: {', '.join(route.to)} (severity {route.min_severity} and above).\n")
            message = compose(self.config, f"[hostagent] TEST alert route on {self.hostname}", text, list(route.to),
                              now)
            try:
                self.send(message.as_string(), list(route.to))
                results.append((route.to, None))
            except Exception as err:  # every route is tried and reported
                results.append((route.to, f"{type(err).__name__}: {err}"))
        return results
