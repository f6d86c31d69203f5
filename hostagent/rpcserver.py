"""The daemon's side of the RPC boundary: a Unix socket that only root and the RPC account reach.

The socket is owned by root, in the RPC account's group, mode 0660, in a directory of mode 0750.
Every connection's peer is checked with ``SO_PEERCRED``: only root and the RPC account are
answered.  The request is validated again here (the socket trusts no client), audited with the
key and the source address the forwarder reports, and answered:

- read verbs from what the daemon last published (no tool runs per request);
- ``maintenance schedule|cancel`` by ``hostagent maintenance ...`` in a child process with a
  timeout, which runs the full preflight and writes the journal and its own audit record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hostagent import __version__
from hostagent.errors import HostagentError
from hostagent.records import field, record
from hostagent.rpc import DEFAULT_ALLOW, MAX_REQUEST, SCHEMA, Refused, Request, parse_request, refusal, shown

log = logging.getLogger("hostagent")
MAX_MESSAGE = 8 * MAX_REQUEST
CONNECTIONS = 8  # answered at once; more wait in the listen backlog
CHILD_TIMEOUT = 540.0


@record
class Published:
    """What the daemon last published, swapped whole by the main thread after each cycle."""

    report: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    disks: dict[str, Any] | None = None


@record
class Answerer:
    """Answers validated requests.  ``child`` is the argv prefix of ``hostagent`` for acting verbs."""

    published: Callable[[], Published]
    journals: Path
    child: list[str]  # child_command(): argv of hostagent, ending in --state-dir DIR
    allow: tuple[str, ...] = DEFAULT_ALLOW
    audit: Callable[[dict[str, Any]], None] = lambda event: None
    hostname: str = field(default_factory=socket.gethostname)

    def answer(self, message: Any, peer: str) -> dict[str, Any]:
        if not isinstance(message, dict) or message.get("op") not in ("request", "refused"):
            self.audit({"event": "rpc", "action": "refused", "peer": peer, "error": "malformed message"})
            return refusal("malformed message on the RPC socket")
        who = {"key": _text(message.get("key")), "client": _text(message.get("client")), "peer": peer}
        if message["op"] == "refused":  # the forwarder refused it already: record it
            self.audit({"event": "rpc", "action": "refused", "subject": _text(message.get("subject")),
                        "error": _text(message.get("error")), **who})
            return {"schema": SCHEMA, "ok": True, "recorded": True}
        command = message.get("command")
        asked = message.get("allow")
        allow = tuple(v for v in self.allow if isinstance(asked, list) and v in asked)
        subject = shown(command) if isinstance(command, str) else repr(command)[:200]
        started = time.time()
        try:
            if not isinstance(command, str):
                raise Refused("malformed request: no command")
            request = parse_request(command, allow)
        except Refused as err:
            self.audit({"event": "rpc", "action": "refused", "subject": subject, "error": str(err), **who})
            return refusal(str(err))
        try:
            result = self.handle(request, who)
        except HostagentError as err:
            self.audit({"event": "rpc", "action": request.verb, "subject": subject, "error": str(err), **who})
            return {"schema": SCHEMA, "ok": False, "verb": request.verb, "error": str(err)}
        if request.verb not in ("version", "report", "status"):  # polls every minute are not worth a line each
            self.audit({"event": "rpc", "action": request.verb, "subject": subject, **who,
                        "duration_ms": round((time.time() - started) * 1000, 1)})
        return {"schema": SCHEMA, "ok": True, "verb": request.verb, "result": result}

    def handle(self, request: Request, who: dict[str, str | None]) -> Any:
        published = self.published()
        if request.verb == "version":
            return {"version": __version__, "hostname": self.hostname}
        if request.verb in ("maintenance schedule", "maintenance cancel"):
            return self._child(request, who)
        if request.verb == "maintenance list":
            return self._journals()["rows"]
        if request.verb == "maintenance status":
            return self._journals()["summary"]
        if published.report is None or published.status is None:
            raise HostagentError("the agent has not finished its first check cycle yet")
        daemon = {"pid": published.status.get("pid"),
                  "last_cycle_at": (published.status.get("last_cycle") or {}).get("at"),
                  "status": published.status.get("status")}
        if request.verb == "report":
            return {"version": __version__, "report": published.report, "source": "daemon",
                    "maintenance": self._journals()["summary"], "daemon": daemon}
        if request.verb == "status":
            return published.status
        if published.disks is None:
            raise HostagentError("the agent has no SMART data yet (the smart check has not run)")
        return published.disks

    def _journals(self) -> dict[str, Any]:
        from hostagent.maintenance.journal import JournalStore

        journals, unreadable = JournalStore(self.journals).scan()
        rows = [j.row() for j in journals]
        active = [r for r in rows if r["phase"] not in ("done", "failed", "cancelled", "missed")]
        return {"rows": rows + [entry.row() for entry in unreadable],
                "summary": {"active": active[0] if active else None, "last": rows[-1] if rows else None,
                            "recent": rows[-5:], "unreadable": [entry.row() for entry in unreadable]}}

    def _child(self, request: Request, who: dict[str, str | None]) -> Any:
        """``hostagent maintenance schedule|cancel --json`` in a child process with a timeout."""
        argv = [*self.child[:-2], "maintenance", request.verb.split()[1], "--json", *self.child[-2:]]
        for name, value in request.options.items():
            argv += [name] if value is True else [name, str(value)]
        try:
            via = f"rpc (key {who['key']}, from {who['client']})"
            done = subprocess.run(argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT,
                                  stdin=subprocess.DEVNULL, env={**os.environ, "HOSTAGENT_VIA": via})
        except subprocess.TimeoutExpired:
            raise HostagentError(f"{request.verb} did not finish within {CHILD_TIMEOUT:.0f} s") from None
        except OSError as err:
            raise HostagentError(f"{request.verb}: cannot run {argv[0]}: {err.strerror or err}") from None
        if done.returncode != 0:
            said = done.stderr.strip().removeprefix("hostagent: ") or f"exit {done.returncode}"
            raise HostagentError(said[-2000:])
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError:
            raise HostagentError(f"{request.verb}: its output is not JSON: {done.stdout[:200]!r}") from None


def _text(value: Any) -> str | None:
    return shown(value, 200) if isinstance(value, str) else None


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel (SO_PEERCRED)."""
    data = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


def rpc_identity(user: str) -> tuple[int | None, int]:
    """The RPC account's uid and group id (None and root's group when there is no such account)."""
    if not user:
        return None, 0
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None, 0
    return entry.pw_uid, entry.pw_gid


class RpcServer:
    """Listens on ``path``; each connection is one JSON request line and one JSON reply."""

    def __init__(self, path: str, rpc_user: str, answerer: Answerer) -> None:
        self.path = path
        self.rpc_user = rpc_user
        self.answerer = answerer
        self.uid, self.gid = rpc_identity(rpc_user)
        self.allowed_uids = {0, os.getuid()} | ({self.uid} if self.uid is not None else set())
        self.slots = threading.Semaphore(CONNECTIONS)
        self.listener: socket.socket | None = None

    def start(self) -> None:
        """Bind (taking over a stale socket, never a live daemon's) and serve in a thread."""
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o750, exist_ok=True)
            os.chmod(directory, 0o750)  # the umask may have narrowed it
            os.chown(directory, -1, self.gid)
        if os.path.exists(self.path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(2.0)
            try:
                probe.connect(self.path)
            except OSError:
                os.unlink(self.path)  # left by a daemon that died
            else:
                raise HostagentError(f"{self.path}: another hostagent daemon answers there")
            finally:
                probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(self.path)
        finally:
            os.umask(old)
        os.chown(self.path, -1, self.gid)
        os.chmod(self.path, 0o660)
        listener.listen(32)
        self.listener = listener
        threading.Thread(target=self._accept, name="rpc-accept", daemon=True).start()
        if self.uid is None:
            log.warning("RPC socket %s: no account %r, so only root may use it", self.path, self.rpc_user)

    def published(self) -> None:
        """Mark a fresh report: the forwarder reads the socket's mtime as the report's age when the
        daemon is down."""
        with contextlib.suppress(OSError):
            os.utime(self.path)

    def stop(self) -> None:
        """Stop answering.  The socket file stays: its mtime tells the forwarder the last report's age,
        and the next daemon takes it over."""
        if self.listener is not None:
            listener, self.listener = self.listener, None
            listener.close()

    def _accept(self) -> None:
        while self.listener is not None:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                if self.listener is None:
                    return
                time.sleep(0.1)
                continue
            self.slots.acquire()
            threading.Thread(target=self._serve, args=(conn,), name="rpc-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._one(conn)
        except Exception as err:  # one bad connection never stops the server
            log.error("RPC connection failed: %s", err)
        finally:
            self.slots.release()

    def _one(self, conn: socket.socket) -> None:
        pid, uid, _ = peer_credentials(conn)
        peer = f"pid {pid} uid {uid}"
        conn.settimeout(10.0)
        data = b""
        while len(data) <= MAX_MESSAGE:  # read before answering, so that a refusal is not lost in a reset
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        if not data and uid in self.allowed_uids:
            return  # a liveness probe: connected and closed without asking
        if uid not in self.allowed_uids:
            error = f"uid {uid} may not use the RPC socket"
            self.answerer.audit({"event": "rpc", "action": "refused", "peer": peer, "error": error})
            reply = refusal(f"uid {uid} may not use this socket")
        elif len(data) > MAX_MESSAGE:
            self.answerer.audit({"event": "rpc", "action": "refused", "peer": peer,
                                 "error": f"message over {MAX_MESSAGE} bytes"})
            reply = refusal(f"message over {MAX_MESSAGE} bytes")
        else:
            try:
                message = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                message = None
            reply = self.answerer.answer(message, peer)
        conn.settimeout(30.0)
        conn.sendall(json.dumps(reply).encode() + b"\n")


def child_command(config_path: str | None, state_dir: str) -> list[str]:
    """``hostagent`` as the daemon itself was started: the same interpreter, config and state
    directory (its last two words, ``--state-dir DIR``, go after the verb)."""
    argv = [sys.executable, "-m", "hostagent"]
    if config_path:
        argv += ["--config", config_path]
    return [*argv, "--state-dir", state_dir]


