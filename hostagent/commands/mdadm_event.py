"""``hostagent md-event EVENT ARRAY [MEMBER]``: mdadm's monitor hands its events to hostagent.

The Ansible role sets ``PROGRAM`` in mdadm.conf to this command and drops ``MAILADDR``, so
``mdadm --monitor`` (which also moves spares between arrays of one spare-group) keeps running but
sends no mail of its own: hostagent's daemon sees the same change through POLLPRI on /proc/mdstat
and alerts once, in its own words.  The event is kept in the audit log, as mdadm's testimony.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hostagent.actions import AuditLog
from hostagent.errors import HostagentError
from hostagent.names import is_kernel_name

# mdadm(8), "MONITOR MODE", lists DeviceDisappeared, RebuildStarted, RebuildNN (the percentage),
# RebuildFinished, Fail, FailSpare, SpareActive, NewArray, DegradedArray, MoveSpare, SparesMissing and
# TestMessage.  A later mdadm may add names: any word is kept, nothing else.
_EVENT = re.compile(r"[A-Za-z][A-Za-z0-9]{0,39}")


def device_path(text: str, what: str) -> str:
    """``/dev/md0``, ``/dev/md/name`` or ``/dev/sdb1`` as mdadm passes them; anything else is refused."""
    name = text.removeprefix("/dev/")
    parts = name.split("/")
    if text.startswith("/dev/") and len(parts) <= 2 and all(is_kernel_name(p) for p in parts) \
            and (len(parts) == 1 or parts[0] == "md"):
        return text
    raise HostagentError(f"{what} {text!r}: expected a device such as /dev/md0, /dev/md/name or /dev/sdb1")


def record(state_dir: Path, event: str, array: str, member: str | None, as_json: bool) -> int:
    if not _EVENT.fullmatch(event):
        raise HostagentError(f"event {event!r}: expected a word such as Fail, DegradedArray or Rebuild40")
    entry = {"event": "mdadm", "mdadm_event": event, "array": device_path(array, "array")}
    if member is not None:
        entry["member"] = device_path(member, "member")
    AuditLog(state_dir).record(entry)
    print(json.dumps(entry) if as_json else
          f"recorded mdadm's {event} for {array}{' (' + member + ')' if member else ''} in {state_dir}")
    return 0
