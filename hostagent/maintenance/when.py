"""WHEN for ``maintenance --reboot-at``: ISO 8601, ``YYYY-MM-DD HH:MM`` in the host's time zone, or ``now``.

Operators and customers sit in different time zones, so a time is always echoed back in
local time and UTC, and a time without an offset is the host's local time, said so.
"""

from __future__ import annotations

import datetime as dt

from hostagent.errors import HostagentError

LOCAL_FORMATS = ("%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S")


def parse_when(text: str, now: dt.datetime, local: dt.tzinfo | None = None) -> dt.datetime:
    """An aware datetime for ``text``; a naive time is taken in ``local`` (the host's zone)."""
    zone = local or now.astimezone().tzinfo
    value = text.strip()
    if value == "now":  # the daemon starts it at its next look (within seconds); for rolling playbooks
        return now
    parsed: dt.datetime | None = None
    for layout in LOCAL_FORMATS:
        try:
            parsed = dt.datetime.strptime(value, layout)
            break
        except ValueError:
            continue
    if parsed is None:
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise HostagentError(f"--reboot-at {text!r}: not a time; use ISO 8601 (2026-11-23T16:00:00+01:00) "
                                 "or 'YYYY-MM-DD HH:MM' in the host's time zone") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    if parsed <= now:
        raise HostagentError(f"--reboot-at {text!r} is {describe(parsed)}, which is in the past")
    return parsed


def describe(moment: dt.datetime) -> str:
    """'2026-11-23 16:00 CET (15:00 UTC)': both clocks, always."""
    local = moment.astimezone()
    utc = moment.astimezone(dt.UTC)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()} ({utc:%Y-%m-%d %H:%M} UTC)"
