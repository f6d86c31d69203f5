"""tests/debian_vm.py's shared SSH connection (``DebianVM.multiplexing``), against a real OpenSSH sshd on
loopback standing in for a VM's: a stall of the VM does not end the commands over it, a login with
another key is a login of its own, and nothing outlives ``close_shared``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.debian_vm import DebianVM, free_port


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[tuple[DebianVM, subprocess.Popen[bytes]]]:
    if os.geteuid() != 0 or shutil.which("/usr/sbin/sshd") is None:
        pytest.fail("needs root and OpenSSH's sshd (make deps installs openssh-server)")
    host, user = _keygen(tmp_path / "host"), _keygen(tmp_path / "user")
    (tmp_path / "authorized").write_text((tmp_path / "user.pub").read_text())
    port = free_port()
    (tmp_path / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile none\n"
        f"AuthorizedKeysFile {tmp_path / 'authorized'}\nStrictModes no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nMaxSessions 10\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(tmp_path / "sshd_config")],
                            stderr=(tmp_path / "sshd.log").open("wb"))
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {(tmp_path / 'host.pub').read_text()}")
    machine = DebianVM(port, user, known, tmp_path / "console", types.SimpleNamespace(pid=sshd.pid),  # type: ignore[arg-type]
                       control=Path(tempfile.mkdtemp(prefix="hostagent-ssh-", dir="/tmp")))
    try:
        deadline = time.monotonic() + 30
        while machine.ssh("true", key=user, timeout=10).returncode != 0:
            assert time.monotonic() < deadline, (tmp_path / "sshd.log").read_text()
            time.sleep(0.2)
        yield machine, sshd
    finally:
        machine.close_shared()
        sshd.kill()
        sshd.wait()
        subprocess.run(["pkill", "-KILL", "-f", f"sshd_config.*{tmp_path}"], check=False)


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [p for child in map(int, found) for p in (child, *_children(child))]


def test_a_stall_of_the_vm_does_not_end_a_command_over_the_shared_connection(
        vm: tuple[DebianVM, subprocess.Popen[bytes]]) -> None:
    """A loaded machine can stall an emulated VM for many seconds.  With a keepalive (it was 5 s x 3)
    the master gave up during such a stall and every command over it ended with 255."""
    machine, sshd = vm
    assert machine.ssh("true").returncode == 0  # the master exists, as in a test
    result: list[subprocess.CompletedProcess[str]] = []
    command = threading.Thread(target=lambda: result.append(machine.ssh("sleep 24; echo done", timeout=300)))
    command.start()
    deadline = time.monotonic() + 60
    while subprocess.run(["pgrep", "-f", "^sleep 24$"], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline and command.is_alive(), result
        time.sleep(0.1)
    stalled = [pid for pid in _children(sshd.pid)
               if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd"]  # the connection's sshd, not sleep
    for pid in stalled:
        os.kill(pid, signal.SIGSTOP)
    try:
        # the stall itself, not a wait for something: longer than the old keepalive's 15 s (5 s x 3),
        # shorter than the command's remaining sleep, so the command is still running when it ends
        time.sleep(20)
    finally:
        for pid in stalled:
            os.kill(pid, signal.SIGCONT)
    command.join(timeout=120)
    assert [(r.returncode, r.stdout) for r in result] == [(0, "done\n")], result


def test_a_login_with_another_key_or_user_is_its_own(vm: tuple[DebianVM, subprocess.Popen[bytes]],
                                                     tmp_path: Path) -> None:
    """The shared connection carries only the test's own root commands: a key sshd refuses is refused
    however long a root master has been open (a test of what a key may do needs a real login)."""
    machine, _ = vm
    assert machine.ssh("true").returncode == 0 and list(machine.control.iterdir())  # type: ignore[union-attr]
    stranger = _keygen(tmp_path / "stranger")
    refused = machine.ssh("echo in", key=stranger)
    assert refused.returncode == 255 and refused.stdout == "", refused
    assert machine.ssh("echo in", user="nobody").returncode == 255  # no key of nobody's: its own login, refused
    assert machine.ssh("echo in").stdout == "in\n"


def test_nothing_outlives_close_shared(vm: tuple[DebianVM, subprocess.Popen[bytes]]) -> None:
    machine, _ = vm
    assert machine.ssh("true").returncode == 0
    control = machine.control
    assert control is not None and oct(control.stat().st_mode & 0o777) == "0o700"
    masters = subprocess.run(["pgrep", "-f", f"^ssh: {control}/"], capture_output=True, text=True)
    assert masters.stdout.split(), "no master: nothing was shared"
    machine.close_shared()
    deadline = time.monotonic() + 30
    while subprocess.run(["pgrep", "-f", f"^ssh: {control}/"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the master outlived close_shared"
        time.sleep(0.2)
    assert not control.exists()


def test_a_shared_command_that_times_out_ends_the_master(vm: tuple[DebianVM, subprocess.Popen[bytes]]) -> None:
    """A VM that rebooted without closing the connection leaves a master that hangs every command over
    it: one that times out ends the master, and the next command logs in afresh."""
    machine, sshd = vm
    assert machine.ssh("true").returncode == 0
    master = f"^ssh: {machine.control}/"
    assert subprocess.run(["pgrep", "-f", master], capture_output=True).returncode == 0
    stalled = [pid for pid in _children(sshd.pid) if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd"]
    for pid in stalled:
        os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            machine.ssh("true", timeout=3)
        deadline = time.monotonic() + 30
        while subprocess.run(["pgrep", "-f", master], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "the hung master was kept"
            time.sleep(0.2)
    finally:
        for pid in stalled:
            os.kill(pid, signal.SIGCONT)
    assert machine.ssh("echo again").stdout == "again\n"
