"""Several "hosts" on this machine: each a real OpenSSH sshd in its own network namespace, with its
own address (10.213.N.2, reached over a veth pair), its own host key, and an authorized_keys
that forces ``hostagent rpc`` for the controller's key (see ../shared/TESTING.md).

The namespaces have no default route: nothing they send can leave this machine.  Everything is
removed on exit, whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
USER = "hafleet"
SSHD = "/usr/sbin/sshd"


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def ensure_user() -> None:
    """An unprivileged account for the agents' side: root's shell startup is slow here (TESTING.md)."""
    if subprocess.run(["id", USER], capture_output=True).returncode != 0:
        run("useradd", "--system", "--no-create-home", "--shell", "/bin/sh", USER)
        run("usermod", "-p", "*", USER)  # no password, but not locked: sshd accepts keys for it


def keygen(path: Path) -> str:
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path))
    return (path.with_suffix(".pub") if path.suffix else Path(f"{path}.pub")).read_text().strip()


def agent_command(socket_path: Path, allow: str | None = None, key: str | None = "controller",
                  extra_path: str = "") -> str:
    """The forwarder as a host runs it: Debian's python3 (the test venv's interpreter lives under /root,
    which the agents' account cannot enter) with this checkout on its path; it needs nothing else."""
    argv = ["/usr/bin/python3", "-m", "hostagent", "rpc", "--socket", str(socket_path)]
    if allow:
        argv += ["--allow", allow]
    if key:
        argv += ["--key", key]
    return f"PYTHONPATH={REPO}{':' + extra_path if extra_path else ''} " + " ".join(shlex.quote(a) for a in argv)


def agent_config(socket_path: Path, extra: str = "") -> str:
    """A test host's agent: no remedies, no mail, no SMART; RPC for the agents' account on its own socket."""
    return (f'[agent]\nrpc_socket = "{socket_path}"\nrpc_user = "{USER}"\n[watch]\nact = false\n'
            f"[alerts]\nenabled = false\n[checks.smart]\nenabled = false\n{extra}")


@dataclass
class SshHost:
    name: str
    index: int
    namespace: str
    address: str
    directory: Path
    host_key_line: str
    process: subprocess.Popen[bytes] | None = None
    daemon: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.directory / "run" / "rpc.sock"

    @property
    def state(self) -> Path:
        return self.directory / "state"

    @property
    def config(self) -> Path:
        return self.directory / "hostagent.toml"

    def authorize(self, public_key: str, command: str, options: str = "restrict") -> None:
        line = f'{options},command="{command}" {public_key}\n'
        (self.directory / "authorized_keys").write_text(line)

    def start_agent(self, root: str | None = None) -> None:
        """The root daemon (``hostagent watch``) that answers the forwarder; returns once it answers."""
        self.stop_agent()
        argv = [str(REPO / ".venv/bin/hostagent"), "--config", str(self.config), "watch", "--state-dir",
                str(self.state)] + (["--root", root] if root else [])
        self.daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=open(self.directory / "agent.log", "ab"))  # noqa: SIM115
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(self.socket))
                if (self.state / "status.json").exists():
                    return
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent for {self.name} did not start: {(self.directory / 'agent.log').read_text()}")
            time.sleep(0.2)

    def stop_agent(self) -> None:
        if self.daemon is not None:
            self.daemon.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.daemon.wait(timeout=20)
            if self.daemon.poll() is None:
                self.daemon.kill()
                self.daemon.wait()
            self.daemon = None

    def stop(self) -> None:
        os.kill(self.pid, 19)  # SIGSTOP: the sshd hangs, the TCP port stays open

    def cont(self) -> None:
        os.kill(self.pid, 18)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


class SshFleet:
    def __init__(self, base: Path, count: int, agents: bool = True) -> None:
        self.agents = agents
        self.base = base
        self.tag = f"{os.getpid() % 10000}"
        self.hosts: list[SshHost] = []
        self.count = count
        self.controller_key = base / "controller_key"

    def __enter__(self) -> SshFleet:
        ensure_user()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        self.controller_public = keygen(self.controller_key)
        try:
            for index in range(self.count):
                self.hosts.append(self._host(index))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _host(self, index: int) -> SshHost:
        name, namespace = f"hv{index + 1}", f"haf{self.tag}-{index}"
        outside, inside = f"hf{self.tag}h{index}", f"hf{self.tag}n{index}"
        address = f"10.213.{index + 1}.2"
        run("ip", "netns", "add", namespace)
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        run("ip", "link", "set", inside, "netns", namespace)
        run("ip", "addr", "add", f"10.213.{index + 1}.1/24", "dev", outside)
        run("ip", "link", "set", outside, "up")
        for argv in (("ip", "addr", "add", f"{address}/24", "dev", inside), ("ip", "link", "set", inside, "up"),
                     ("ip", "link", "set", "lo", "up")):
            run("ip", "netns", "exec", namespace, *argv)
        directory = self.base / name
        directory.mkdir()
        directory.chmod(0o755)
        (directory / "state").mkdir(mode=0o700)  # root's: the agents' account cannot read it
        host_key = keygen(directory / "host_key")
        host = SshHost(name, index, namespace, address, directory, f"{address} {' '.join(host_key.split()[:2])}")
        (directory / "hostagent.toml").write_text(agent_config(host.socket))
        host.authorize(self.controller_public, agent_command(host.socket))
        (directory / "sshd_config").write_text(
            f"Port 22\nListenAddress {address}\nHostKey {directory / 'host_key'}\nPidFile none\nUsePAM no\n"
            f"StrictModes no\nAuthorizedKeysFile {directory / 'authorized_keys'}\nMaxStartups 200\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nLogLevel ERROR\n"
            "ClientAliveInterval 5\nClientAliveCountMax 2\n")  # sessions of vanished clients end on their own
        self.start(host)
        if self.agents:
            host.start_agent()
        return host

    def start(self, host: SshHost) -> None:
        host.process = subprocess.Popen(["ip", "netns", "exec", host.namespace, SSHD, "-D", "-e", "-f",
                                         str(host.directory / "sshd_config")],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=open(host.directory / "sshd.log", "ab"))  # noqa: SIM115
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection((host.address, 22), timeout=1):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd for {host.name} did not listen: {(host.directory / 'sshd.log').read_text()}")
            time.sleep(0.1)

    def known_hosts(self, path: Path, skip: tuple[str, ...] = ()) -> Path:
        path.write_text("".join(f"{h.host_key_line}\n" for h in self.hosts if h.name not in skip))
        return path

    def inventory(self, path: Path) -> Path:
        lines = ["[hypervisors]"] + [f"{h.name} ansible_host={h.address} ansible_user={USER}" for h in self.hosts]
        path.write_text("\n".join(lines) + "\n")
        return path

    def __exit__(self, *exc: object) -> None:
        for host in self.hosts:
            host.stop_agent()
            if host.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    host.cont()
                host.process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    host.process.wait(timeout=10)
        for index in range(self.count):
            namespace = f"haf{self.tag}-{index}"
            pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
            if pids:  # the sessions each sshd forked outlive it; nothing may stay behind
                subprocess.run(["kill", "-KILL", *pids], capture_output=True)
            subprocess.run(["ip", "link", "del", f"hf{self.tag}h{index}"], capture_output=True)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


@contextlib.contextmanager
def ssh_fleet(base: Path, count: int) -> Iterator[SshFleet]:
    with SshFleet(base, count) as fleet:
        yield fleet
