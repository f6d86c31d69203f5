"""Kernel messages from /dev/kmsg (Documentation/ABI/testing/dev-kmsg): records since a sequence number."""

from __future__ import annotations

import errno
import os
import re

from hostagent.host import Host
from hostagent.records import record

_RECORD = re.compile(r"^(?P<prio>[0-9]{1,3}),(?P<seq>[0-9]{1,20}),(?P<usec>[0-9]{1,20}),[^;]*;(?P<message>.*)$")
SIGNS = ("blocked for more than", "I/O error", "reset", "timing out command", "Disk failure", "offline",
         "rejecting I/O", "Buffer I/O error", "task abort")


@record(frozen=True)
class KernelMessage:
    seq: int
    usec: int
    message: str


def parse_record(line: str) -> KernelMessage | None:
    match = _RECORD.match(line)
    if not match:
        return None  # continuation lines (" SUBSYSTEM=...") and anything else
    return KernelMessage(int(match["seq"]), int(match["usec"]), match["message"])


def read_kmsg(host: Host, limit: int = 4096) -> list[KernelMessage]:
    """The kernel's message buffer; never blocks (O_NONBLOCK), empty where it cannot be read."""
    if host.is_snapshot:
        text = host.read_optional("/dev/kmsg") or ""
        return [m for line in text.splitlines() if (m := parse_record(line))]
    try:
        fd = os.open(host.path("/dev/kmsg"), os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return []
    messages: list[KernelMessage] = []
    try:
        while len(messages) < limit:
            try:
                record = os.read(fd, 8192)
            except OSError as err:
                if err.errno == errno.EPIPE:  # overwritten while reading: skip ahead
                    continue
                break  # EAGAIN: no more records
            if not record:
                break
            parsed = parse_record(record.decode(errors="replace").split("\n", 1)[0])
            if parsed:
                messages.append(parsed)
    finally:
        os.close(fd)
    return messages


def about(messages: list[KernelMessage], names: tuple[str, ...]) -> list[str]:
    """Messages that name one of the devices and look like trouble."""
    return [m.message for m in messages
            if any(n in m.message for n in names) and any(sign in m.message for sign in SIGNS)]
