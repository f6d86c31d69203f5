"""Alert settings ([alerts] in the config): plain values, importable without the mail machinery."""

from __future__ import annotations

from typing import Literal

from hostagent.records import field, record

SeverityName = Literal["info", "warning", "unknown", "critical"]


@record(frozen=True)
class SmtpConfig:
    host: str = "localhost"
    port: int = 25
    security: Literal["none", "starttls", "tls"] = "none"
    username: str | None = None
    password_file: str | None = None
    from_addr: str = "hostagent@localhost"
    timeout: float = 30.0
    ca_file: str | None = None
    allow_plaintext_auth: bool = False  # AUTH with security = "none": only on purpose


@record(frozen=True)
class Route:
    to: tuple[str, ...] = ()
    min_severity: SeverityName = "warning"


@record(frozen=True)
class AlertsConfig:
    enabled: bool = True
    min_severity: SeverityName = "warning"
    reminder_interval: float = 86400.0
    reminder_backoff: float = 1.0
    flap_window: float = 3600.0
    flap_threshold: int = 3
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    sendmail: str | None = None
    routes: tuple[Route, ...] = ()
    hook: str | None = None
    hook_timeout: float = 30.0
    spool_max_age: float = 86400.0
    retry_interval: float = 60.0  # s before the first retry of a message; each next waits twice as long (<= 1 h)
    elsewhere: str | None = None  # where alerts reach people when no route mails anyone (docs/alerts.md)


def silence(alerts: AlertsConfig) -> str:
    """Why nobody would hear of a failed disk, or "" when somebody would (docs/alerts.md, "Never
    silent"): mail disabled, or no route with a recipient, and neither a hook nor ``elsewhere``."""
    if alerts.elsewhere:
        return ""
    if not alerts.enabled:
        return ('[alerts] enabled = false: no alert is mailed and no hook runs (say where alerts go instead '
                'with [alerts] elsewhere = "...")')
    if not any(route.to for route in alerts.routes) and not alerts.hook:
        return ("no [[alerts.routes]] has a recipient and no hook is set: add a route with to = [...], or say "
                'where alerts go instead with [alerts] elsewhere = "..."')
    return ""
