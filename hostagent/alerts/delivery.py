"""Email for alerts: composition, routes by severity, SMTP (STARTTLS or TLS) or sendmail, and a
disk spool so no alert is lost across SMTP outages, full disks or restarts; plus the hook program.

SMTP's own rule decides what is retried: a 4xx reply (or no reply) is transient, a 5xx reply is
permanent, for the whole message (MAIL FROM, DATA) or for one recipient (RCPT TO).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from hostagent.alerts.settings import AlertsConfig
from hostagent.alerts.state import Alert
from hostagent.durable import fsync_directory, read_bounded, write_durable
from hostagent.errors import HostagentError
from hostagent.model import Severity
from hostagent.records import record


def severity_of(name: str) -> Severity:
    return Severity[name.upper()]


def subject_line(alert: Alert, hostname: str) -> str:
    what = alert.record.code.split(".", 1)[-1].replace("_", " ")
    severity = "RESOLVED" if alert.kind == "resolved" else alert.record.severity
    tail = {"reminder": " (reminder)", "escalated": " (escalated)", "flapping": " (flapping)"}.get(alert.kind, "")
    return f"[hostagent] {severity} {alert.record.subject} {what} on {hostname}{tail}"


def body(alert: Alert, hostname: str, now: float, evidence: str = "") -> str:
    local = dt.datetime.fromtimestamp(now).astimezone()
    utc = dt.datetime.fromtimestamp(now, dt.UTC)
    finding = alert.finding
    lines = [
        f"What happened: {finding.summary}",
        f"Host: {hostname}",
        f"Time: {local:%Y-%m-%d %H:%M:%S %Z} ({utc:%Y-%m-%d %H:%M:%S} UTC)",
        f"Alert: {alert.kind}" + (f" ({alert.note})" if alert.note else ""),
        f"Code: {alert.record.code} (check {alert.record.check}), severity {alert.record.severity}",
    ]
    if finding.detail:
        lines += ["", "What it means:", *(f"  {line}" for line in finding.detail.splitlines())]
    if finding.remedy is not None:
        lines += ["", "What to do:", f"  {finding.remedy.what}"]
        if finding.remedy.why:
            lines.append(f"  ({finding.remedy.why})")
        lines += [f"  $ {' '.join(command)}" for command in finding.remedy.commands]
    if evidence:
        lines += ["", "Evidence:", *(f"  {line}" for line in evidence.rstrip().splitlines())]
    lines += ["", f"More: hostagent status, hostagent log (on {hostname})."]
    return "\n".join(lines) + "\n"


def recipients(config: AlertsConfig, alert: Alert) -> list[str]:
    rank = severity_of(alert.record.severity).rank
    found: list[str] = []
    for route in config.routes:
        if rank >= severity_of(route.min_severity).rank:
            found += [address for address in route.to if address not in found]
    return found


def compose(config: AlertsConfig, subject: str, text: str, to: list[str], now: float,
            message_id: str | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = config.smtp.from_addr
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(now, localtime=True)
    message["Message-ID"] = message_id or make_msgid(domain="hostagent")
    message.set_content(text)
    return message


def stable_message_id(hostname: str, *identity: object) -> str:
    """The same alert event gets the same Message-ID however often it is spooled or sent (after a
    crash between spooling and saving the state, it is composed again): receivers can drop repeats."""
    digest = hashlib.sha256(json.dumps([hostname, *identity], sort_keys=True, default=str).encode()).hexdigest()
    domain = "".join(c for c in hostname.lower() if c.isalnum() or c in "-.") or "localhost"
    return f"<{digest[:40]}@hostagent.{domain}>"


class TransientError(HostagentError):
    """Worth another try later: the server is down or slow, or answered 4xx."""


class PermanentError(HostagentError):
    """The server refused this message for good (5xx to MAIL FROM or DATA)."""


Refusals = dict[str, tuple[int, str]]  # recipient -> (SMTP code, reply)


@record
class SpoolEntry:
    path: Path
    message: str
    to: list[str]
    created: float
    attempts: int = 0
    next_try: float = 0.0
    last_error: str | None = None
    message_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message, "to": self.to, "created": self.created, "attempts": self.attempts,
                "next_try": self.next_try, "last_error": self.last_error, "message_id": self.message_id}


class Spool:
    """Messages wait here until a server takes them: one JSON file each, named by its Message-ID,
    written durably (file and directory fsync'd) before the alert state records it as sent.

    ``corrupt/`` holds entries that could not be read (moved aside, reported), ``failed/`` those
    refused for good (5xx), and ``refused-recipients`` (JSON) the recipients refused for good.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _name(self, message_id: str) -> Path:
        return self.directory / f"{hashlib.sha256(message_id.encode()).hexdigest()[:32]}.json"

    def add(self, message: EmailMessage, to: list[str], now: float) -> Path:
        """Spool durably; a message already spooled (same Message-ID) is left as it is."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        message_id = str(message["Message-ID"])
        path = self._name(message_id)
        if path.exists():
            return path
        entry = SpoolEntry(path, message.as_string(), to, now, 0, now, None, message_id)
        write_durable(path, json.dumps(entry.to_json()).encode())
        return path

    def paths(self) -> list[Path]:
        try:
            return sorted(self.directory.glob("*.json"))
        except OSError:
            return []

    def load(self, path: Path) -> SpoolEntry:
        """One entry; ValueError names what is wrong with a corrupt one, OSError if it is unreadable."""
        data = json.loads(read_bounded(path, MAX_ENTRY))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            entry = SpoolEntry(path, data["message"], list(data["to"]), float(data["created"]),
                               int(data.get("attempts", 0)), float(data.get("next_try", 0)),
                               data.get("last_error"), str(data.get("message_id", "")))
        except (KeyError, TypeError) as err:
            raise ValueError(f"missing or wrong field: {err}") from None
        if not isinstance(entry.message, str) or not all(isinstance(t, str) for t in entry.to):
            raise ValueError("message or recipients of the wrong type")
        return entry

    def entries(self) -> list[SpoolEntry]:
        """The readable entries (a corrupt one is skipped here; the courier moves it aside)."""
        found = []
        for path in self.paths():
            try:
                found.append(self.load(path))
            except (OSError, ValueError, RecursionError):
                continue
        return found

    def save(self, entry: SpoolEntry) -> None:
        write_durable(entry.path, json.dumps(entry.to_json()).encode())

    def set_aside(self, path: Path, where: str, note: str) -> Path:
        """Move an entry into ``corrupt/`` or ``failed/``, with why beside it."""
        target = self.directory / where
        target.mkdir(exist_ok=True, mode=0o700)
        moved = target / path.name
        os.replace(path, moved)
        write_durable(moved.with_suffix(".why"), note.encode())
        fsync_directory(self.directory)
        return moved

    def set_aside_entries(self, where: str) -> list[tuple[str, str]]:
        """(file name, why) of every entry in ``corrupt/`` or ``failed/``."""
        found = []
        for path in sorted((self.directory / where).glob("*.json")):
            try:
                why = read_bounded(path.with_suffix(".why"), 4096).decode(errors="replace").strip()
            except (OSError, ValueError):
                why = "reason not recorded"
            found.append((path.name, why))
        return found

    def refused(self) -> dict[str, dict[str, Any]]:
        """Recipients refused for good: address -> {"code", "reply", "at"}."""
        try:
            data = json.loads(read_bounded(self.directory / REFUSED_FILE, MAX_ENTRY))
        except (OSError, ValueError, RecursionError):
            return {}
        return data if isinstance(data, dict) else {}

    def set_refused(self, refused: dict[str, dict[str, Any]]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_durable(self.directory / REFUSED_FILE, json.dumps(refused, indent=1).encode())

    def oldest_age(self, now: float) -> float | None:
        ages = [now - entry.created for entry in self.entries()]
        return max(ages) if ages else None


MAX_ENTRY = 4 << 20
REFUSED_FILE = "refused-recipients"  # not *.json: the spool's entries are


def sender(config: AlertsConfig) -> Callable[[str, list[str], float], Refusals]:
    """A function(message_text, recipients, deadline_s) that delivers and returns the recipients
    refused for good; it raises TransientError or PermanentError for the whole message."""
    if config.sendmail:
        program = config.sendmail

        def via_sendmail(text: str, to: list[str], deadline: float) -> Refusals:
            try:
                proc = subprocess.run([program, "-oi", "--", *to], input=text.encode(), capture_output=True,
                                      timeout=deadline, check=False)
            except subprocess.TimeoutExpired:
                raise TransientError(f"{program}: no answer within {deadline:g} s") from None
            except OSError as err:
                raise TransientError(f"{program}: cannot run: {err.strerror or err}") from None
            if proc.returncode != 0:
                error = f"{program} exited {proc.returncode}: {proc.stderr.decode(errors='replace').strip()[:300]}"
                # sysexits: EX_DATAERR, EX_NOUSER, EX_NOHOST are the message's fault; the rest may pass later
                raise (PermanentError if proc.returncode in (65, 67, 68) else TransientError)(error)
            return {}
        return via_sendmail

    smtp = config.smtp

    def via_smtp(text: str, to: list[str], deadline: float) -> Refusals:
        context = ssl.create_default_context(cafile=smtp.ca_file) if smtp.security != "none" else None
        client: smtplib.SMTP = (smtplib.SMTP_SSL(timeout=smtp.timeout, context=context) if smtp.security == "tls"
                                else smtplib.SMTP(timeout=smtp.timeout))
        # the hard deadline: a server that drips one byte a minute still ends within it
        fired = threading.Event()  # set before the cut: the timer thread is still alive while it cuts
        timer = threading.Timer(deadline, _cut, (client, fired))
        timer.daemon = True
        timer.start()
        client._host = smtp.host  # type: ignore[attr-defined]  # TLS's server name, set by __init__ only
        try:
            client.connect(smtp.host, smtp.port)
            if smtp.security == "starttls":
                client.starttls(context=context)
            if smtp.username:
                password = Path(smtp.password_file).read_text().strip() if smtp.password_file else ""
                client.login(smtp.username, password)
            try:
                refused = client.sendmail(smtp.from_addr, to, text)
            except smtplib.SMTPRecipientsRefused as err:
                refused = err.recipients
            except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as err:
                reply = f"{err.smtp_code} {_reply(err.smtp_error)}"
                raise (PermanentError if 500 <= err.smtp_code < 600 else TransientError)(reply) from None
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()
        except (smtplib.SMTPException, OSError, ssl.SSLError) as err:
            if fired.is_set():
                raise TransientError(f"{smtp.host}:{smtp.port}: not done within {deadline:g} s") from None
            raise TransientError(f"{smtp.host}:{smtp.port}: {_smtp_error(err)}") from None
        finally:
            timer.cancel()
            client.close()
        return {address: (int(code), _reply(reply)) for address, (code, reply) in refused.items()}
    return via_smtp


def _cut(client: smtplib.SMTP, fired: threading.Event) -> None:
    fired.set()
    sock = getattr(client, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _reply(value: bytes | str) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return " ".join(text.split())[:300]


def _smtp_error(err: BaseException) -> str:
    if isinstance(err, smtplib.SMTPResponseException):
        return f"{err.smtp_code} {_reply(err.smtp_error)}"
    return str(err) or type(err).__name__


def run_hook(program: str, alert: Alert, hostname: str, timeout: float) -> str | None:
    """Run the hook with the alert as environment variables and JSON on stdin; returns an error or None."""
    payload = {"kind": alert.kind, "host": hostname, "note": alert.note, **alert.finding.to_json(),
               "severity": alert.record.severity}
    env = {**os.environ, "HOSTAGENT_KIND": alert.kind, "HOSTAGENT_CODE": alert.record.code,
           "HOSTAGENT_SUBJECT": alert.record.subject, "HOSTAGENT_SEVERITY": alert.record.severity,
           "HOSTAGENT_SUMMARY": alert.finding.summary, "HOSTAGENT_HOST": hostname}
    try:
        proc = subprocess.Popen([program], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=env, start_new_session=True)
    except OSError as err:
        return f"hook {program}: cannot run: {err.strerror or err}"
    try:
        _, err_out = proc.communicate(json.dumps(payload).encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
        return f"hook {program}: no answer within {timeout:g} s; killed"
    if proc.returncode != 0:
        return f"hook {program} exited {proc.returncode}: {err_out.decode(errors='replace').strip()[:200]}"
    return None

