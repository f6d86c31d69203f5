"""hostagent watch reacts to a member's stuck counters the second its clock reaches
``hung_after``, not at the hung check's next scheduled run (here an hour away)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.snapshots import member_dir, sata_mirror


def report(state: Path) -> dict[str, object] | None:
    try:
        return json.loads((state / "report.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def test_a_stuck_member_is_found_between_scheduled_runs(tmp_path: Path) -> None:
    root, state = tmp_path / "host", tmp_path / "state"
    sata_mirror(root)
    conf = tmp_path / "hostagent.toml"
    conf.write_text("[watch]\nmd_interval = 3600\nhung_interval = 3600\nsmart_interval = 3600\nerc_interval = 3600\n"
                    "boot_interval = 3600\nnet_interval = 3600\n[checks.hung]\nhung_after = 3\n")
    daemon = subprocess.Popen([sys.executable, "-m", "hostagent", "--config", str(conf), "watch", "--root", str(root),
                               "--state-dir", str(state)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while report(state) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        first = report(state)
        assert first is not None and not [f for f in first["findings"] if f["code"] == "disk.hung"]  # type: ignore[index, union-attr]
        (member_dir(root, "sdb") / "inflight").write_text("0 1\n")  # a write held; nothing completes
        found = None
        while found is None and time.monotonic() < deadline + 30:
            current = report(state) or {"findings": []}
            found = next((f for f in current["findings"] if f["code"] == "disk.hung"), None)  # type: ignore[attr-defined]
            time.sleep(0.2)
        assert found is not None, "the hung check never ran between its scheduled runs"
        assert found["subject"] == "md0/sdb1"
        # the sampler looks about once a second: the clock read 3 s or a little more
        assert re.search(r"1 I/O in flight and none completed for [34] s", found["detail"]), found["detail"]
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
    assert "sdb1: stalled, crawling or unanswered for 3 s: running the hung check now" in stderr
