"""``hostagent rpc``: the one command the controller's SSH key may run (a forced command).

authorized_keys of the unprivileged RPC account (``hostagent-rpc``)::

    restrict,from="<controller>",command="hostagent rpc --allow report,status,maintenance" ssh-ed25519 ...

The request is the client's command line, which sshd hands over in ``SSH_ORIGINAL_COMMAND``.
No shell ever sees it: the line must consist of plain tokens (letters, digits and ``._:/=@+%,-``)
separated by single spaces, so ``;``, ``$()``, backticks, pipes, redirections and newlines are
refused before anything is parsed.  Only the verbs the key line allows run, with their own
validated options.  Free text (a maintenance reason) travels percent-encoded and must decode to
printable characters.

This process runs as the RPC account: it reads no state and runs no tool.  It validates the
request and forwards it to the root daemon over its Unix socket (hostagent.rpcserver), which
validates it again, checks the peer's uid, answers and audits.  A refusal is audited by the daemon
too, or in the system log when the daemon is down.  Output is one JSON document (``hostagent.rpc/1``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import sys
import time
from typing import Any
from urllib.parse import unquote

from hostagent.errors import HostagentError
from hostagent.records import field, record

SCHEMA = "hostagent.rpc/1"
SOCKET_PATH = "/run/hostagent/rpc.sock"
MAX_REQUEST = 1024
MAX_REASON = 200
MAX_REPLY = 16 * 1024 * 1024
TOKEN = re.compile(r"[A-Za-z0-9._:/=@+%,-]+")
READ_VERBS = ("version", "report", "status", "disk status", "maintenance list", "maintenance status")
ACTING_VERBS = ("maintenance schedule", "maintenance cancel")
# verb -> {option: takes a value}
VERBS: dict[str, dict[str, bool]] = {
    **{verb: {} for verb in READ_VERBS},
    "maintenance schedule": {"--reboot-at": True, "--reason": True, "--notify-owners": False, "--dry-run": False},
    "maintenance cancel": {},
}
GROUPS = {"maintenance": ("maintenance list", "maintenance status", "maintenance schedule", "maintenance cancel"),
          "read": READ_VERBS}
DEFAULT_ALLOW = READ_VERBS + ACTING_VERBS
CONSOLE_ONLY = ("--force", "--force-unbootable")
REPLY_TIMEOUT = 600.0  # a maintenance schedule runs the full preflight


class Refused(HostagentError):
    """A request that is not run: its reason goes back as the JSON error."""


@record(frozen=True)
class Request:
    verb: str
    options: dict[str, str | bool] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"verb": self.verb, "options": self.options}


def shown(text: str, limit: int = 200) -> str:
    """Client-supplied text as safe to store and print: bytes that were not UTF-8 and control
    characters escaped, cut at ``limit`` characters."""
    cut = text[:limit]
    try:
        data = cut.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no byte escapes to (a hostile JSON's "\ud800")
        data = "".join(f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF and not 0xDC80 <= ord(c) <= 0xDCFF else c
                       for c in cut).encode("utf-8", "surrogateescape")
    raw = data.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in raw) + ("..." if len(text) > limit else "")


def _free_text(verb: str, name: str, encoded: str) -> str:
    try:
        text = unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        raise Refused(f"{verb}: {name} is not percent-encoded UTF-8") from None
    bad = next((c for c in text if not c.isprintable()), None)
    if bad is not None:
        raise Refused(f"{verb}: {name} contains the control character {bad!r}: only printable text is accepted")
    if len(text) > MAX_REASON:
        raise Refused(f"{verb}: {name} of {len(text)} characters: the limit is {MAX_REASON}")
    return text


def parse_request(command: str, allow: tuple[str, ...] = DEFAULT_ALLOW) -> Request:
    """The verb and options of an SSH_ORIGINAL_COMMAND, or Refused naming what is wrong.

    ``allow`` narrows the verbs for this key (``hostagent rpc --allow report,version``)."""
    if len(command) > MAX_REQUEST:
        raise Refused(f"request of {len(command)} characters: the limit is {MAX_REQUEST}")
    if not command.strip():
        raise Refused("no command: this key only runs 'hostagent rpc VERB' (verbs: " + ", ".join(allow) + ")")
    tokens = command.split(" ")
    for token in tokens:
        if token and not TOKEN.fullmatch(token):
            bad = next(ch for ch in token if not TOKEN.fullmatch(ch))
            what = "a byte that is not UTF-8" if "\udc80" <= bad <= "\udcff" else repr(bad)
            raise Refused(f"character {what} is not allowed in a request (no shell runs it)")
    words = [t for t in tokens if t]
    if words[:2] == ["hostagent", "rpc"]:  # the client may repeat the forced command's own words
        words = words[2:]
    verb = " ".join(words[:2]) if words and words[0] in ("disk", "maintenance") else (words[0] if words else "")
    if verb not in VERBS or verb not in allow:
        raise Refused(f"{'verb' if verb in VERBS else 'unknown verb'} {verb!r} is not allowed for this key "
                      f"(allowed: {', '.join(v for v in VERBS if v in allow)})")
    allowed = VERBS[verb]
    rest = words[len(verb.split()):]
    options: dict[str, str | bool] = {}
    while rest:
        name = rest.pop(0)
        if name in CONSOLE_ONLY and verb == "maintenance schedule":
            raise Refused(f"{verb}: {name} is refused over RPC: overriding the preflight is for a person at the "
                          "host's console (hostagent maintenance schedule " + name + ")")
        if name not in allowed:
            raise Refused(f"{verb}: unknown option {name!r}" + (f" (allowed: {', '.join(allowed)})" if allowed
                                                                 else " (it takes none)"))
        if name in options:
            raise Refused(f"{verb}: {name} given twice")
        if allowed[name]:
            if not rest:
                raise Refused(f"{verb}: {name} needs a value")
            options[name] = _free_text(verb, name, rest.pop(0))
        else:
            options[name] = True
    if verb == "maintenance schedule" and "--reboot-at" not in options:
        raise Refused("maintenance schedule: --reboot-at WHEN is required")
    return Request(verb, options)


def allowed_verbs(text: str | None) -> tuple[str, ...]:
    """``--allow report,status,maintenance``: the verbs this key may run.  A group name
    (``maintenance``, ``read``) stands for its verbs.  Without ``--allow``: DEFAULT_ALLOW."""
    if text is None:
        return DEFAULT_ALLOW
    chosen: list[str] = []
    for item in (v.strip() for v in text.split(",")):
        if not item:
            continue
        verbs = GROUPS.get(item, (item,))
        unknown = [v for v in verbs if v not in VERBS]
        if unknown:
            raise HostagentError(f"--allow {item}: no such verb (verbs: {', '.join(VERBS)}; groups: "
                                 f"{', '.join(GROUPS)})")
        chosen += [v for v in verbs if v not in chosen]
    return tuple(v for v in VERBS if v in chosen)


def refusal(error: str) -> dict[str, Any]:
    return {"schema": SCHEMA, "ok": False, "refused": True, "error": error}


# -- who asks ------------------------------------------------------------------------------

def key_fingerprint(line: str) -> str | None:
    """SHA256:... of an OpenSSH public key (``ssh-ed25519 AAAA...``), as ``ssh-keygen -l`` prints it."""
    parts = line.split()
    for index, part in enumerate(parts[:-1]):
        if part.startswith(("ssh-", "ecdsa-", "sk-")):
            try:
                blob = base64.b64decode(parts[index + 1], validate=True)
            except ValueError:
                return None
            return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return None


def requester(label: str | None, environ: dict[str, str] | None = None) -> dict[str, str | None]:
    """The key (its fingerprint from ``SSH_USER_AUTH`` when sshd exposes it, else the label the key
    line gives with ``--key``) and the source address of this SSH session."""
    env = os.environ if environ is None else environ
    fingerprint = None
    path = env.get("SSH_USER_AUTH")
    if path:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                fingerprint = key_fingerprint(handle.read(8192).splitlines()[0] if path else "")
        except (OSError, IndexError):
            fingerprint = None
    client = (env.get("SSH_CONNECTION") or env.get("SSH_CLIENT") or "").split(" ")[0] or None
    return {"key": fingerprint or (shown(label, 100) if label else None), "client": client}


# -- the forwarder -------------------------------------------------------------------------

def exchange(path: str, message: dict[str, Any], timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
    """Send one JSON message to the daemon's socket and read its one JSON reply (bounded)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5.0)
        conn.connect(path)
        conn.sendall(json.dumps(message).encode() + b"\n")
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(timeout)
        chunks, size = [], 0
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_REPLY:
                raise HostagentError(f"{path}: reply larger than {MAX_REPLY} bytes")
            chunks.append(chunk)
    try:
        reply = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HostagentError(f"{path}: the daemon's reply is not JSON") from None
    if not isinstance(reply, dict):
        raise HostagentError(f"{path}: the daemon's reply is not a JSON object")
    return reply


def not_running(path: str, why: str) -> dict[str, Any]:
    """The reply when the daemon does not answer: never a report, and the age of its last one
    (the daemon touches its socket after each report it publishes)."""
    try:
        age: float | None = max(time.time() - os.stat(path).st_mtime, 0.0)
    except OSError:
        age = None
    said = "no report since the host booted" if age is None else f"last report {age:.0f} s ago"
    return {"schema": SCHEMA, "ok": False, "agent": "not running", "report_age_s": age,
            "error": f"agent: not running ({said}; {why})"}


def _syslog(event: dict[str, Any]) -> None:
    import syslog

    syslog.openlog("hostagent-rpc", 0, syslog.LOG_AUTH)
    syslog.syslog(syslog.LOG_WARNING, json.dumps(event))


def forward(command: str, allow: tuple[str, ...], socket_path: str, who: dict[str, str | None]
            ) -> tuple[dict[str, Any], int]:
    """Validate here, then let the daemon answer (and audit).  Returns the reply and the exit code."""
    subject = shown(command)
    try:
        parse_request(command, allow)
    except Refused as err:
        note = {"op": "refused", "subject": subject, "error": str(err), **who}
        try:
            exchange(socket_path, note, timeout=10.0)
        except (OSError, HostagentError):  # the daemon is down: the system log keeps the record
            _syslog({"event": "rpc", "action": "refused", **note})
        return refusal(str(err)), 2
    try:
        reply = exchange(socket_path, {"op": "request", "command": command, "allow": list(allow), **who})
    except (FileNotFoundError, ConnectionRefusedError) as err:
        _syslog({"event": "rpc", "action": "unanswered", "subject": subject, **who})
        return not_running(socket_path, err.strerror or str(err)), 1
    except (OSError, HostagentError) as err:
        return not_running(socket_path, str(err)), 1
    return reply, 0 if reply.get("ok") else (2 if reply.get("refused") else 1)


def main(socket_path: str, allow: str | None, key: str | None, words: list[str] | None = None) -> int:
    """Serve SSH_ORIGINAL_COMMAND; without one (a local operator, or a client that asked for a
    shell) the words given here, which the client does not control."""
    try:
        verbs = allowed_verbs(allow)
    except HostagentError as err:
        sys.stdout.write(json.dumps({"schema": SCHEMA, "ok": False, "error": str(err)}) + "\n")
        return 1
    command = os.environ.get("SSH_ORIGINAL_COMMAND")
    reply, code = forward(" ".join(words or []) if command is None else command, verbs, socket_path,
                          requester(key))
    sys.stdout.write(json.dumps(reply) + "\n")
    return code
