"""When to run SMART self-tests (pure): smartd's ``-s`` schedule, and never two members of one array
at once, nor any during a resync or a maintenance.

The schedule is smartd's own syntax (smartd.conf(5), ``-s REGEXP``): each hour of local time is
written ``T/MM/DD/d/HH`` (T the test type, d the day of the week, 1 = Monday), and a test of type
T is due in the hours the regular expression matches in full.  hostagent runs L (long) and S
(short); when both match one hour, the long test runs.  The default, short tests daily at 02:00
and long ones on Saturdays at 03:00, is ``(S/../.././02|L/../../6/03)``.

A due test waits in the state (``pending``) until its disk may start; the drives' own status says
which tests run.  The side effects (smartctl) are in hostagent/actions/selftest.py.
"""

from __future__ import annotations

import re
import time

from hostagent.records import record

DEFAULT_SCHEDULE = "(S/../.././02|L/../../6/03)"
KINDS = {"L": "long", "S": "short"}  # the letters smartd's -s knows that every transport runs
RANK = {"short": 1, "long": 2}
LOOKBACK = 8 * 86400.0  # after a long stop, the hours of the last week (one of each test at most) count
HOUR = 3600.0


def compile_schedule(text: str) -> re.Pattern[str]:
    """The schedule as a pattern; ValueError saying what is wrong (the config names the key)."""
    try:
        return re.compile(text)
    except re.error as err:
        raise ValueError(f"not a regular expression ({err}); smartd's -s syntax: (S/../.././02|L/../../6/03)") \
            from None


def hour_stamp(letter: str, when: float) -> str:
    local = time.localtime(when)
    return f"{letter}/{local.tm_mon:02d}/{local.tm_mday:02d}/{local.tm_wday + 1}/{local.tm_hour:02d}"


def due(schedule: re.Pattern[str], after: float, until: float) -> list[tuple[float, str]]:
    """(the hour's start, the kind) for each hour that starts in (after, until] and matches; the
    hour ``until`` is in counts once its start has passed."""
    after = max(after, until - LOOKBACK)
    hour = (int(after // HOUR) + 1) * HOUR
    found = []
    while hour <= until:
        for letter in ("L", "S"):  # the long test wins an hour both match
            if schedule.fullmatch(hour_stamp(letter, hour)):
                found.append((hour, KINDS[letter]))
                break
        hour += HOUR
    return found


@record(frozen=True)
class Decision:
    start: tuple[tuple[str, str], ...]  # (disk, kind), in the order to start them
    waiting: dict[str, str]  # disk -> why it waits


def plan(pending: dict[str, str], running: set[str], peers: dict[str, set[str]], busy: str | None) -> Decision:
    """Which pending tests start now.  ``peers``: each disk -> the disks it shares an array with;
    ``busy``: why no test may start at all (a resync, a maintenance), or None."""
    if busy is not None:
        return Decision((), {disk: busy for disk in pending})
    taken = set(running)
    start, waiting = [], {}
    for disk in sorted(pending, key=lambda d: (-RANK.get(pending[d], 0), d)):
        if disk in running:
            waiting[disk] = f"{disk} is running a self-test"
            continue
        sharing = sorted(peers.get(disk, set()) & taken)
        if sharing:
            waiting[disk] = f"{', '.join(sharing)}, in an array with {disk}, is under test"
            continue
        start.append((disk, pending[disk]))
        taken.add(disk)
    return Decision(tuple(start), waiting)


def merge_due(pending: dict[str, str], disks: list[str], kinds: list[str]) -> dict[str, str]:
    """``pending`` with each disk due for the strongest of ``kinds`` (a long test covers a short one)."""
    merged = dict(pending)
    for kind in kinds:
        for disk in disks:
            if RANK[kind] > RANK.get(merged.get(disk, ""), 0):
                merged[disk] = kind
    return merged
