"""``hostagent-md-event``, mdadm.conf's PROGRAM: mdadm's events reach the audit log, never a shell,
and never a mail of their own (the daemon alerts; tests/vm/test_xen.py shows one mail per failure)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = Path(sys.executable).with_name("hostagent-md-event")


def md_event(state: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROGRAM), *argv, "--state-dir", str(state)], capture_output=True, text=True,
                          timeout=60)


def audit(state: Path) -> list[dict[str, object]]:
    path = state / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_mdadm_events_as_mdadm_passes_them_are_audited(tmp_path: Path) -> None:
    # mdadm runs PROGRAM EVENT ARRAY [MEMBER]: a member event, an array event, a rebuild percentage
    for argv in (("Fail", "/dev/md0", "/dev/sdb1"), ("DegradedArray", "/dev/md/data"), ("Rebuild40", "/dev/md127")):
        done = md_event(tmp_path, *argv)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"recorded mdadm's {argv[0]} for {argv[1]}")
    records = audit(tmp_path)
    assert [(r["mdadm_event"], r["array"], r.get("member")) for r in records] == [
        ("Fail", "/dev/md0", "/dev/sdb1"), ("DegradedArray", "/dev/md/data", None), ("Rebuild40", "/dev/md127", None)]
    assert all(r["event"] == "mdadm" and r["time"] for r in records)


@pytest.mark.parametrize(("argv", "message"), [
    (("Fail", "/dev/md0;reboot"), "array '/dev/md0;reboot': expected a device such as /dev/md0"),
    (("Fail", "/dev/md0", "../../etc/passwd"), "member '../../etc/passwd': expected a device"),
    (("Fail", "/dev/../etc/md0"), "array '/dev/../etc/md0': expected a device"),
    (("Fail`id`", "/dev/md0"), "event 'Fail`id`': expected a word"),
])
def test_hostile_arguments_are_refused_and_nothing_is_written(tmp_path: Path, argv: tuple[str, ...],
                                                              message: str) -> None:
    done = md_event(tmp_path, *argv)
    assert done.returncode == 3 and message in done.stderr, done
    assert audit(tmp_path) == []


def test_an_unwritable_audit_log_is_an_error_mdadm_can_log(tmp_path: Path) -> None:
    (tmp_path / "audit.jsonl").mkdir()  # a directory where the log should be
    done = md_event(tmp_path, "Fail", "/dev/md0", "/dev/sdb1")
    assert done.returncode == 3 and "audit log" in done.stderr and "audit.jsonl" in done.stderr, done
