"""tests/suite.py, `make test`'s runner: it reads pytest's closing lines into the counts it prints."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.suite import closing_line, counts, process_start, write_json


def test_the_closing_line_with_its_rule_is_read_in_full() -> None:
    output = "tests/x.py ..F\n====== 3 failed, 820 passed, 2 skipped in 1620.31s (0:27:00) ======\n"
    assert counts(output) == {"failed": 3, "passed": 820, "skipped": 2}


def test_the_quiet_closing_line_and_errors_are_read() -> None:
    assert counts("....\n37 passed in 15.02s\n") == {"passed": 37}
    assert counts("== 1 error in 3.0s ==\n") == {"errors": 1}
    assert counts("== 2 failed, 1 passed, 3 errors in 9.1s ==\n") == {"failed": 2, "passed": 1, "errors": 3}


def test_output_without_a_closing_line_counts_nothing() -> None:
    assert counts("All checks passed!\nSuccess: no issues found in 120 source files\n") == {}
    assert counts("tests/a.py::test_x 12 passed earlier in the log\n") == {}


def test_only_the_last_line_counts_not_a_captured_one() -> None:
    output = "tests/a.py F\n----- Captured stdout -----\n== 5 passed in 1.0s ==\n== 1 failed, 2 passed in 3.3s ==\n"
    assert counts(output) == {"failed": 1, "passed": 2}
    coloured = "\x1b[31m== \x1b[1m1 failed\x1b[0m, \x1b[32m2 passed\x1b[0m in 3.3s ==\x1b[0m\n"
    assert counts(coloured) == {"failed": 1, "passed": 2}
    assert counts("== 5 passed in 1.0s ==\nTraceback (most recent call last):\nKeyError: 'x'\n") == {}
    assert counts("    7 passed in 3.2s\n") == {}


def test_the_closing_line_never_says_none_failed_when_a_part_failed() -> None:
    parts: dict[str, dict[str, object]] = {"lint": {"ok": False, "tests": {}}, "fuzz": {"ok": True,
                                                                                       "tests": {"passed": 37}}}
    assert closing_line(parts, ok=False) == "37 passed, 1 failed"
    parts["the rest"] = {"ok": False, "tests": {"passed": 800, "failed": 2, "errors": 1, "skipped": 3}}
    assert closing_line(parts, ok=False) == "837 passed, 3 failed, 3 skipped"
    assert closing_line({"x": {"ok": True, "tests": {"passed": 4}}}, ok=True) == "4 passed, 0 failed"


def test_a_zombie_or_a_reused_pid_is_no_producer(tmp_path: Path) -> None:
    assert process_start(os.getpid()) is not None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while process_start(child.pid) is not None and time.monotonic() < deadline:  # exited, not yet reaped
        time.sleep(0.05)
    assert Path(f"/proc/{child.pid}").exists()  # a zombie still has its /proc entry
    assert process_start(child.pid) is None
    child.wait()
    assert process_start(child.pid) is None


def test_the_waiting_process_fails_at_once_when_the_producer_is_gone_or_failed(tmp_path: Path) -> None:
    from tests.vm import xen_dom0

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    write_json(tmp_path / "producer.json", {"pid": child.pid, "start": process_start(child.pid)})
    child.wait()
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"ended without a snapshot"):
        xen_dom0.wait_for_snapshot(tmp_path, timeout=60)
    assert time.monotonic() - started < 30  # not the whole timeout
    # the pid taken by another process since: its start time differs
    write_json(tmp_path / "producer.json", {"pid": os.getpid(), "start": 1})
    with pytest.raises(pytest.fail.Exception, match=r"ended without a snapshot"):
        xen_dom0.wait_for_snapshot(tmp_path, timeout=60)
    write_json(tmp_path / "producer.json", {"pid": os.getpid(), "start": process_start(os.getpid())})
    write_json(tmp_path / "failed.json", {"error": "AssertionError: the first site.yml run failed"})
    with pytest.raises(pytest.fail.Exception, match=r"first site.yml run failed"):
        xen_dom0.wait_for_snapshot(tmp_path, timeout=60)
    write_json(tmp_path / "ready.json", {"state": "/s/state", "disks": ["/s/disk.img"], "memory_mib": 2048,
                                         "host_key": "ssh-ed25519 AAAA"})
    found = xen_dom0.wait_for_snapshot(tmp_path, timeout=60)
    assert found.state == Path("/s/state") and found.machine.disks == [Path("/s/disk.img")]


def test_a_producer_without_a_snapshot_in_time_is_named(tmp_path: Path) -> None:
    from tests.vm import xen_dom0

    write_json(tmp_path / "producer.json", {"pid": os.getpid(), "start": process_start(os.getpid())})
    (tmp_path / "ready.json").write_text('{"state": ')  # half written: never read as ready
    with pytest.raises(pytest.fail.Exception, match=r"no snapshot of the installed dom0 .* after 3 s"):
        xen_dom0.wait_for_snapshot(tmp_path, timeout=3)
