"""Severity, Finding, Remedy and the report they form (schema hostagent.report/1)."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

from hostagent.records import field, record

REPORT_SCHEMA = "hostagent.report/1"


class Severity(enum.Enum):
    """Ordered states.  ``rank`` orders them for worst(); ``exit_code`` is the Nagios code.

    UNKNOWN ranks below CRITICAL on purpose: a probe that could not run must never mask
    a degraded array (see docs/design-notes.md).
    """

    OK = ("ok", 0, 0)
    INFO = ("info", 1, 0)
    WARNING = ("warning", 2, 1)
    UNKNOWN = ("unknown", 3, 3)
    CRITICAL = ("critical", 4, 2)

    def __init__(self, label: str, rank: int, exit_code: int) -> None:
        self.label = label
        self.rank = rank
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.name

    @classmethod
    def worst(cls, severities: Iterable[Severity]) -> Severity:
        return max(severities, key=lambda s: s.rank, default=cls.OK)


@record(frozen=True)
class Remedy:
    """What to do about a finding, why, and the exact commands (argv lists)."""

    what: str
    why: str = ""
    commands: tuple[tuple[str, ...], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "why": self.why, "commands": [list(c) for c in self.commands]}


@record(frozen=True)
class Finding:
    code: str
    check: str
    subject: str
    severity: Severity
    summary: str
    detail: str = ""
    remedy: Remedy | None = None
    short: str = ""  # the problem in a few words, for the plugin line: "md0 degraded (1 of 2)"

    @property
    def headline(self) -> str:
        """``short``, or the subject and the code's last part: ``sdb pending``."""
        return self.short or f"{self.subject} {self.code.rpartition('.')[2].replace('_', ' ')}"

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "check": self.check,
            "subject": self.subject,
            "severity": self.severity.name,
            "summary": self.summary,
            "short": self.headline,
            "detail": self.detail,
            "remedy": self.remedy.to_json() if self.remedy else None,
        }


@record(frozen=True)
class CheckResult:
    """One check's outcome: its findings, how long it took, and the error if it failed."""

    name: str
    findings: tuple[Finding, ...]
    duration_ms: float
    error: str | None = None
    finished_at: float | None = None  # epoch seconds; the daemon's combined report mixes runs of different ages
    items: int | None = None  # how many things the check examined (None: it could not tell)
    unit: str = ""  # of what: "arrays", "disks", ...
    readings: dict[str, dict[str, float]] = field(default_factory=dict)  # subject -> value name -> value

    @property
    def examined_nothing(self) -> bool:
        return self.items == 0 and self.error is None

    def describe(self) -> str:
        """``ok (2 arrays)``, or ``nothing to check (0 disks)``: an empty check is not a clean bill of health."""
        if self.error:
            return "failed"
        unit = self.unit[:-1] if self.items == 1 and self.unit.endswith("s") else self.unit
        count = f"{self.items} {unit}" if self.items is not None else ""
        if self.examined_nothing and self.status in (Severity.OK, Severity.INFO):
            return f"nothing to check ({count})"
        return f"{self.status.label} ({count})" if count else self.status.label

    @property
    def status(self) -> Severity:
        return Severity.worst(f.severity for f in self.findings)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.name,
            "duration_ms": round(self.duration_ms, 3),
            "error": self.error,
            "items": self.items,
            "unit": self.unit,
            "summary": self.describe(),
            "readings": self.readings,
        }


@record(frozen=True)
class Report:
    hostname: str
    root: str
    generated_at: str
    results: tuple[CheckResult, ...]
    inventory: dict[str, Any] = field(default_factory=dict)

    @property
    def findings(self) -> list[Finding]:
        found = [f for r in self.results for f in r.findings]
        return sorted(found, key=lambda f: (-f.severity.rank, f.code, f.subject))

    @property
    def status(self) -> Severity:
        return Severity.worst(r.status for r in self.results)

    @property
    def exit_code(self) -> int:
        return self.status.exit_code

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "host": {"hostname": self.hostname, "root": self.root},
            "generated_at": self.generated_at,
            "status": self.status.name,
            "exit_code": self.exit_code,
            "findings": [f.to_json() for f in self.findings],
            "checks": [r.to_json() for r in self.results],
            "inventory": self.inventory,
        }
