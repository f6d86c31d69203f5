"""The alert path under faults (docs/reliability.md, first table): a real ``hostagent watch`` daemon,
a real aiosmtpd server, a hook program as the second route, and faults injected into the process
(tests/faults/sitecustomize.py), into the disk (a small tmpfs) and into the mail server.

Every row asserts "nothing lost": each expected alert reaches a working route, and at every point
no alert is recorded in the state without a delivery or a spooled entry.  The figure across all
rows (alerts delivered = alerts expected) is summed in ``TALLY`` and checked by the last test.
"""

from __future__ import annotations

import contextlib
import email.policy
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.helpers import EXAMPLES

REPO = Path(__file__).resolve().parent.parent.parent
FAULTS = REPO / "tests" / "faults"
OPS, PAGER = "ops@example.com", "pager@example.com"
# the failed-member example raises two alerts, md0 degraded (CRITICAL: ops and pager) and the failed
# member (WARNING: ops only), which are one incident: one mail, to the worse alert's recipients
EXPECTED = {"[hostagent] CRITICAL md0 degraded on hv-failed (+1 more)": {OPS, PAGER}}
TALLY: dict[str, tuple[int, int]] = {}  # row -> (alerts expected, alerts delivered)


class Mailbox:
    """An aiosmtpd handler whose answers the test changes: 4xx for DATA, 5xx for one recipient."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.data_4xx = 0  # answer this many DATA commands with 451
        self.refuse: set[str] = set()  # RCPT TO answered with 550
        self.lock = threading.Lock()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return f"550 5.1.1 <{address}>: no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            if self.data_4xx > 0:
                self.data_4xx -= 1
                return "451 4.3.0 try again later"
        parsed = message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append({"to": list(envelope.rcpt_tos), "subject": str(parsed["Subject"]).strip(),
                              "id": str(parsed["Message-ID"]).strip(),
                              "body": parsed.get_payload(decode=True).decode().replace("\r\n", "\n")})
        return "250 OK"

    def delivered(self) -> dict[str, set[str]]:
        """Alert subject -> the recipients that got it."""
        found: dict[str, set[str]] = {}
        for message in self.messages:
            found.setdefault(message["subject"], set()).update(message["to"])
        return found

    def ids(self, subject: str) -> set[str]:
        return {m["id"] for m in self.messages if m["subject"] == subject}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def mail_server(port: int, mailbox: Mailbox) -> Iterator[Controller]:
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@contextlib.contextmanager
def silent_server(port: int) -> Iterator[None]:
    """Accepts connections and never completes its SMTP banner: one byte every second, never a line
    end, so no single read times out and only the courier's hard deadline ends the attempt."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                held.append(listener.accept()[0])

    def drip() -> None:
        while not stop.wait(1.0):
            for connection in list(held):
                with contextlib.suppress(OSError):
                    connection.send(b"2")

    threading.Thread(target=drip, daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()


STARTED: list[subprocess.Popen[bytes]] = []  # every daemon a test started: none outlives its test


@pytest.fixture(autouse=True)
def no_daemon_left_behind() -> Iterator[None]:
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:  # the test failed before stopping it
            process.kill()
            process.wait(timeout=30)


class Daemon:
    """``hostagent watch`` on a snapshot root, with a state directory, a hook and optional faults."""

    def __init__(self, tmp: Path, port: int, root: Path, state: Path, faults: dict[str, Any] | None = None) -> None:
        self.tmp, self.state, self.root = tmp, state, root
        self.hook_log = tmp / "hook.jsonl"
        hook = tmp / "hook"
        hook.write_text(f"#!/bin/sh\ncat >> {self.hook_log}\necho >> {self.hook_log}\n")
        hook.chmod(0o755)
        self.config = tmp / "hostagent.toml"
        self.config.write_text(
            f'[agent]\nrpc_socket = ""\n[watch]\nmd_interval = 1\nhung_interval = 1\n'
            f'[alerts]\nhook = "{hook}"\nretry_interval = 1\n'
            f'[alerts.smtp]\nhost = "127.0.0.1"\nport = {port}\ntimeout = 2\n'
            f'[[alerts.routes]]\nto = ["{OPS}"]\n[[alerts.routes]]\nto = ["{PAGER}"]\nmin_severity = "critical"\n')
        self.faults = faults or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tmp / "watch.log"

    def start(self, faults: dict[str, Any] | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": f"{FAULTS}:{REPO}",
               "HOSTAGENT_TEST_FAULTS": json.dumps(self.faults if faults is None else faults)}
        with self.log.open("a") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hostagent", "--config", str(self.config), "watch", "--root", str(self.root),
                 "--state-dir", str(self.state)], env=env, stdout=subprocess.DEVNULL, stderr=handle, cwd=REPO)
        STARTED.append(self.process)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        assert "Traceback" not in self.log.read_text(), self.log.read_text()
        return code

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)

    def hooked(self) -> set[str]:
        """(code, subject) of every alert the hook got."""
        if not self.hook_log.exists():
            return set()
        found = set()
        for line in self.hook_log.read_text().splitlines():
            if line.strip():
                event = json.loads(line)
                found.add(f"{event['code']} {event['subject']}")
        return found

    def recorded(self) -> dict[str, dict[str, Any]]:
        """The alert state as the daemon committed it: key -> record."""
        path = self.state / "state.db"
        if not path.exists():
            return {}
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
            rows = db.execute("SELECT key, value FROM kv WHERE key LIKE 'alert.%'").fetchall()
        return {key: json.loads(value) for key, value in rows}

    def spooled_ids(self) -> set[str]:
        """The Message-IDs waiting in the outbox."""
        found = set()
        for path in (self.state / "spool").glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                found.add(json.loads(path.read_text())["message_id"])
        return found

    def outbox_ids(self) -> dict[str, set[str]]:
        """Message-ID -> the alerts it carries ("code subject"), from the outbox's waiting and sent
        entries: the event's own record of itself, whatever the audit log could write."""
        found: dict[str, set[str]] = {}
        for path in [*(self.state / "spool").glob("*.json"), *(self.state / "spool/sent").glob("*.json")]:
            with contextlib.suppress(OSError, ValueError):
                entry = json.loads(path.read_text())
                found.setdefault(entry["message_id"], set()).update(
                    key.replace("|", " ", 1) for key in entry.get("records", {}))
        return found

    def audited_ids(self) -> dict[str, set[str]]:
        """Message-ID -> the alerts it carries ("code subject"; one incident's mail carries several),
        from the audit log's alert records."""
        path = self.state / "audit.jsonl"
        found: dict[str, set[str]] = {}
        for line in path.read_text().splitlines() if path.exists() else []:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == "alert" and entry.get("spooled"):
                    found.setdefault(entry["message_id"], set()).add(f"{entry['code']} {entry['subject']}")
        return found


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, daemon: Daemon | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    log = daemon.log.read_text() if daemon is not None and daemon.log.exists() else ""
    raise AssertionError(f"not within {timeout:g} s: {what}\n{log[-3000:]}")


def nothing_marked_sent_without_delivery_or_spool(daemon: Daemon, mailbox: Mailbox) -> None:
    """Every open alert in the committed state was delivered, or is waiting in the outbox."""
    delivered_ids = {m["id"] for m in mailbox.messages}
    waiting = daemon.spooled_ids()
    audited = daemon.audited_ids()
    for message_id, carried in daemon.outbox_ids().items():
        audited.setdefault(message_id, set()).update(carried)
    for key, record in daemon.recorded().items():
        if record["status"] != "open" or not key.startswith("alert.md."):
            continue
        what = f"{record['code']} {record['subject']}"
        ids = {mid for mid, carried in audited.items() if what in carried}
        assert ids & (delivered_ids | waiting), (key, ids, delivered_ids, waiting)


def all_expected_delivered(mailbox: Mailbox) -> bool:
    got = mailbox.delivered()
    return all(recipients <= got.get(subject, set()) for subject, recipients in EXPECTED.items())


def tally(row: str, mailbox: Mailbox) -> None:
    got = mailbox.delivered()
    delivered = sum(1 for subject, recipients in EXPECTED.items() if recipients <= got.get(subject, set()))
    for subject in EXPECTED:  # at least once, and one Message-ID per alert event: repeats can be dropped
        assert len(mailbox.ids(subject)) == 1, (row, subject, mailbox.ids(subject))
    TALLY[row] = (len(EXPECTED), delivered)
    assert delivered == len(EXPECTED), (row, got)


@pytest.fixture
def failed_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(EXAMPLES / "failed-member", root)
    return root


def test_row_spool_write_fails_once(tmp_path: Path, failed_root: Path) -> None:
    port, mailbox = free_port(), Mailbox()
    daemon = Daemon(tmp_path, port, failed_root, tmp_path / "state", {"spool_fails": 1})
    with mail_server(port, mailbox):
        daemon.start()
        wait_until(lambda: all_expected_delivered(mailbox), 60, "both alerts delivered", daemon)
        wait_until(lambda: len(daemon.recorded()) >= 2, 30, "the alert state committed", daemon)
        nothing_marked_sent_without_delivery_or_spool(daemon, mailbox)
        assert daemon.stop() == 0
    assert "No space left on device (injected)" in daemon.log.read_text()
    assert {"md.degraded md0", "md.failed_member md0/sda2"} <= daemon.hooked()
    tally("the spool write fails once", mailbox)


def test_row_the_disk_is_full(tmp_path: Path) -> None:
    """The state directory on a 2 MiB tmpfs, filled to the last byte after the daemon started on a
    healthy host; then the array fails.  The mail goes out from memory, the hook runs, nothing is
    recorded as sent; once space is freed the state catches up without a second message."""
    root = tmp_path / "root"
    shutil.copytree(EXAMPLES / "healthy-mirror", root)
    (root / "proc/sys/kernel").mkdir(parents=True, exist_ok=True)
    (root / "proc/sys/kernel/hostname").write_text("hv-failed\n")
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(state)], check=True)
    try:
        port, mailbox = free_port(), Mailbox()
        daemon = Daemon(tmp_path, port, root, state)
        with mail_server(port, mailbox):
            daemon.start()
            wait_until(lambda: (state / "status.json").exists(), 60, "the daemon's first cycle", daemon)
            filler = state / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 512)
            os.close(fd)
            shutil.copy(EXAMPLES / "failed-member/proc/mdstat", root / "proc/mdstat")
            wait_until(lambda: all_expected_delivered(mailbox), 60, "both alerts delivered from memory", daemon)
            nothing_marked_sent_without_delivery_or_spool(daemon, mailbox)
            assert {"md.degraded md0", "md.failed_member md0/sda2"} <= daemon.hooked()
            filler.unlink()
            wait_until(lambda: {"alert.md.degraded|md0", "alert.md.failed_member|md0/sda2"} <= set(daemon.recorded()),
                       60, "the alert state committed once space was back", daemon)
            time.sleep(3)  # a few more cycles: nothing is sent twice
            assert daemon.stop() == 0
        log = daemon.log.read_text()
        assert "No space left on device" in log or "database or disk is full" in log, log
        tally("the disk is full", mailbox)
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def test_row_smtp_down_then_up(tmp_path: Path, failed_root: Path) -> None:
    port, mailbox = free_port(), Mailbox()
    daemon = Daemon(tmp_path, port, failed_root, tmp_path / "state")
    daemon.start()
    wait_until(lambda: len(daemon.spooled_ids()) >= 1 and len(daemon.recorded()) >= 2, 60,
               "alerts spooled and recorded while SMTP is down", daemon)
    nothing_marked_sent_without_delivery_or_spool(daemon, mailbox)
    with mail_server(port, mailbox):
        wait_until(lambda: all_expected_delivered(mailbox), 60, "delivered once SMTP is up", daemon)
        wait_until(lambda: not daemon.spooled_ids(), 30, "the spool emptied", daemon)
        assert daemon.stop() == 0
    tally("SMTP is down", mailbox)


def test_row_smtp_slow_never_sends_its_banner(tmp_path: Path, failed_root: Path) -> None:
    """The checks keep their pace while the courier waits on a server that never answers."""
    port, mailbox = free_port(), Mailbox()
    daemon = Daemon(tmp_path, port, failed_root, tmp_path / "state")
    with silent_server(port):
        daemon.start()
        wait_until(lambda: (daemon.state / "status.json").exists(), 60, "the first cycle", daemon)
        cycles = set()
        deadline = time.monotonic() + 12  # two of the courier's hard deadlines (3 x timeout 2 s)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                cycles.add(json.loads((daemon.state / "status.json").read_text())["last_cycle"]["at"])
            time.sleep(0.2)
        assert len(cycles) >= 6, cycles  # md and hung every second: the main loop never waited on SMTP
        assert mailbox.messages == []
        nothing_marked_sent_without_delivery_or_spool(daemon, mailbox)
    with mail_server(port, mailbox):
        wait_until(lambda: all_expected_delivered(mailbox), 60, "delivered once the server answers", daemon)
        assert daemon.stop() == 0
    assert f"127.0.0.1:{port}: not done within 6 s" in daemon.log.read_text()
    tally("SMTP is slow (no banner)", mailbox)


def test_row_smtp_answers_4xx(tmp_path: Path, failed_root: Path) -> None:
    port, mailbox = free_port(), Mailbox()
    mailbox.data_4xx = 3
    daemon = Daemon(tmp_path, port, failed_root, tmp_path / "state")
    with mail_server(port, mailbox):
        daemon.start()
        wait_until(lambda: all_expected_delivered(mailbox), 60, "delivered after the 451s", daemon)
        nothing_marked_sent_without_delivery_or_spool(daemon, mailbox)
        assert daemon.stop() == 0
    assert "451 4.3.0 try again later" in daemon.log.read_text()
    assert not (daemon.state / "spool/failed").exists()  # transient: never set aside
    tally("SMTP answers 4xx", mailbox)


def test_row_smtp_answers_5xx_for_one_recipient(tmp_path: Path, failed_root: Path) -> None:
    """The pager's address is refused for good: ops gets every alert, plus one about the refused
    route; the refusal is shown by hostagent status and never retried."""
    port, mailbox = free_port(), Mailbox()
    mailbox.refuse = {PAGER}
    daemon = Daemon(tmp_path, port, failed_root, tmp_path / "state")
    with mail_server(port, mailbox):
        daemon.start()
        wait_until(lambda: any("recipient refused" in m["subject"] for m in mailbox.messages), 60,
                   "the refused recipient alerted through the other route", daemon)
        status = subprocess.run([sys.executable, "-m", "hostagent", "--config", str(daemon.config), "status",
                                 "--state-dir", str(daemon.state)], capture_output=True, text=True, cwd=REPO)
        nothing_marked_sent_without_delivery_or_spool(daemon, mailbox)
        assert daemon.stop() == 0
    got = mailbox.delivered()
    for subject in EXPECTED:
        assert OPS in got[subject] and PAGER not in got[subject]
    refused = next(m for m in mailbox.messages if "recipient refused" in m["subject"])
    assert refused["subject"] == f"[hostagent] CRITICAL {PAGER} recipient refused on hv-failed"
    assert "550 5.1.1" in refused["body"] and refused["to"] == [OPS]
    assert f"REFUSED recipient {PAGER}: 550 5.1.1" in status.stdout, status.stdout
    assert f"alert.recipient_refused  {PAGER}" in status.stdout, status.stdout
    assert not daemon.spooled_ids()  # nothing is retried for the refused address
    # the alerts reached a working route: ops for both, and the hook
    TALLY["SMTP answers 5xx for one recipient"] = (len(EXPECTED), sum(OPS in got[s] for s in EXPECTED))
    assert TALLY["SMTP answers 5xx for one recipient"] == (1, 1)


def test_row_sigkill_between_spooling_and_sending(tmp_path: Path, failed_root: Path) -> None:
    """Killed right after the first message is fsync'd into the spool, before it is sent and before
    the state records it: after the restart each alert is delivered, under one Message-ID."""
    port, mailbox = free_port(), Mailbox()
    daemon = Daemon(tmp_path, port, failed_root, tmp_path / "state")
    with mail_server(port, mailbox):
        daemon.start({"kill_after_spool": True})
        assert daemon.process is not None
        daemon.process.wait(timeout=60)
        assert daemon.process.returncode == -signal.SIGKILL
        assert len(daemon.spooled_ids()) == 1 and daemon.recorded() == {}
        daemon.start({})
        wait_until(lambda: all_expected_delivered(mailbox), 60, "delivered after the restart", daemon)
        nothing_marked_sent_without_delivery_or_spool(daemon, mailbox)
        assert daemon.stop() == 0
    tally("SIGKILL between spooling and sending", mailbox)


def test_row_sigkill_with_mail_spooled_and_recorded(tmp_path: Path, failed_root: Path) -> None:
    """SMTP down, alerts spooled and recorded, the daemon killed; SMTP back, the daemon restarted:
    the spool is sent, and nothing is raised a second time."""
    port, mailbox = free_port(), Mailbox()
    daemon = Daemon(tmp_path, port, failed_root, tmp_path / "state")
    daemon.start()
    wait_until(lambda: len(daemon.spooled_ids()) >= 1 and len(daemon.recorded()) >= 2, 60, "spooled", daemon)
    daemon.kill()
    with mail_server(port, mailbox):
        daemon.start()
        wait_until(lambda: all_expected_delivered(mailbox), 60, "delivered after the restart", daemon)
        time.sleep(2)
        assert daemon.stop() == 0
    assert len(mailbox.messages) == 1  # one message for the incident, to both routes at once
    tally("SIGKILL with mail spooled, restarted", mailbox)


def test_alerts_sent_equal_alerts_expected_across_all_rows() -> None:
    """The figure in docs/reliability.md: run with the rows above (pytest runs this file in order)."""
    if len(TALLY) < 8:
        pytest.skip(f"only {len(TALLY)} rows ran in this session (run the whole file)")
    expected = sum(e for e, _ in TALLY.values())
    delivered = sum(d for _, d in TALLY.values())
    print(f"alerts delivered {delivered} of {expected} across {len(TALLY)} rows")
    assert delivered == expected == 8  # one incident mail per row, carrying both alerts
