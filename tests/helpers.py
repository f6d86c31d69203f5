"""Small helpers shared by the tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hostagent.sources.mdstat import MdstatArray

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
EXAMPLES = REPO / "examples" / "hosts"
T = TypeVar("T")


def summarize(array: MdstatArray) -> str:
    """One line per parsed array, compact enough to check by eye against the fixture."""
    head = f"{array.name} {array.state}"
    if array.read_only:
        head += f" ({array.read_only})"
    head += f" {array.personality or '-'}"
    members = " ".join(
        f"{m.device}[{m.desc_nr}]" + "".join(f"({f})" for f in m.flags) for m in array.members
    )
    parts = [head, members]
    if array.blocks is not None:
        parts.append(f"{array.blocks}b")
    if array.superblock:
        parts.append(f"super={array.superblock}")
    if array.raid_disks is not None:
        parts.append(f"[{array.raid_disks}/{array.working_disks}] [{array.slot_map}]")
    if array.chunk_kib is not None:
        parts.append(f"chunk={array.chunk_kib}k")
    if array.sync is not None:
        sync = f"sync={array.sync.action}"
        if array.sync.progress is not None:
            sync += f":{array.sync.progress:.3f}"
        if array.sync.speed_kbps is not None:
            sync += f"@{array.sync.speed_kbps}"
        if array.sync.finish_s is not None:
            sync += f"/eta{array.sync.finish_s}"
        parts.append(sync)
    if array.bitmap is not None:
        parts.append(f"bitmap={array.bitmap.pages_used}/{array.bitmap.pages_total}")
    return " | ".join(parts)


def wait_for(predicate: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Poll until ``predicate`` returns something true, and return it; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def promtool_problems(text: str) -> str:
    """What ``promtool check metrics`` (Debian's prometheus package) says of a metrics text: empty when clean."""
    import subprocess

    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    return (proc.stdout + proc.stderr).strip() + ("" if proc.returncode == 0 else f" (exit {proc.returncode})")


def label_values(text: str, label: str) -> set[str]:
    """Every value ``label`` takes in a metrics text."""
    import re

    return set(re.findall(rf'[{{,]{label}="([^"]*)"', text))
