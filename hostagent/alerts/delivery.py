"""Email for alerts: composition, routes by severity, SMTP (STARTTLS or TLS) or sendmail, and a
disk spool so no alert is lost across SMTP outages, full disks or restarts; plus the hook program.

SMTP's own rule decides what is retried: a 4xx reply (or no reply) is transient, a 5xx reply is
permanent, for the whole message (MAIL FROM, DATA) or for one recipient (RCPT TO).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.policy
import hashlib
import json
import os
import re
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

from hostagent.alerts.settings import AlertsConfig
from hostagent.alerts.state import Alert
from hostagent.errors import HostagentError
from hostagent.model import Severity

# every header folded and encoded (RFC 2047) by the standard library, the body quoted-printable or
# base64 where it is not ASCII: the message itself is always 7-bit ASCII
POLICY = email.policy.SMTP.clone(cte_type="7bit", max_line_length=78)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_LABEL = re.compile(r"[^a-z0-9-]+")
_CRLF = re.compile(r"\r?\n")


def severity_of(name: str) -> Severity:
    return Severity[name.upper()]


def encodable(text: str) -> str:
    """Text that UTF-8 can carry: a lone surrogate (a name read with surrogateescape from bytes that
    were not UTF-8, or a hostile JSON's "\\ud800") becomes its backslash escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(text: str, limit: int = 200) -> str:
    """Text for a header or a one-line field: control characters (CR and LF among them) become one
    space, a lone surrogate its escape, and it is cut at ``limit`` characters."""
    flat = " ".join(_CONTROL.sub(" ", encodable(text)).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def ascii_host(hostname: str) -> str:
    """The hostname's ASCII form for Message-IDs and addresses: each label in IDNA (``häst`` becomes
    ``xn--hst-qla``), or, where a label has no IDNA form, its letters, digits and hyphens; never empty."""
    labels = []
    for label in one_line(hostname, 253).lower().replace(" ", "").split("."):
        if not label:
            continue
        try:
            encoded = label.encode("idna").decode("ascii")
        except UnicodeError:
            encoded = _LABEL.sub("-", label.encode("ascii", "ignore").decode()).strip("-")
        if re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", encoded or ""):
            labels.append(encoded)
        elif encoded:
            labels.append(_LABEL.sub("-", encoded)[:63].strip("-") or "x")
    return ".".join(labels)[:253] or "localhost"


def ascii_address(address: str) -> str:
    """An address with its domain in IDNA; the local part as it is (non-ASCII needs SMTPUTF8)."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    return f"{local}@{ascii_host(domain)}"


def subject_line(alert: Alert, hostname: str) -> str:
    what = alert.record.code.split(".", 1)[-1].replace("_", " ")
    severity = "RESOLVED" if alert.kind == "resolved" else alert.record.severity
    tail = {"reminder": " (reminder)", "escalated": " (escalated)", "flapping": " (flapping)"}.get(alert.kind, "")
    return one_line(f"[hostagent] {severity} {alert.record.subject} {what} on {hostname}{tail}", 400)


def _when(at: float) -> str:
    local = dt.datetime.fromtimestamp(at).astimezone()
    utc = dt.datetime.fromtimestamp(at, dt.UTC)
    return f"{local:%Y-%m-%d %H:%M:%S %Z} ({utc:%Y-%m-%d %H:%M:%S} UTC)"


def body(alert: Alert, hostname: str, now: float, evidence: str = "") -> str:
    """The mail's text.  A RESOLVED mail says what was fixed, how severe it was and how long it lasted;
    an open one what happened, what it means, what to do, and the exact line that acknowledges it."""
    from hostagent.maintenance.when import duration

    finding, record = alert.finding, alert.record
    if alert.kind == "resolved":
        lasted = duration(now - record.first_seen) if now >= record.first_seen else "unknown (the clock went back)"
        lines = [f"Fixed: {record.summary}", f"Host: {hostname}", f"Resolved: {_when(now)}",
                 f"It lasted: {lasted}, since {_when(record.first_seen)}; it was {record.severity} at its worst"
                 if record.severity else f"It lasted: {lasted}",
                 f"Code: {record.code} (check {record.check})" + (f"; {alert.note}" if alert.note else ""),
                 "", f"More: hostagent status, hostagent log (on {hostname})."]
        return "\n".join(lines) + "\n"
    lines = [
        f"What happened: {finding.summary}",
        f"Host: {hostname}",
        f"Time: {_when(now)}",
        f"Alert: {alert.kind}" + (f" ({alert.note})" if alert.note else ""),
        f"Code: {record.code} (check {record.check}), severity {record.severity}",
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
    lines += ["", "On it? Acknowledge it on the host (no reminders until it is fixed or gets worse):",
              f"  $ {ack_command(record.code, record.subject)}",
              "", f"More: hostagent status, hostagent log (on {hostname})."]
    return "\n".join(lines) + "\n"


def ack_command(code: str, subject: str) -> str:
    """The exact line that acknowledges an alert, quoted for a POSIX shell."""
    import shlex

    return f"hostagent alert ack {shlex.quote(code)} {shlex.quote(subject)} --until 24h --comment 'who is on it'"


def recipients(config: AlertsConfig, alert: Alert) -> list[str]:
    rank = severity_of(alert.record.severity).rank
    found: list[str] = []
    for route in config.routes:
        if rank >= severity_of(route.min_severity).rank:
            found += [address for address in route.to if address not in found]
    return found


def compose(config: AlertsConfig, subject: str, text: str, to: list[str], now: float,
            message_id: str | None = None, thread: str | None = None) -> EmailMessage:
    """The mail, its headers passed through the standard library's policy: no CR or LF reaches a
    header, non-ASCII is RFC 2047-encoded, and ``Auto-Submitted`` says no human wrote it.  ``thread``:
    the Message-ID of the incident's first mail, for ``In-Reply-To`` and ``References``."""
    message = EmailMessage(policy=POLICY)
    message["From"] = ascii_address(one_line(config.smtp.from_addr, 320))
    message["To"] = ", ".join(ascii_address(one_line(address, 320)) for address in to)
    message["Subject"] = one_line(subject, 400)
    message["Date"] = formatdate(now, localtime=True)
    message["Message-ID"] = message_id or make_msgid(domain="hostagent")
    if thread and thread != message["Message-ID"]:
        message["In-Reply-To"] = thread
        message["References"] = thread
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(encodable(text))
    return message


def stable_message_id(hostname: str, *identity: object) -> str:
    """The same alert event gets the same Message-ID however often it is composed (after a crash
    between the outbox and the state, it is composed again): the outbox adds it once."""
    digest = hashlib.sha256(json.dumps([hostname, *identity], sort_keys=True, default=str).encode()).hexdigest()
    return f"<{digest[:40]}@hostagent.{ascii_host(hostname)}>"


class TransientError(HostagentError):
    """Worth another try later: the server is down or slow, or answered 4xx."""


class PermanentError(HostagentError):
    """The server refused this message for good (5xx to MAIL FROM or DATA)."""


Refusals = dict[str, tuple[int, str]]  # recipient -> (SMTP code, reply)


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
            sender_address = ascii_address(smtp.from_addr)
            options: list[str] = []
            if not (text.isascii() and sender_address.isascii() and all(a.isascii() for a in to)):
                client.ehlo_or_helo_if_needed()
                if not client.has_extn("smtputf8"):  # the entry's own fault: set aside, never retried
                    raise PermanentError(f"{smtp.host}:{smtp.port} does not offer SMTPUTF8, which this message's "
                                         "non-ASCII addresses need")
                options = ["SMTPUTF8", *(["BODY=8BITMIME"] if client.has_extn("8bitmime") else [])]
            data = _CRLF.sub("\r\n", text).encode("utf-8")
            try:
                refused = client.sendmail(sender_address, to, data, mail_options=options)
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

