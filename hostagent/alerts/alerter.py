"""Glue: findings -> alert state -> spooled email, hook program and audit records.

The order that loses nothing: an alert's message is spooled durably (or, when the spool cannot be
written, held in memory and sent from there) and its hook run *before* the alert state records
it; a crash in between only means the alert is raised again, with the same Message-ID, so it is
delivered at least once and a receiver can drop the repeat.  Sending runs in the courier thread,
so checks and maintenance never wait on SMTP.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from email.message import EmailMessage
from pathlib import Path

from hostagent.actions import AuditLog
from hostagent.alerts import acks
from hostagent.alerts.delivery import (
    PermanentError,
    Refusals,
    Spool,
    SpoolEntry,
    TransientError,
    body,
    compose,
    recipients,
    run_hook,
    sender,
    severity_of,
    stable_message_id,
    subject_line,
)
from hostagent.alerts.settings import AlertsConfig
from hostagent.alerts.state import Alert, AlertRecord, Policy, step
from hostagent.errors import HostagentError
from hostagent.model import Finding, Severity
from hostagent.names import MAIL_ADDRESS
from hostagent.rpc import shown
from hostagent.state import StateStore

PREFIX = "alert."
RETRY_TICK = 15.0  # s between the courier's looks at the spool when nothing wakes it
log = logging.getLogger("hostagent")


def incidents(alerts: list[Alert]) -> list[list[Alert]]:
    """The alerts of one run, grouped so that one incident is one mail: an alert joins the alert of
    the same kind about its parent subject (``md0/sdb1``, a failed member, joins ``md0``, the
    degraded array it leaves; on the controller ``hv2/md0/sdb1`` joins ``hv2/md0``).  The worst comes
    first, names the mail and picks its recipients: routes take a minimum severity, so the worst
    alert's recipients include every lesser one's and nobody gets a second mail for the incident."""
    present = {(a.kind, a.record.subject) for a in alerts}

    def root(alert: Alert) -> str:
        parts = alert.record.subject.split("/")
        for end in range(1, len(parts)):  # the top-most parent alerted alongside
            if (alert.kind, "/".join(parts[:end])) in present:
                return "/".join(parts[:end])
        return alert.record.subject

    groups: dict[tuple[str, str], list[Alert]] = {}
    for alert in alerts:
        groups.setdefault((alert.kind, root(alert)), []).append(alert)
    return [sorted(group, key=lambda a: -severity_of(a.record.severity).rank) for group in groups.values()]


class Alerter:
    def __init__(self, config: AlertsConfig, state: StateStore, spool_dir: Path, hostname: str, audit: AuditLog,
                 evidence: Callable[[Finding], str] = lambda finding: "",
                 clock: Callable[[], float] = time.time) -> None:
        self.config, self.state, self.hostname, self.audit = config, state, hostname, audit
        self.spool = Spool(spool_dir)
        self.evidence, self.clock = evidence, clock
        self.last_errors: list[str] = []
        self._unspooled: dict[str, tuple[str, list[str], float]] = {}  # Message-ID -> (text, to, created)
        self._hooked: set[str] = set()  # Message-IDs whose hook ran in this process
        self._delivered: set[str] = set()  # Message-IDs sent from memory: never spooled again
        self._flush_lock = threading.Lock()  # one flush at a time; held while sending: never taken by process()
        self._memory_lock = threading.Lock()  # the two sets above, shared by process() and the courier
        self._courier: Courier | None = None

    @property
    def send(self) -> Callable[[str, list[str], float], Refusals]:
        return sender(self.config)  # the current config's: a reload takes effect at the next message

    def records(self) -> dict[str, AlertRecord]:
        return {key[len(PREFIX):]: AlertRecord.from_json(value)
                for key, value in self.state.items(PREFIX).items() if value is not None}

    def process(self, findings: Iterable[Finding], checks_that_ran: Iterable[str]) -> list[Alert]:
        """Advance the alert state with a run's findings, and spool what a human must hear; the state of
        an alert whose message could not be spooled is left as it was, so the next run raises it again."""
        now = self.clock()
        acknowledged = acks.active(self.state, now)
        policy = Policy(severity_of(self.config.min_severity), self.config.reminder_interval,
                        self.config.reminder_backoff, self.config.flap_window, self.config.flap_threshold,
                        frozenset(checks_that_ran), frozenset(acknowledged))
        before = self.records()
        after, alerts = step(before, findings, policy, now)
        for alert in alerts:  # a worse severity or the end of the problem ends its ack
            ack = acknowledged.get(alert.record.key)
            if ack is not None and alert.kind in ("escalated", "resolved", "new", "flapping"):
                acks.remove(self.state, ack.key)
                self._audit({"event": "ack-ended", "code": ack.code, "subject": ack.subject, "why": alert.kind,
                             "by": ack.by})
        unspooled = {alert.record.key for group in incidents(alerts)
                     if not self._queue(group, now, before) for alert in group}
        for key, record in after.items():
            if key not in unspooled and before.get(key) != record:
                self.state.put(PREFIX + key, record.to_json())
        self.wake()
        return alerts

    def _queue(self, group: list[Alert], now: float, before: dict[str, AlertRecord]) -> bool:
        """Spool one mail for the group (one incident) and run each alert's hook; False when the mail
        could not be spooled."""
        identity = [(a.record.key, a.kind, before[a.record.key].to_json() if a.record.key in before else None)
                    for a in group]
        message_id = stable_message_id(self.hostname, *(identity[0] if len(group) == 1 else identity))
        to = recipients(self.config, group[0])
        spooled = True
        if to:
            text = "\n".join(body(a, self.hostname, now, self.evidence(a.finding)) for a in group)
            subject = subject_line(group[0], self.hostname) + (f" (+{len(group) - 1} more)" if len(group) > 1 else "")
            spooled = self._spool(compose(self.config, subject, text, to, now, message_id), to, now)
        for alert in group:
            hook_id = f"{message_id}|{alert.record.key}"
            hook_error = None
            if self.config.hook and hook_id not in self._hooked:
                hook_error = run_hook(self.config.hook, alert, self.hostname, self.config.hook_timeout)
                if hook_error is None:
                    self._hooked.add(hook_id)
            self._audit({"event": "alert", "kind": alert.kind, "code": alert.record.code,
                         "subject": alert.record.subject, "severity": alert.record.severity, "to": to,
                         "message_id": message_id, "spooled": spooled, "hook_error": hook_error})
        return spooled

    def _spool(self, message: EmailMessage, to: list[str], now: float) -> bool:
        message_id = str(message["Message-ID"])
        with self._memory_lock:
            if message_id in self._delivered:  # raised again because its state could not be saved: it went out
                return True
        try:
            self.spool.add(message, to, now)
            with self._memory_lock:
                self._unspooled.pop(message_id, None)
            return True
        except OSError as err:  # a full or read-only disk: the courier sends it from memory meanwhile
            log.error("alert spool %s: %s; sending %s from memory", self.spool.directory, err.strerror or err,
                      message_id)
            with self._memory_lock:
                self._unspooled.setdefault(message_id, (message.as_string(), to, now))
            return False

    def _audit(self, event: dict[str, object]) -> None:
        try:
            self.audit.record(event)
        except HostagentError as err:  # the audit log shares the disk: its failure must not lose the alert
            log.error("%s", err)

    def mail(self, subject: str, text: str, to: list[str], kind: str) -> None:
        """Queue and send a message that is not an alert (maintenance notices and reports), audited."""
        now = self.clock()
        refused = [address for address in to if not MAIL_ADDRESS.fullmatch(address)]
        if refused:  # a mail header's boundary: an owner from a guest's metadata or a journal is only a name
            raise HostagentError(f"not a mail address: {', '.join(shown(a, 80) for a in refused)}")
        if to:
            self._spool(compose(self.config, subject, text, to, now), to, now)
        self._audit({"event": "mail", "kind": kind, "subject": subject, "to": to})
        self.wake()

    def operators(self) -> list[str]:
        """Every address on any route: who hears about maintenance reports."""
        found: list[str] = []
        for route in self.config.routes:
            found += [address for address in route.to if address not in found]
        return found

    # -- delivery --------------------------------------------------------------------------

    def start_courier(self) -> None:
        """Send from now on in a thread of its own (the daemons); without it each call sends inline."""
        if self._courier is None:
            self._courier = Courier(self)

    def stop_courier(self, wait: float = 5.0) -> None:
        if self._courier is not None:
            self._courier.stop(wait)
            self._courier = None

    def wake(self) -> None:
        if self._courier is not None:
            self._courier.wakeup.set()
        else:
            self.flush()

    def deadline(self) -> float:
        """The hard limit on one delivery attempt, however slowly the server answers."""
        return max(3 * self.config.smtp.timeout, 5.0)

    def flush(self) -> int:
        """Try every due message now; returns how many went out (to at least one recipient)."""
        with self._flush_lock:
            now = self.clock()
            sent, errors = 0, []
            with self._memory_lock:
                held = list(self._unspooled.items())
            for message_id, (text, to, _) in held:
                try:
                    refused = self.send(text, to, self.deadline())
                except (TransientError, PermanentError) as err:
                    errors.append(f"{message_id} (not spooled): {err}")
                    continue
                self._record_refusals(refused, to, now)
                with self._memory_lock:
                    self._unspooled.pop(message_id, None)
                    self._delivered.add(message_id)
                sent += len(refused) < len(to)
            for path in self.spool.paths():
                try:
                    entry = self.spool.load(path)
                except FileNotFoundError:
                    continue
                except (OSError, ValueError, RecursionError) as err:
                    errors.append(self._set_aside(path, "corrupt", f"unreadable spool entry: {err}"))
                    continue
                if entry.next_try > now:
                    continue
                result = self._deliver(entry, now)
                if isinstance(result, str):
                    errors.append(result)
                else:
                    sent += result
            self.last_errors = errors
            for error in errors:
                log.error("mail delivery failed: %s", error)
            return sent

    def _deliver(self, entry: SpoolEntry, now: float) -> int | str:
        """Send one entry: 1 if it reached a recipient, 0 if nobody took it, or the error text."""
        try:
            refused = self.send(entry.message, entry.to, self.deadline())
        except TransientError as err:
            return self._retry_later(entry, now, str(err))
        except PermanentError as err:
            return self._set_aside(entry.path, "failed", f"refused for good: {err} (to {', '.join(entry.to)}, "
                                                         f"{entry.message_id})")
        self._record_refusals(refused, entry.to, now)
        accepted = [address for address in entry.to if address not in refused]
        later = sorted(address for address, (code, _) in refused.items() if 400 <= code < 500)
        if later:  # the others have it: only the 4xx recipients are tried again
            entry.to = later
            self._retry_later(entry, now, "; ".join(f"{a}: {refused[a][0]} {refused[a][1]}" for a in later))
        else:
            entry.path.unlink(missing_ok=True)
        return 1 if accepted else 0

    def _retry_later(self, entry: SpoolEntry, now: float, error: str) -> str:
        entry.attempts += 1
        entry.next_try = now + min(self.config.retry_interval * 2 ** (entry.attempts - 1), 3600)
        entry.last_error = error
        try:
            self.spool.save(entry)
        except OSError as err:
            error += f"; and the retry could not be recorded: {err.strerror or err}"
        return error

    def _set_aside(self, path: Path, where: str, why: str) -> str:
        try:
            self.spool.set_aside(path, where, why)
        except OSError as err:
            return f"{path.name}: {why}; cannot move it to {where}/: {err.strerror or err}"
        log.error("alert spool: %s moved to %s/: %s", path.name, where, why)
        return f"{path.name}: {why}"

    def _record_refusals(self, refused: Refusals, to: list[str], now: float) -> None:
        """Recipients refused for good (5xx) are kept in refused-recipients until one takes a message again."""
        known = self.spool.refused()
        changed = False
        for address, (code, reply) in refused.items():
            if not 400 <= code < 500 and address not in known:
                known[address] = {"code": code, "reply": reply, "at": now}
                changed = True
                log.error("alert recipient %s refused for good: %d %s", address, code, reply)
        for address in to:
            if address not in refused and address in known:
                del known[address]
                changed = True
        if changed:
            try:
                self.spool.set_refused(known)
            except OSError as err:
                log.error("alert spool: cannot record refused recipients: %s", err.strerror or err)

    def refused(self) -> dict[str, dict[str, object]]:
        return self.spool.refused()

    def delivery_findings(self, check: str) -> list[Finding]:
        """What keeps mail from its readers, as findings of ``check`` (alerted through the routes that work)."""
        found = []
        spool = self.spool.directory
        for name, why in self.spool.set_aside_entries("corrupt"):
            found.append(Finding("alert.spool_corrupt", check, name, Severity.WARNING,
                                 f"alert spool entry {name} could not be read and was moved to {spool}/corrupt: "
                                 f"{why}", "Remove the file once its message has been looked at."))
        for name, why in self.spool.set_aside_entries("failed"):
            found.append(Finding("alert.undeliverable", check, name, Severity.CRITICAL,
                                 f"an alert mail was {why}; it is kept in {spool}/failed",
                                 "Fix the address or the server's policy, then remove the file."))
        for address, refusal in sorted(self.spool.refused().items()):
            found.append(Finding("alert.recipient_refused", check, address, Severity.CRITICAL,
                                 f"mail to {address} is refused for good: {refusal.get('code')} "
                                 f"{refusal.get('reply')}; alerts reach the other routes only"))
        if self._unspooled:
            found.append(Finding("alert.spool_unwritable", check, "spool", Severity.CRITICAL,
                                 f"{len(self._unspooled)} alert mail(s) could not be written to {spool} and are "
                                 "held in memory only: a restart before they are sent loses them"))
        return found

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
                refused = self.send(message.as_string(), list(route.to), self.deadline())
                results.append((route.to, "; ".join(f"{a} refused: {c} {r}" for a, (c, r) in refused.items())
                                or None))
            except (TransientError, PermanentError) as err:  # every route is tried and reported
                results.append((route.to, str(err)))
        return results


class Courier:
    """Sends the spool in its own thread: woken by each new message, and every RETRY_TICK for retries."""

    def __init__(self, alerter: Alerter) -> None:
        self.alerter = alerter
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="hostagent-courier", daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.wakeup.wait(min(RETRY_TICK, self.alerter.config.retry_interval))
            self.wakeup.clear()
            if self.stopping.is_set():
                return
            try:
                self.alerter.flush()
            except Exception as err:  # the courier never dies: the next tick tries again
                log.error("mail courier: %s: %s", type(err).__name__, err)

    def stop(self, wait: float) -> None:
        self.stopping.set()
        self.wakeup.set()
        self.thread.join(wait)
