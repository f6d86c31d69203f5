"""``hostagent watch`` never dies of one cycle: faults injected into the real daemon process
(tests/faults/sitecustomize.py), a real aiosmtpd sink, and systemd's notify protocol on a real
datagram socket."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.helpers import EXAMPLES
from tests.integration.test_alerts import sink_server
from tests.integration.test_cli import hostagent
from tests.integration.test_watch import config

REPO = Path(__file__).resolve().parent.parent.parent
FAULTS = REPO / "tests" / "faults"


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def test_a_failing_cycle_and_a_raising_check_leave_the_daemon_running_and_alerting(tmp_path: Path) -> None:
    state = tmp_path / "state"
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(0.2)
    messages: list[str] = []
    listening = threading.Event()

    def listen() -> None:  # as systemd does: read every datagram as it comes
        while not listening.is_set():
            try:
                messages.append(notify.recv(4096).decode())
            except TimeoutError:
                continue

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()

    with sink_server() as (smtp, sink):
        conf = config(tmp_path, smtp.port)
        env = {**os.environ, "PYTHONPATH": f"{FAULTS}:{REPO}", "NOTIFY_SOCKET": notify_path,
               "WATCHDOG_USEC": "400000",
               "HOSTAGENT_TEST_FAULTS": json.dumps({"check_raises": "smart", "inventory_fails": 3})}
        log = tmp_path / "watch.log"
        with log.open("w") as handle:
            daemon = subprocess.Popen([sys.executable, "-m", "hostagent", "--config", str(conf), "watch",
                                       "--root", str(EXAMPLES / "failed-member"), "--state-dir", str(state)],
                                      env=env, stdout=subprocess.DEVNULL, stderr=handle, cwd=REPO)
        try:
            wait_until(lambda: any("cycle failed" in m["subject"] for m in sink.messages), 60,
                       "the agent.cycle_failed alert")
            wait_until(lambda: any(m["subject"].startswith("[hostagent] RESOLVED daemon/cycle") for m in sink.messages),
                       60, "the cycle failure resolved by a clean cycle")
            status = json.loads(hostagent("--config", str(conf), "status", "--json", "--state-dir",
                                          str(state)).stdout)
            text = hostagent("--config", str(conf), "status", "--state-dir", str(state)).stdout
            assert daemon.poll() is None, log.read_text()  # still running
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
            time.sleep(0.5)
            listening.set()
            listener.join()
    notify.close()
    assert daemon.returncode == 0, log.read_text()
    err = log.read_text()
    assert "Traceback" not in err, err
    failed = next(m for m in sink.messages if "cycle failed" in m["subject"])
    assert failed["subject"] == "[hostagent] CRITICAL daemon/cycle cycle failed on hv-failed", failed["subject"]
    assert "injected I/O error reading the inventory" in failed["body"]
    # the cycle failed three times in a row but was logged once; it ran clean afterwards
    assert err.count("injected I/O error reading the inventory") == 1, err
    # the other checks ran: the degraded array was alerted, the raising check is a finding of its own
    subjects = [m["subject"] for m in sink.messages]
    assert "[hostagent] CRITICAL md0 degraded on hv-failed (+1 more)" in subjects, subjects
    assert "[hostagent] UNKNOWN smart failed on hv-failed" in subjects, subjects
    codes = {p["code"] for p in status["open_problems"]}
    assert {"md.degraded", "check.failed"} <= codes and "agent.cycle_failed" not in codes, codes
    assert "injected I/O error" in status["last_error"]["error"] and status["failing"] == {}
    assert re.search(r"last error: \S+ \S+ cycle: OSError: \[Errno 5\] injected I/O error", text), text
    # systemd's protocol: ready, watchdog pings while running, stopping at the end
    assert messages and messages[0].startswith("READY=1"), messages
    assert sum("WATCHDOG=1" in m for m in messages) >= 3, messages
    assert any(m.startswith("STATUS=CRITICAL") for m in messages) and messages[-1] == "STOPPING=1", messages


def test_the_watch_textfile_holds_the_same_md_samples_as_check_prom(tmp_path: Path) -> None:
    """The daemon's report and textfile carry the whole inventory, as ``check --prom`` writes it."""
    checked, watched = tmp_path / "check.prom", tmp_path / "watch.prom"
    conf = tmp_path / "hostagent.toml"
    conf.write_text(f'[agent]\nprom_file = "{watched}"\n[alerts]\nenabled = false\n'
                    'elsewhere = "this test reads the textfile"\n')
    root = str(EXAMPLES / "failed-member")
    hostagent("--config", str(conf), "check", "--root", root, "--prom", str(checked))
    run = hostagent("--config", str(conf), "watch", "--once", "--root", root, "--state-dir", str(tmp_path / "s"))
    assert run.returncode == 0, run.stderr

    def md_samples(path: Path) -> list[str]:
        return sorted(line for line in path.read_text().splitlines() if line.startswith("hostagent_md_"))

    assert md_samples(checked) and md_samples(watched) == md_samples(checked)
    assert 'hostagent_md_member_faulty{array="md0",device="sda2"} 1' in md_samples(watched)
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert [a["name"] for a in report["inventory"]["arrays"]] == ["md0"]
    last_runs = [line for line in watched.read_text().splitlines()
                 if line.startswith("hostagent_last_run_timestamp_seconds{")]
    assert {re.search(r'check="(\w+)"', line).group(1) for line in last_runs} == {  # type: ignore[union-attr]
        "md", "hung", "smart", "erc", "boot", "net"}
    assert all(float(line.split()[-1]) > 1.7e9 for line in last_runs)


def test_a_status_file_that_cannot_be_written_is_a_finding_and_the_rest_is_written(tmp_path: Path) -> None:
    """status.json is a directory (as a full or broken disk would refuse it): report.json and the
    textfile are still written, and the failure is alerted."""
    state = tmp_path / "state"
    (state / "status.json").mkdir(parents=True)
    prom = tmp_path / "watch.prom"
    with sink_server() as (smtp, sink):
        conf = config(tmp_path, smtp.port, f'[agent]\nprom_file = "{prom}"\n')
        run = hostagent("--config", str(conf), "watch", "--once", "--root", str(EXAMPLES / "failed-member"),
                        "--state-dir", str(state))
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert (state / "report.json").is_file() and "hostagent_md_array_degraded" in prom.read_text()
    subjects = [m["subject"] for m in sink.messages]
    assert any(s.startswith("[hostagent] CRITICAL daemon/writing") and "status.json" in s for s in subjects), subjects
