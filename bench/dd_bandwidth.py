"""The write bandwidth of a directory, as ``dd oflag=direct`` measures it: the anchor for save throughput."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path


def dd_bandwidth(directory: Path, mib: int) -> float:
    """Bytes per second written to ``directory`` with O_DIRECT (``mib`` MiB of zeros, removed after)."""
    target = directory / "hostagent-dd.test"
    try:
        out = subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={mib}", "oflag=direct"],
                             capture_output=True, text=True, check=True).stderr
    finally:
        target.unlink(missing_ok=True)
    match = re.search(r"^(\d+) bytes .* copied, ([\d.]+) s", out, re.MULTILINE)
    if match is None:
        raise SystemExit(f"cannot read dd's output: {out}")
    return int(match.group(1)) / float(match.group(2))
