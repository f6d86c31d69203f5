"""Email for alerts: composition, routes by severity, SMTP (STARTTLS or TLS) or sendmail, and a
disk spool so no alert is lost across SMTP outages or restarts; plus the hook program."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import smtplib
import ssl
import subprocess
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from hostagent.alerts.settings import AlertsConfig
from hostagent.alerts.state import Alert
from hostagent.durable import write_durable
from hostagent.errors import HostagentError
from hostagent.model import Severity


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


def compose(config: AlertsConfig, subject: str, text: str, to: list[str], now: float) -> EmailMessage:
    message = EmailMessage()
    message["From"] = config.smtp.from_addr
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(now, localtime=True)
    message["Message-ID"] = make_msgid(domain="hostagent")
    message.set_content(text)
    return message


class Spool:
    """Messages wait here (one JSON file each, written atomically) until an SMTP server takes them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, message: EmailMessage, to: list[str], now: float) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        entry = {"message": message.as_string(), "to": to, "created": now, "attempts": 0, "next_try": now,
                 "last_error": None}
        path = self.directory / f"{int(now * 1000):015d}-{uuid.uuid4().hex[:8]}.json"
        _write(path, entry)
        return path

    def entries(self) -> list[tuple[Path, dict[str, Any]]]:
        if not self.directory.exists():
            return []
        return [(p, json.loads(p.read_text())) for p in sorted(self.directory.glob("*.json"))]

    def flush(self, send: Any, now: float) -> tuple[int, list[str]]:
        """Try every due message; returns how many went out and the errors of the rest."""
        sent, errors = 0, []
        for path, entry in self.entries():
            if entry["next_try"] > now:
                continue
            try:
                send(entry["message"], entry["to"])
            except (OSError, smtplib.SMTPException, HostagentError) as err:
                entry["attempts"] += 1
                entry["next_try"] = now + min(30 * 2 ** entry["attempts"], 3600)
                entry["last_error"] = str(err) or type(err).__name__
                errors.append(entry["last_error"])
                _write(path, entry)
                continue
            path.unlink()
            sent += 1
        return sent, errors

    def oldest_age(self, now: float) -> float | None:
        ages = [now - entry["created"] for _, entry in self.entries()]
        return max(ages) if ages else None


def _write(path: Path, entry: dict[str, Any]) -> None:
    write_durable(path, json.dumps(entry).encode())


def sender(config: AlertsConfig) -> Any:
    """A function(message_text, recipients) that delivers, or raises."""
    if config.sendmail:
        program = config.sendmail

        def via_sendmail(text: str, to: list[str]) -> None:
            proc = subprocess.run([program, "-oi", "--", *to], input=text.encode(), capture_output=True,
                                  timeout=config.smtp.timeout, check=False)
            if proc.returncode != 0:
                raise HostagentError(f"{config.sendmail} exited {proc.returncode}: "
                                     f"{proc.stderr.decode(errors='replace').strip()}")
        return via_sendmail

    smtp = config.smtp

    def via_smtp(text: str, to: list[str]) -> None:
        context = ssl.create_default_context(cafile=smtp.ca_file) if smtp.security != "none" else None
        client: smtplib.SMTP
        if smtp.security == "tls":
            client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout, context=context)
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
        with client:
            if smtp.security == "starttls":
                client.starttls(context=context)
            if smtp.username:
                password = Path(smtp.password_file).read_text().strip() if smtp.password_file else ""
                client.login(smtp.username, password)
            client.sendmail(smtp.from_addr, to, text)
    return via_smtp


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

