"""Acknowledgements: someone is working on a known problem.

An ack silences the reminders of one open alert (code and subject) until it expires; a worse
severity or the resolution is still mailed, and ends the ack.  Acks live in the state store
beside the alert records (``ack.<code>|<subject>``), written by ``hostagent alert ack`` (or
``fleet ack`` on the controller) and read by the daemon at every cycle; each is audited.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict
from typing import Any

from hostagent.errors import HostagentError
from hostagent.records import record
from hostagent.state import StateStore

PREFIX = "ack."
DEFAULT_FOR = 24 * 3600.0
MAX_FOR = 30 * 86400.0  # an ack never outlives the month: a forgotten one must not silence for good
_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*(m|min|h|d|w)")
_UNIT = {"m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@record(frozen=True)
class Ack:
    code: str
    subject: str
    by: str
    at: float
    until: float
    comment: str
    severity: str  # the alert's severity when acknowledged: a worse one is mailed and ends the ack

    @property
    def key(self) -> str:
        return f"{self.code}|{self.subject}"

    def describe(self) -> str:
        until = dt.datetime.fromtimestamp(self.until).astimezone().strftime("%Y-%m-%d %H:%M %Z")
        return f"acknowledged by {self.by} until {until}" + (f": {self.comment}" if self.comment else "")

    @classmethod
    def from_json(cls, data: Any) -> Ack | None:
        """An ack, or None for a record of another shape (it is then ignored, never fatal)."""
        try:
            return cls(str(data["code"]), str(data["subject"]), str(data["by"]), float(data["at"]),
                       float(data["until"]), str(data.get("comment", "")), str(data["severity"]))
        except (KeyError, TypeError, ValueError):
            return None


def parse_until(text: str, now: float) -> float:
    """``--until``: a span (``90m``, ``8h``, ``3d``, ``1w``) or a local time (``2026-12-05 08:00``)."""
    span = _SPAN.fullmatch(text.strip())
    if span:
        until = now + float(span.group(1)) * _UNIT[span.group(2)]
    else:
        try:
            when = dt.datetime.fromisoformat(text.strip())
        except ValueError:
            raise HostagentError(f"--until {text!r}: give a span (90m, 8h, 3d, 1w) or a local time "
                                 "(2026-12-05 08:00)") from None
        until = (when if when.tzinfo else when.astimezone()).timestamp()
    if until <= now:
        raise HostagentError(f"--until {text!r} is not in the future")
    if until - now > MAX_FOR:
        raise HostagentError(f"--until {text!r}: an ack lasts at most {MAX_FOR / 86400:.0f} days")
    return until


def active(state: StateStore, now: float) -> dict[str, Ack]:
    """The acks that have not expired, by alert key."""
    found = {}
    for value in state.items(PREFIX).values():
        ack = Ack.from_json(value)
        if ack is not None and ack.until > now:
            found[ack.key] = ack
    return found


def put(state: StateStore, ack: Ack) -> None:
    state.put(PREFIX + ack.key, asdict(ack))


def remove(state: StateStore, key: str) -> Ack | None:
    """Forget the ack of ``key``; the one that was there, if any."""
    existing = Ack.from_json(state.get(PREFIX + key))
    state.put(PREFIX + key, None)
    return existing
