"""Times for maintenance, each bounded where it is parsed (invariant I3, docs/maintenance.md).

- WHEN for ``maintenance --reboot-at``: ISO 8601, ``YYYY-MM-DD HH:MM`` in the host's time zone, or ``now``.
  Operators and customers sit in different time zones, so a time is always echoed back in
  local time and UTC, and a time without an offset is the host's local time, said so.
- Every time a journal, the CLI, RPC or the configuration hands over lies in
  [``TIME_MIN``, ``TIME_MAX``), a range every renderer (``datetime``, ``describe``) accepts; a value
  outside it is refused where it is read (``checked_time``), with a clean error.
- ``at`` and ``duration`` render any float without raising: an impossible value says so.
"""

from __future__ import annotations

import datetime as dt
import math

from hostagent.errors import HostagentError

LOCAL_FORMATS = ("%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S")
TIME_MIN = 0.0  # 1970-01-01T00:00:00Z: before it, a POSIX time is negative
TIME_MAX = 4102444800.0  # 2100-01-01T00:00:00Z: far beyond any plan, well inside datetime's range in any zone
MAX_DURATION = TIME_MAX - TIME_MIN


class TimeRangeError(HostagentError):
    """A time outside [TIME_MIN, TIME_MAX), or not a number."""


def checked_time(value: object, what: str) -> float:
    """``value`` as a POSIX time inside the range, or TimeRangeError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TimeRangeError(f"{what}: not a plausible time")
    if not TIME_MIN <= value < TIME_MAX:
        raise TimeRangeError(f"{what}: not a plausible time: {value!r} is outside 1970-01-01 .. 2100-01-01 UTC")
    return float(value)


def checked_duration(value: object, what: str) -> float:
    """A non-negative span of seconds that fits the time range."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 <= value <= MAX_DURATION:
        raise TimeRangeError(f"{what}: {value!r} is not a duration of 0 s to 100 years")
    return float(value)


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
            raise HostagentError(f"--reboot-at {text[:60]!r}: not a time; use ISO 8601 (2026-11-23T16:00:00+01:00) "
                                 "or 'YYYY-MM-DD HH:MM' in the host's time zone") from None
    if parsed.tzinfo is None:  # the host's zone with the rules of that date (DST), not today's offset
        try:
            parsed = parsed.replace(tzinfo=local) if local is not None else parsed.astimezone()
        except (OverflowError, ValueError, OSError):
            parsed = parsed.replace(tzinfo=zone)
    try:
        stamp = parsed.timestamp()
    except (OverflowError, ValueError, OSError):
        stamp = math.inf
    try:
        checked_time(stamp, f"--reboot-at {text[:60]!r}")
    except TimeRangeError as err:
        raise HostagentError(str(err)) from None
    if parsed <= now:
        raise HostagentError(f"--reboot-at {text[:60]!r} is {describe(parsed)}, which is in the past")
    return parsed


def describe(moment: dt.datetime) -> str:
    """'2026-11-23 16:00 CET (15:00 UTC)': both clocks, always; never raises."""
    try:
        local = moment.astimezone()
        utc = moment.astimezone(dt.UTC)
        return f"{local:%Y-%m-%d %H:%M} {local.tzname()} ({utc:%Y-%m-%d %H:%M} UTC)"
    except (OverflowError, ValueError, OSError):
        return "an impossible time"


def at(timestamp: float | None) -> str:
    """A POSIX time as ``describe`` gives it; ``-`` for none; never raises."""
    if timestamp is None:
        return "-"
    try:
        return describe(dt.datetime.fromtimestamp(checked_time(timestamp, "time"), dt.UTC))
    except TimeRangeError:
        return "an impossible time"


def duration(seconds: float | None) -> str:
    """'10 min 0 s' for a span; 'unknown' for none, a negative one or an impossible one; never raises."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0 or seconds > MAX_DURATION:
        return "unknown"
    minutes, secs = divmod(round(seconds), 60)
    if minutes >= 120:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"
