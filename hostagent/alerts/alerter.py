"""Glue: findings -> alert state -> the outbox -> SMTP, the hook program and audit records.

The outbox (``hostagent.alerts.outbox``) is the single source of truth (docs/alerts.md, "Delivery"):
each alert event is composed with a Message-ID that names it (the same event always gets the same
one), written durably to the outbox before anything else records it, and moved into ``sent/`` when a
server accepts it.  An event already in the outbox is never added again, so the same event is never
mailed twice, whatever the state database could record; and the alert state is derived from the
outbox (each key's newest event wins over an older record in the database), so a state database that
is deleted, locked or cannot be written neither repeats nor loses an alert.

When the outbox itself cannot be written, the event is held in memory and sent from there (a restart
before it is sent loses it: ``alert.spool_unwritable`` says so); its alerts are then not committed to
the state, so a restart raises them again.

Retries and the outbox's age run on CLOCK_BOOTTIME, not the wall clock: a clock stepped back (NTP at
boot) neither holds a retry back nor makes the outbox look young.  Each entry is tried on its own: one
that cannot be encoded or sent for a reason of its own is moved aside and alerted through the routes
that work, and never holds up the entries behind it.  Sending runs in the courier thread, so checks
and maintenance never wait on SMTP.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hostagent.actions import AuditLog
from hostagent.alerts import acks
from hostagent.alerts.delivery import (
    PermanentError,
    Refusals,
    TransientError,
    body,
    compose,
    one_line,
    recipients,
    run_hook,
    sender,
    severity_of,
    stable_message_id,
    subject_line,
)
from hostagent.alerts.outbox import CORRUPT, FAILED, Entry, Outbox
from hostagent.alerts.settings import AlertsConfig, silence
from hostagent.alerts.state import Alert, AlertRecord, Policy, step
from hostagent.errors import HostagentError
from hostagent.model import Finding, Severity
from hostagent.names import MAIL_ADDRESS
from hostagent.records import replace
from hostagent.rpc import shown
from hostagent.state import StateStore

PREFIX = "alert."
RETRY_TICK = 15.0  # s between the courier's looks at the outbox when nothing wakes it
RETRY_MAX = 3600.0  # the longest wait between two tries of one entry
SENT_KEEP = 7 * 86400.0  # how long a sent entry proves that its event went out (docs/alerts.md)
PRUNE_EVERY = 3600.0
log = logging.getLogger("hostagent")


def boottime() -> float:
    """Seconds since boot, suspend included (CLOCK_BOOTTIME): one clock for every process of a boot."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read(64).strip()
    except OSError:
        return ""


class LogOnce:
    """An error logged once per cause (a place and an errno or a kind), not once per message text:
    texts that carry a temporary file's random name never match.  A cause is logged again once its
    place has run clean (``clear``)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.active: set[tuple[str, str]] = set()
        self.lock = threading.Lock()

    def error(self, place: str, err: BaseException | str, text: str) -> None:
        cause = (place, _cause(err))
        with self.lock:
            if cause in self.active:
                return
            self.active.add(cause)
        self.logger.error("%s", text)

    def clear(self, place: str) -> None:
        with self.lock:
            if any(p == place for p, _ in self.active):
                self.active = {cause for cause in self.active if cause[0] != place}
                self.logger.info("%s: works again", place)


def _cause(err: BaseException | str) -> str:
    if isinstance(err, str):
        return err
    number = getattr(err, "errno", None)
    return f"{type(err).__name__}:{errno.errorcode.get(number, number) if number else ''}"


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
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = boottime,
                 boot: Callable[[], str] = boot_id) -> None:
        self.config, self.state, self.audit = config, state, audit
        self.hostname = one_line(hostname, 253) or "unknown"  # shown in subjects and texts; ASCII in IDs
        self.outbox = Outbox(spool_dir)
        self.evidence, self.clock, self.monotonic, self.boot = evidence, clock, monotonic, boot
        self.last_errors: list[str] = []
        self.once = LogOnce(log)
        self._memory: dict[str, Entry] = {}  # Message-ID -> an event the outbox could not take
        self._accepted: set[str] = set()  # Message-IDs a server accepted whose sent record is not written yet
        self._unrecorded: dict[str, Entry] = {}  # sent from memory, its sent record not yet written
        self._volatile: dict[str, str] = {}  # alert key -> the Message-ID of its newest event, in memory only
        self._outbox_error: str | None = None  # the last outbox write's failure, until one succeeds
        self._given_up: dict[str, tuple[Entry, str]] = {}  # refused for good while the outbox could not take it
        self._next_try: dict[str, float] = {}  # Message-ID -> the monotonic time of its next try
        self._first_seen: dict[str, float] = {}  # Message-ID -> when this process first saw it (monotonic)
        self._latest: dict[str, tuple[int, dict[str, Any]]] | None = None  # key -> newest event's record
        self._seq = 0
        self._hooked: set[str] = set()  # Message-IDs whose hook ran in this process
        self._pruned = -PRUNE_EVERY
        self._last_try = -float("inf")  # when a send was last tried (monotonic): the probe's clock
        self._flush_lock = threading.Lock()  # one flush at a time; held while sending: never taken by process()
        self._memory_lock = threading.Lock()  # the maps above, shared by process() and the courier
        self._courier: Courier | None = None

    @property
    def send(self) -> Callable[[str, list[str], float], Refusals]:
        return sender(self.config)  # the current config's: a reload takes effect at the next message

    # -- the alert state, derived from the outbox ----------------------------------------------------

    def _outbox_records(self) -> dict[str, tuple[int, dict[str, Any]]]:
        if self._latest is None:
            try:
                latest, top = self.outbox.latest_records()
            except OSError as err:
                self.once.error("outbox", err, f"alert spool {self.outbox.directory}: cannot read it: "
                                               f"{err.strerror or err}")
                latest, top = {}, 0
            self._latest = latest
            self._seq = max(self._seq, top)
        return self._latest

    def records(self) -> dict[str, AlertRecord]:
        """Each alert's record: the state database's, unless the outbox holds a newer event for it."""
        found: dict[str, AlertRecord] = {}
        try:
            stored = self.state.items(PREFIX)
            self.once.clear("state")
        except (sqlite3.Error, OSError, ValueError) as err:
            self.once.error("state", err, f"alert state: cannot read it ({err}); the alert outbox stands in")
            stored = {}
        for key, value in stored.items():
            with contextlib.suppress(TypeError, ValueError, KeyError):
                found[key[len(PREFIX):]] = AlertRecord.from_json(value)
        with self._memory_lock:
            latest = dict(self._outbox_records())
        for key, (seq, data) in latest.items():
            current = found.get(key)
            if current is None or current.seq < seq:
                with contextlib.suppress(TypeError, ValueError, KeyError):
                    found[key] = AlertRecord.from_json(data)
        self._seq = max([self._seq, *(r.seq for r in found.values())])
        return found

    def process(self, findings: Iterable[Finding], checks_that_ran: Iterable[str]) -> list[Alert]:
        """Advance the alert state with a run's findings and put each incident's mail in the outbox.
        Never raises for the state database: the outbox holds each event, and the state follows it."""
        now = self.clock()
        try:
            acknowledged = acks.active(self.state, now)
        except (sqlite3.Error, OSError, ValueError) as err:
            self.once.error("state", err, f"alert state: cannot read the acks ({err})")
            acknowledged = {}
        policy = Policy(severity_of(self.config.min_severity), self.config.reminder_interval,
                        self.config.reminder_backoff, self.config.flap_window, self.config.flap_threshold,
                        frozenset(checks_that_ran), frozenset(acknowledged))
        before = self.records()
        after, alerts = step(before, findings, policy, now)
        for alert in alerts:  # a worse severity or the end of the problem ends its ack
            ack = acknowledged.get(alert.record.key)
            if ack is not None and alert.kind in ("escalated", "resolved", "new", "flapping"):
                with contextlib.suppress(sqlite3.Error, OSError):
                    acks.remove(self.state, ack.key)
                self._audit({"event": "ack-ended", "code": ack.code, "subject": ack.subject, "why": alert.kind,
                             "by": ack.by})
        held: set[str] = set()
        for group in incidents(alerts):
            try:
                queued = self._queue(group, now, before, after)
            except Exception as err:  # one incident's own fault (its text, its hook): the others go on
                self.once.error("queue", err, f"alert {group[0].record.key}: cannot be queued: "
                                              f"{type(err).__name__}: {one_line(str(err), 300)}")
                queued = False
            if not queued:
                held |= {alert.record.key for alert in group}
        self._commit(before, after, held)
        self.wake()
        return alerts

    def _commit(self, before: dict[str, AlertRecord], after: dict[str, AlertRecord], held: set[str]) -> None:
        """The state database follows: each changed record is written, except those of events only held
        in memory (a restart then raises them again).  A failure is logged once per cause."""
        with self._memory_lock:
            held = held | set(self._volatile)  # an event only in memory: a restart must raise it again
        for key, record in after.items():
            if key in held or before.get(key) == record:
                continue
            try:
                self.state.put(PREFIX + key, record.to_json())
                self.once.clear("state")
            except UnicodeError as err:  # this record's own text (a lone surrogate): the outbox holds it
                self.once.error("state", err, f"alert state: cannot store {one_line(key, 200)}: {err}")
                continue
            except (sqlite3.Error, OSError) as err:
                self.once.error("state", err, f"alert state: cannot write it ({err}); the alert outbox holds "
                                              "what was alerted")
                return

    def _queue(self, group: list[Alert], now: float, before: dict[str, AlertRecord],
               after: dict[str, AlertRecord]) -> bool:
        """Put one mail for the group (one incident) in the outbox and run each alert's hook; False when
        the event could only be held in memory."""
        identity = [(a.record.key, a.kind, before[a.record.key].to_json() if a.record.key in before else None)
                    for a in group]
        message_id = stable_message_id(self.hostname, *(identity[0] if len(group) == 1 else identity))
        worst = group[0]
        previous = before.get(worst.record.key)
        opens = worst.kind in ("new", "flapping") or previous is None or previous.status != "open"
        thread = message_id if opens or not previous or not previous.thread else previous.thread
        with self._memory_lock:
            self._outbox_records()
            self._seq += 1
            seq = self._seq
        for alert in group:
            key = alert.record.key
            own = before.get(key)
            own_thread = thread if alert is worst else (
                message_id if alert.kind in ("new", "flapping") or own is None or not own.thread else own.thread)
            after[key] = replace(after[key], seq=seq, thread=own_thread)
        to = recipients(self.config, worst)
        text = "\n".join(body(a, self.hostname, now, self.evidence(a.finding)) for a in group)
        subject = subject_line(worst, self.hostname) + (f" (+{len(group) - 1} more)" if len(group) > 1 else "")
        message = compose(self.config, subject, text, to, now, message_id,
                          None if thread == message_id else thread)
        # for mail filters and tickets: each alert's kind, code and subject, machine-readable
        message["X-Hostagent-Alerts"] = one_line(", ".join(f"{a.kind} {a.record.code} {a.record.subject}"
                                                            for a in group), 2000)
        entry = Entry(Path(), message.as_string(), to, now, message_id, subject, 0, None, self.boot(),
                      self.monotonic(), seq, {a.record.key: after[a.record.key].to_json() for a in group})
        durable = self._add(entry)
        for alert in group:
            hook_id = f"{message_id}|{alert.record.key}"
            hook_error = None
            if self.config.hook and hook_id not in self._hooked:
                hook_error = run_hook(self.config.hook, alert, self.hostname, self.config.hook_timeout)
                if hook_error is None:
                    self._hooked.add(hook_id)
            self._audit({"event": "alert", "kind": alert.kind, "code": alert.record.code,
                         "subject": alert.record.subject, "severity": alert.record.severity, "to": to,
                         "message_id": message_id, "spooled": durable, "hook_error": hook_error})
        return durable

    def _add(self, entry: Entry) -> bool:
        """The event into the outbox (True, also when it was there already), or held in memory (False)."""
        with self._memory_lock:
            latest = self._outbox_records()
            for key, data in entry.records.items():
                if key not in latest or latest[key][0] < entry.seq:
                    latest[key] = (entry.seq, data)
            if entry.message_id in self._unrecorded:
                return True
            if entry.message_id in self._memory:
                return False
        try:
            self.outbox.add(entry)
            self.once.clear("outbox")
            self._outbox_error = None
            if self._courier is not None:  # the courier sends while the hooks, the audit and the state go on
                self._courier.wakeup.set()
            return True
        except OSError as err:  # a full or read-only disk: the courier sends it from memory meanwhile
            self.once.error("outbox", err, f"alert spool {self.outbox.directory}: {err.strerror or err}; "
                                           "sending from memory until it can be written")
            self._outbox_error = str(err.strerror or err)
            with self._memory_lock:
                self._memory.setdefault(entry.message_id, entry)
                self._volatile.update(dict.fromkeys(entry.records, entry.message_id))
            return False

    def _audit(self, event: dict[str, object]) -> None:
        try:
            self.audit.record(event)
            self.once.clear("audit")
        except HostagentError as err:  # the audit log shares the disk: its failure must not lose the alert
            self.once.error("audit", "unwritable", str(err))

    def mail(self, subject: str, text: str, to: list[str], kind: str) -> None:
        """Queue and send a message that is not an alert (maintenance notices and reports), audited."""
        now = self.clock()
        refused = [address for address in to if not MAIL_ADDRESS.fullmatch(address)]
        if refused:  # a mail header's boundary: an owner from a guest's metadata or a journal is only a name
            raise HostagentError(f"not a mail address: {', '.join(shown(a, 80) for a in refused)}")
        if to:
            message = compose(self.config, subject, text, to, now)
            self._add(Entry(Path(), message.as_string(), to, now, str(message["Message-ID"]), one_line(subject, 400),
                            0, None, self.boot(), self.monotonic()))
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

    def next_due(self) -> float | None:
        """Seconds until the next retry is due (0 when one is due now), None when nothing waits."""
        with self._memory_lock:
            tries = list(self._next_try.values())
        if not tries:
            return None
        return max(0.0, min(tries) - self.monotonic())

    def flush(self) -> int:
        """Try every due entry now, each on its own; returns how many went out (to at least one recipient).

        Retry times back off per entry (``retry_interval`` doubling to an hour), but a server that comes
        back is not left waiting for them: when no entry is due and the last try is ``retry_interval``
        old, the oldest entry is tried (a probe), and once a server has taken a message in this flush,
        every waiting entry is tried at once.  So an event is accepted within about ``retry_interval``
        of the server accepting mail again (docs/alerts.md, "Delivery")."""
        with self._flush_lock:
            sent, errors = 0, []
            with self._memory_lock:
                candidates: list[tuple[Entry, bool]] = [(entry, True) for entry in self._memory.values()]
            try:
                waiting = self.outbox.waiting()
            except OSError as err:
                errors.append(f"cannot list {self.outbox.directory}: {err.strerror or err}")
                waiting = []
            held = {entry.message_id for entry, _ in candidates}
            for path in waiting:
                if self.outbox.settled(path):
                    continue
                try:
                    entry = self.outbox.load(path)
                except FileNotFoundError:
                    continue
                except (OSError, ValueError, RecursionError) as err:
                    errors.append(self._set_aside(path, CORRUPT, f"unreadable spool entry: {err}"))
                    continue
                if entry.message_id not in held:
                    candidates.append((entry, False))
            candidates.sort(key=lambda item: (item[0].seq == 0, item[0].seq, item[0].created))
            seen = {entry.message_id for entry, _ in candidates}
            with self._memory_lock:  # an entry gone meanwhile (removed by hand) keeps no retry time
                for gone in set(self._next_try) - seen:
                    del self._next_try[gone]
            tried: set[str] = set()
            took = False

            def attempt(force: bool, only: int | None = None) -> None:
                """One pass in event order: an entry waits behind an older one of the same alert that is
                still waiting (a RESOLVED never overtakes its alert)."""
                nonlocal sent, took
                behind: set[str] = set()
                for number, (entry, in_memory) in enumerate(candidates):
                    keys = set(entry.records)
                    if entry.message_id in tried:
                        if entry.message_id in self._next_try or entry.message_id in self._memory:
                            behind |= keys
                        continue
                    if (only is not None and number != only) or not (force or self._due(entry.message_id)) \
                            or behind & keys:
                        behind |= keys
                        continue
                    tried.add(entry.message_id)
                    result = self._try(entry, in_memory)
                    if isinstance(result, str):
                        errors.append(result + (" (held in memory)" if in_memory else ""))
                        behind |= keys
                    else:
                        sent += result
                        took = took or result > 0

            attempt(force=False)
            if not tried and candidates and self.monotonic() - self._last_try >= self.config.retry_interval:
                attempt(force=True, only=0)  # the probe: is the server back?
            if took:  # a server takes mail again: nobody waits for a backed-off retry time
                attempt(force=True)
            self._record_unrecorded()
            self.last_errors = errors
            for error in errors:  # once per cause: the error after the entry's own name
                self.once.error("delivery", error.split(": ", 1)[-1][:200], f"mail delivery failed: {error}")
            if not errors and sent:  # a server took mail again
                self.once.clear("delivery")
            self._prune()
            return sent

    def _due(self, message_id: str) -> bool:
        now = self.monotonic()
        with self._memory_lock:
            self._first_seen.setdefault(message_id, now)
            return self._next_try.get(message_id, now) <= now

    def _try(self, entry: Entry, in_memory: bool) -> int | str:
        """One entry, isolated: 1 if a recipient took it, 0 if nobody did, or the error."""
        if entry.message_id in self._accepted:  # accepted already: only its sent record is missing
            return self._sent(entry, in_memory) or 0
        if not entry.to:
            return self._sent(entry, in_memory) or 0
        self._last_try = self.monotonic()
        try:
            refused = self.send(entry.message, entry.to, self.deadline())
        except TransientError as err:
            return self._retry_later(entry, str(err), in_memory)
        except PermanentError as err:
            return self._give_up(entry, f"refused for good: {err} (to {', '.join(entry.to)}, {entry.message_id})",
                                 in_memory)
        except Exception as err:  # its own fault (an encoding, a header): aside, never in the others' way
            return self._give_up(entry, f"cannot be sent: {type(err).__name__}: {err} ({entry.message_id})",
                                 in_memory)
        self._record_refusals(refused, entry.to)
        accepted = [address for address in entry.to if address not in refused]
        later = sorted(address for address, (code, _) in refused.items() if 400 <= code < 500)
        if later:  # the others have it: only the 4xx recipients are tried again
            entry.to = later
            self._retry_later(entry, "; ".join(f"{a}: {refused[a][0]} {refused[a][1]}" for a in later), in_memory)
        else:
            with self._memory_lock:
                self._accepted.add(entry.message_id)
            error = self._sent(entry, in_memory)
            if error:
                return error
        return 1 if accepted else 0

    def _sent(self, entry: Entry, in_memory: bool) -> str | None:
        """Record the acceptance in the outbox (the move into sent/).  Until that is written the entry is
        known here as accepted and never sent again; one held in memory waits in ``_unrecorded`` for
        the disk, and its event is never added again by this process."""
        try:
            if in_memory:
                self.outbox.add(entry)  # the disk may take it now: then its sent record too
            self.outbox.mark_sent(entry, self.clock())
            recorded = True
            self._outbox_error = None
        except OSError as err:
            self._outbox_error = str(err.strerror or err)
            if not in_memory:
                return f"{entry.path.name}: sent, but the sent record cannot be written: {err.strerror or err}"
            recorded = False
        with self._memory_lock:
            self._accepted.discard(entry.message_id)
            self._memory.pop(entry.message_id, None)
            self._next_try.pop(entry.message_id, None)
            self._first_seen.pop(entry.message_id, None)
            if recorded:
                self._unrecorded.pop(entry.message_id, None)
                self._durable(entry)
            else:
                self._unrecorded[entry.message_id] = entry
        return None

    def _durable(self, entry: Entry) -> None:
        """The entry is in the outbox now: its alerts' records may be committed to the state (lock held)."""
        for key in entry.records:
            if self._volatile.get(key) == entry.message_id:
                del self._volatile[key]

    def _record_unrecorded(self) -> None:
        """Mail sent from memory gets its sent record once the disk takes writes again."""
        with self._memory_lock:
            pending = list(self._unrecorded.values())
        for entry in pending:
            self._sent(entry, in_memory=True)

    def _retry_later(self, entry: Entry, error: str, in_memory: bool) -> str:
        entry.attempts += 1
        entry.last_error = error[:2000]
        wait = min(self.config.retry_interval * 2 ** min(entry.attempts - 1, 20), RETRY_MAX)
        with self._memory_lock:
            self._next_try[entry.message_id] = self.monotonic() + wait
        if not in_memory:
            try:
                self.outbox.save(entry)
            except OSError as err:
                error += f"; and the retry could not be recorded: {err.strerror or err}"
        return f"{entry.path.name if not in_memory else entry.message_id}: {error}"

    def _give_up(self, entry: Entry, why: str, in_memory: bool) -> str:
        with self._memory_lock:
            self._next_try.pop(entry.message_id, None)
            self._first_seen.pop(entry.message_id, None)
        if in_memory:
            with contextlib.suppress(OSError):
                self.outbox.add(entry)
            with self._memory_lock:
                self._memory.pop(entry.message_id, None)
                if entry.path.name.endswith(".json") and entry.path.exists():
                    self._durable(entry)
            if entry.path.name.endswith(".json") and entry.path.exists():
                return self._set_aside(entry.path, FAILED, why)
            with self._memory_lock:  # nowhere on disk to keep it: status and the findings still name it
                self._given_up[entry.message_id] = (entry, why)
            return f"{entry.message_id}: {why}"
        return self._set_aside(entry.path, FAILED, why)

    def _set_aside(self, path: Path, where: str, why: str) -> str:
        try:
            self.outbox.set_aside(path, where, why)
        except OSError as err:
            return f"{path.name}: {why}; cannot move it to {where}/: {err.strerror or err}"
        log.error("alert spool: %s moved to %s/: %s", path.name, where, why)
        return f"{path.name}: {why}"

    def _prune(self) -> None:
        """Sent entries past SENT_KEEP go, but never the newest event of an alert still open.  The courier's
        thread: it reads the outbox's records only, never the state database (one thread's)."""
        now = self.monotonic()
        if now - self._pruned < PRUNE_EVERY:
            return
        self._pruned = now
        with self._memory_lock:
            still_open = {key for key, (_, data) in self._outbox_records().items() if data.get("status") == "open"}
        try:
            self.outbox.prune(self.clock(), SENT_KEEP, still_open)
        except OSError as err:
            self.once.error("outbox", err, f"alert spool {self.outbox.directory}: cannot prune: {err.strerror or err}")

    def _record_refusals(self, refused: Refusals, to: list[str]) -> None:
        """Recipients refused for good (5xx) are kept in refused-recipients until one takes a message again."""
        known = self.outbox.refused()
        changed = False
        for address, (code, reply) in refused.items():
            if not 400 <= code < 500 and address not in known:
                known[address] = {"code": code, "reply": reply, "at": self.clock()}
                changed = True
                log.error("alert recipient %s refused for good: %d %s", address, code, reply)
        for address in to:
            if address not in refused and address in known:
                del known[address]
                changed = True
        if changed:
            try:
                self.outbox.set_refused(known)
            except OSError as err:
                self.once.error("outbox", err, f"alert spool: cannot record refused recipients: {err.strerror or err}")

    def refused(self) -> dict[str, dict[str, object]]:
        return self.outbox.refused()

    # -- what keeps mail from its readers ----------------------------------------------------------

    def _age(self, entry: Entry) -> float:
        """How long an entry has waited, by CLOCK_BOOTTIME within its boot; across a reboot by the wall
        clock (never below zero) or, if longer, since this process first saw it."""
        now = self.monotonic()
        if entry.boot and entry.boot == self.boot():
            return max(0.0, now - entry.since_boot)
        with self._memory_lock:
            first = self._first_seen.setdefault(entry.message_id, now)
        return max(now - first, min(max(0.0, self.clock() - entry.created), 366 * 86400.0))

    def undelivered(self) -> list[dict[str, Any]]:
        """Every entry that has not reached its readers: waiting in the outbox, held in memory, or set
        aside; each with its Message-ID, subject, recipients, tries, last error and age (for ``status``)."""
        found: list[dict[str, Any]] = []
        with self._memory_lock:
            held = list(self._memory.values())
        for entry in held:
            found.append(self._view(entry, "memory"))
        try:
            waiting = self.outbox.waiting()
        except OSError:
            waiting = []
        for path in waiting:
            try:
                entry = self.outbox.load(path)
            except (OSError, ValueError, RecursionError):
                found.append({"where": "waiting", "file": path.name, "message_id": None, "subject": None, "to": [],
                              "attempts": None, "last_error": "unreadable", "age_s": None})
                continue
            if entry.message_id not in {e.message_id for e in held}:
                found.append(self._view(entry, "waiting"))
        with self._memory_lock:
            given_up = list(self._given_up.values())
        for entry, why in given_up:
            found.append({**self._view(entry, "failed"), "file": None, "last_error": why})
        for where in (FAILED, CORRUPT):
            for name, why in self.outbox.set_aside_entries(where):
                found.append({"where": where, "file": name, "message_id": None, "subject": None, "to": [],
                              "attempts": None, "last_error": why, "age_s": None})
        return found

    def _view(self, entry: Entry, where: str) -> dict[str, Any]:
        return {"where": where, "file": entry.path.name if where != "memory" else None,
                "message_id": entry.message_id, "subject": entry.subject, "to": entry.to,
                "attempts": entry.attempts, "last_error": entry.last_error, "age_s": round(self._age(entry), 1)}

    def spool_age(self) -> float | None:
        """The oldest waiting entry's age (seconds), None when nothing waits."""
        ages = [item["age_s"] for item in self.undelivered() if item["where"] in ("waiting", "memory")
                and item["age_s"] is not None]
        return max(ages) if ages else None

    def delivery_findings(self, check: str) -> list[Finding]:
        """What keeps mail from its readers, as findings of ``check`` (alerted through the routes that work)."""
        found = []
        spool = self.outbox.directory
        for name, why in self.outbox.set_aside_entries(CORRUPT):
            found.append(Finding("alert.spool_corrupt", check, name, Severity.WARNING,
                                 f"alert spool entry {name} could not be read and was moved to {spool}/corrupt: "
                                 f"{why}", "Remove the file once its message has been looked at."))
        for name, why in self.outbox.set_aside_entries(FAILED):
            found.append(Finding("alert.undeliverable", check, name, Severity.CRITICAL,
                                 f"an alert mail was {why}; it is kept in {spool}/failed",
                                 "Fix the address or the server's policy, then remove the file."))
        with self._memory_lock:
            given_up = list(self._given_up.items())
        for message_id, (_, why) in given_up:
            found.append(Finding("alert.undeliverable", check, one_line(message_id, 200), Severity.CRITICAL,
                                 f"an alert mail was {why}; the outbox could not keep it, so only this process "
                                 "knows of it"))
        for address, refusal in sorted(self.outbox.refused().items()):
            found.append(Finding("alert.recipient_refused", check, address, Severity.CRITICAL,
                                 f"mail to {address} is refused for good: {refusal.get('code')} "
                                 f"{refusal.get('reply')}; alerts reach the other routes only"))
        with self._memory_lock:
            held, unrecorded, broken = len(self._memory), len(self._unrecorded), self._outbox_error
        if held or unrecorded or broken:  # until the outbox takes a write again: no flapping on each mail
            found.append(Finding("alert.spool_unwritable", check, "spool", Severity.CRITICAL,
                                 f"the alert outbox {spool} cannot be written ({broken or 'its last write failed'}): "
                                 f"{held} mail(s) held in memory only (a restart before they are sent loses "
                                 f"them), {unrecorded} sent without a sent record"))
        silent = silence(self.config)
        if silent:
            found.append(Finding("alert.no_route", check, "alerts", Severity.WARNING,
                                 f"nobody is alerted about a failed disk: {silent}",
                                 "See docs/alerts.md, \"Never silent\"."))
        return found

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
    """Sends the outbox in its own thread: woken by each new message, and when a retry is due."""

    def __init__(self, alerter: Alerter) -> None:
        self.alerter = alerter
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="hostagent-courier", daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            due = self.alerter.next_due()
            self.wakeup.wait(min(RETRY_TICK, self.alerter.config.retry_interval, *([due] if due is not None else [])))
            self.wakeup.clear()
            if self.stopping.is_set():
                return
            try:
                self.alerter.flush()
            except Exception as err:  # the courier never dies: the next tick tries again
                self.alerter.once.error("courier", err, f"mail courier: {type(err).__name__}: {err}")

    def stop(self, wait: float) -> None:
        self.stopping.set()
        self.wakeup.set()
        self.thread.join(wait)
