"""SSH to the agents (paramiko): a dedicated key, strict host-key checking, a pool of connections.

- Host keys are checked against the controller's own known_hosts.  An unknown key is refused
  with its fingerprint unless ``accept_new`` (first contact, then it is recorded); a changed key
  is always refused, with both fingerprints.
- Connections stay open between polls (keepalive) and are reopened when they drop.
- Every step has a timeout: TCP connect, the SSH banner, authentication, opening the session
  and the command itself, so a host that hangs costs only its own timeouts.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

from hostagent.errors import HostagentError
from hostagent.fleet.inventory import FleetHost
from hostagent.records import record

MAX_REPLY = 16 << 20  # an agent's report is a few hundred KiB at most


class TransportError(HostagentError):
    """A host could not be asked: its name, what failed, and why."""


def fingerprint(key: Any) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return f"{key.get_name()} SHA256:{base64.b64encode(digest).decode().rstrip('=')}"


def known_hosts_name(host: FleetHost) -> str:
    return host.address if host.port == 22 else f"[{host.address}]:{host.port}"


@record(frozen=True)
class Answer:
    stdout: str
    stderr: str
    exit_status: int
    seconds: float
    reused: bool  # went over a pooled connection


class Transport:
    def __init__(self, key_path: str, known_hosts: str, *, accept_new: bool = False, connect_timeout: float = 10.0,
                 command_timeout: float = 60.0, keepalive: int = 15, default_user: str = "hostagent") -> None:
        try:
            import paramiko
        except ImportError:
            raise HostagentError("the fleet controller needs paramiko: install hostagent[controller]") from None
        self._paramiko = paramiko
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # every failure is reported per host, once
        try:
            self.key = paramiko.Ed25519Key.from_private_key_file(key_path)
        except (OSError, paramiko.SSHException) as err:
            raise HostagentError(f"controller key {key_path}: {err}") from None
        self.known_hosts, self.accept_new = Path(known_hosts), accept_new
        self.connect_timeout, self.command_timeout, self.keepalive = connect_timeout, command_timeout, keepalive
        self.default_user = default_user
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._known_lock = threading.Lock()
        self.accepted: list[str] = []

    # -- host keys -------------------------------------------------------------------------

    def _policy(self, host: FleetHost) -> Any:
        transport = self

        class Policy(self._paramiko.MissingHostKeyPolicy):  # type: ignore[name-defined,misc]
            def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
                if not transport.accept_new:
                    raise TransportError(f"host {host.name} ({hostname}): unknown host key {fingerprint(key)}; "
                                         f"not in {transport.known_hosts}. Check it out of band, then poll once "
                                         "with --accept-new")
                with transport._known_lock:
                    with transport.known_hosts.open("a") as handle:
                        handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
                    transport.accepted.append(f"{host.name} ({hostname}): {fingerprint(key)}")

        return Policy()

    # -- connections -----------------------------------------------------------------------

    def _connect(self, host: FleetHost) -> Any:
        paramiko = self._paramiko
        client = paramiko.SSHClient()
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        self.known_hosts.touch(exist_ok=True)
        with self._known_lock:
            client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(self._policy(host))
        try:
            sock = socket.create_connection((host.address, host.port), timeout=self.connect_timeout)
        except OSError as err:
            raise TransportError(f"host {host.name} ({host.address}:{host.port}): cannot connect: "
                                 f"{err.strerror or err}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            client.connect(host.address, host.port, username=host.user or self.default_user, pkey=self.key,
                           sock=sock, timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout, allow_agent=False, look_for_keys=False)
        except paramiko.BadHostKeyException as err:
            client.close()
            raise TransportError(f"host {host.name} ({known_hosts_name(host)}): host key CHANGED: known "
                                 f"{fingerprint(err.expected_key)}, offered {fingerprint(err.key)}. Refusing: this "
                                 f"may be an attack. If the host was reinstalled, remove its line from "
                                 f"{self.known_hosts}") from None
        except TransportError:
            client.close()
            raise
        except (paramiko.SSHException, OSError, EOFError) as err:
            client.close()
            raise TransportError(f"host {host.name} ({host.address}:{host.port}): SSH: {err or type(err).__name__}"
                                 ) from None
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(self.keepalive)
        return client

    def _client(self, host: FleetHost) -> tuple[Any, bool]:
        with self._lock:
            client = self._clients.get(host.name)
        if client is not None:
            transport = client.get_transport()
            if transport is not None and transport.is_active():
                return client, True
            self.drop(host)
        client = self._connect(host)
        with self._lock:
            self._clients[host.name] = client
        return client, False

    def drop(self, host: FleetHost) -> None:
        with self._lock:
            client = self._clients.pop(host.name, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    # -- commands --------------------------------------------------------------------------

    def run(self, host: FleetHost, command: str) -> Answer:
        """Run ``command`` (the forced command gets it as SSH_ORIGINAL_COMMAND); one reconnect when a
        pooled connection turns out dead."""
        started = time.monotonic()
        client, reused = self._client(host)
        try:
            return self._exec(host, client, command, started, reused)
        except TransportError:
            self.drop(host)
            if not reused:
                raise
        client, reused = self._client(host)
        return self._exec(host, client, command, started, reused)

    def _exec(self, host: FleetHost, client: Any, command: str, started: float, reused: bool) -> Answer:
        deadline = started + self.connect_timeout + self.command_timeout
        transport = client.get_transport()
        try:
            channel = transport.open_session(timeout=self.command_timeout)
            channel.settimeout(max(deadline - time.monotonic(), 0.1))
            channel.exec_command(command)
            out, errors = bytearray(), bytearray()
            while True:
                chunk = channel.recv(65536)
                if not chunk:
                    break
                out += chunk
                if len(out) > MAX_REPLY:  # a hostile or broken host must not fill the controller's memory
                    channel.close()
                    raise TransportError(f"host {host.name}: reply larger than {MAX_REPLY} bytes; dropped")
            while channel.recv_stderr_ready() and len(errors) < MAX_REPLY:
                errors += channel.recv_stderr(65536)
            while not channel.exit_status_ready():
                if time.monotonic() > deadline:
                    raise TimeoutError()
                time.sleep(0.005)
            status = channel.recv_exit_status()
            channel.close()
        except TimeoutError:
            raise TransportError(f"host {host.name}: no answer within {self.command_timeout:g} s") from None
        except (self._paramiko.SSHException, OSError, EOFError, AttributeError) as err:
            raise TransportError(f"host {host.name}: SSH session: {err or type(err).__name__}") from None
        return Answer(out.decode("utf-8", errors="replace"), errors.decode("utf-8", errors="replace"), status,
                      time.monotonic() - started, reused)
