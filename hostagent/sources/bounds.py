"""What the kernel can produce, so a number outside it is a ParseError naming the file and line,
never a loop over a billion slots or a "-99999999999999999997 of 2 members working".

- md members: a 1.x superblock holds at most 1920 device roles (0.90: 27); the descriptor numbers
  in /proc/mdstat stay below 65536.
- counters and sizes: unsigned 64-bit.
- digits: ASCII only (Python's ``int()`` and ``\\d`` also take "٣" and friends, ``isdigit`` takes "²").
"""

from __future__ import annotations

import re

from hostagent.errors import ParseError

MAX_MEMBERS = 1920
MAX_DESCRIPTOR = 65535
MAX_U64 = 2**64 - 1
_DIGITS = re.compile(r"[0-9]{1,20}")


def number(text: str, source: str, line: int | None, what: str, high: int = MAX_U64, low: int = 0) -> int:
    """``text`` as a decimal integer from ``low`` to ``high``, or ParseError saying what came instead."""
    value = text.strip()
    label = f"{what}: " if what else ""
    if not _DIGITS.fullmatch(value):
        raise ParseError(source, line, f"{label}expected a number, got {value[:40]!r}")
    result = int(value)
    if not low <= result <= high:
        raise ParseError(source, line, f"{label}{result} is outside {low}..{high}")
    return result
