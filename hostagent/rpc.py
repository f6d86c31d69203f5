"""``hostagent rpc``: the one command the controller's SSH key may run (a forced command).

authorized_keys: ``restrict,from="<controller>",command="hostagent rpc" ssh-ed25519 ...``

The request is the client's command line, which sshd hands over in ``SSH_ORIGINAL_COMMAND``.
No shell ever sees it: the line must consist of plain tokens (letters, digits and ``._:/=@+%,-``)
separated by single spaces, so ``;``, ``$()``, backticks, pipes, redirections and newlines are
refused before anything is parsed.  Only whitelisted verbs with their own validated options run.
Every request, refused or not, is audited.  Output is one JSON document (``hostagent.rpc/1``).
Free text (a maintenance reason) travels percent-encoded.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from hostagent import __version__
from hostagent.errors import HostagentError

SCHEMA = "hostagent.rpc/1"
MAX_REQUEST = 1024
TOKEN = re.compile(r"[A-Za-z0-9._:/=@+%,-]+")
# verb -> {option: takes a value}
VERBS: dict[str, dict[str, bool]] = {
    "version": {},
    "report": {},
    "check": {"--only": True},
    "disk status": {},
    "maintenance status": {},
    "maintenance cancel": {},
    "maintenance schedule": {"--reboot-at": True, "--reason": True, "--notify-owners": False, "--dry-run": False,
                             "--force": False},
}
CHECK_NAMES = ("md", "hung", "smart", "erc", "boot")


class Refused(HostagentError):
    """A request that is not run: its reason goes back as the JSON error."""


@dataclass(frozen=True)
class Request:
    verb: str
    options: dict[str, str | bool] = field(default_factory=dict)


def parse_request(command: str, allow: tuple[str, ...] = tuple(VERBS)) -> Request:
    """The verb and options of an SSH_ORIGINAL_COMMAND, or Refused naming what is wrong.

    ``allow`` narrows the verbs for this key (``hostagent rpc --allow report,version``)."""
    if not command.strip():
        raise Refused("no command: this key only runs 'hostagent rpc VERB' (verbs: " + ", ".join(VERBS) + ")")
    if len(command) > MAX_REQUEST:
        raise Refused(f"request of {len(command)} characters: the limit is {MAX_REQUEST}")
    tokens = command.split(" ")
    for token in tokens:
        if token and not TOKEN.fullmatch(token):
            bad = next(ch for ch in token if not TOKEN.fullmatch(ch))
            raise Refused(f"character {bad!r} is not allowed in a request (no shell runs it)")
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
        if name not in allowed:
            raise Refused(f"{verb}: unknown option {name!r}" + (f" (allowed: {', '.join(allowed)})" if allowed
                                                                 else " (it takes none)"))
        if name in options:
            raise Refused(f"{verb}: {name} given twice")
        if allowed[name]:
            if not rest:
                raise Refused(f"{verb}: {name} needs a value")
            options[name] = unquote(rest.pop(0), errors="strict")
        else:
            options[name] = True
    if verb == "check" and "--only" in options:
        unknown = [n for n in str(options["--only"]).split(",") if n not in CHECK_NAMES]
        if unknown:
            raise Refused(f"check: --only {','.join(unknown)}: no such check (checks: {', '.join(CHECK_NAMES)})")
    if verb == "maintenance schedule" and "--reboot-at" not in options:
        raise Refused("maintenance schedule: --reboot-at WHEN is required")
    return Request(verb, options)


@dataclass
class Server:
    """What the forced command was started with: the client cannot change any of it."""

    config_path: str | None
    root: str = "/"
    state_dir: str | None = None
    allow: tuple[str, ...] = tuple(VERBS)

    def handle(self, request: Request) -> Any:
        handlers: dict[str, Callable[[Request], Any]] = {
            "version": lambda r: {"version": __version__, "hostname": socket.gethostname()},
            "report": lambda r: self._published() or self._report(None),
            "check": lambda r: self._report(str(r.options["--only"]).split(",") if "--only" in r.options else None),
            "disk status": lambda r: self._disk_status(),
            "maintenance status": lambda r: self._maintenance_status(),
            "maintenance cancel": lambda r: self._maintenance().cancel(self._config(), self.state_dir),
            "maintenance schedule": self._schedule,
        }
        return handlers[request.verb](request)

    def _config(self) -> Any:
        from hostagent.config import load_config

        return load_config(self.config_path)

    def _maintenance(self) -> Any:
        from hostagent.maintenance import cli

        return cli

    def _report(self, only: list[str] | None) -> dict[str, Any]:
        from hostagent.host import Host
        from hostagent.runner import open_state, run_checks

        config = self._config()
        host = Host(self.root, command_timeout=config.agent.command_timeout)
        report = run_checks(host, config, only, state=open_state(host, config, self.state_dir))
        return {"version": __version__, "report": report.to_json(), "source": "checks run now",
                "maintenance": self._maintenance_status(), "daemon": self._daemon()}

    def _directory(self) -> str:
        """The state directory, without loading the config when the forced command names it (fast)."""
        return self.state_dir or self._config().agent.state_dir

    def _published(self) -> dict[str, Any] | None:
        """The daemon's last combined report, when it runs: what its checks found on their own schedule,
        without running them again (no smartctl per poll).  None: run the checks now instead."""
        from pathlib import Path

        directory = Path(self._directory())
        daemon = self._daemon()
        if self.root != "/" or daemon is None or daemon.get("last_cycle_at") is None:
            return None
        try:
            report = json.loads((directory / "report.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return {"version": __version__, "report": report, "source": "daemon",
                "maintenance": self._maintenance_status(), "daemon": daemon}

    def _daemon(self) -> dict[str, Any] | None:
        """What the agent daemon last published (its status file): the controller's dead-man switch."""
        from pathlib import Path

        try:
            status = json.loads((Path(self._directory()) / "status.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return {"pid": status.get("pid"), "last_cycle_at": (status.get("last_cycle") or {}).get("at"),
                "status": status.get("status")}

    def _disk_status(self) -> Any:
        from hostagent.context import CheckContext
        from hostagent.diskcmd import disk_status
        from hostagent.host import Host
        from hostagent.runner import open_state

        config = self._config()
        host = Host(self.root, command_timeout=config.agent.command_timeout)
        ctx = CheckContext.for_host(host, open_state(host, config, self.state_dir), config.disks.include,
                                    config.disks.exclude)
        return disk_status(ctx, config)

    def _maintenance_status(self) -> Any:
        from pathlib import Path

        from hostagent.maintenance.journal import JournalStore

        journals, unreadable = JournalStore(Path(self._directory()) / "maintenance").scan()
        rows = [j.row() for j in journals]
        active = [r for r in rows if r["phase"] not in ("done", "failed", "cancelled", "missed")]
        return {"active": active[0] if active else None, "last": rows[-1] if rows else None, "recent": rows[-5:],
                "unreadable": [entry.row() for entry in unreadable]}

    def _schedule(self, request: Request) -> Any:
        options = request.options
        document, _ = self._maintenance().schedule(
            self._config(), self.state_dir, str(options["--reboot-at"]), str(options.get("--reason", "")),
            dry_run=bool(options.get("--dry-run")), force=bool(options.get("--force")), force_unbootable=False,
            notify_owners=bool(options.get("--notify-owners")))
        return document


def serve(server: Server, command: str, audit: Callable[[dict[str, Any]], None]) -> tuple[dict[str, Any], int]:
    """One request: the JSON reply and the exit code."""
    started = time.time()
    client = os.environ.get("SSH_CLIENT", "").split(" ")[0] or None
    try:
        request = parse_request(command, server.allow)
    except Refused as err:
        audit({"event": "rpc", "action": "refused", "subject": command[:200], "client": client, "error": str(err)})
        return {"schema": SCHEMA, "ok": False, "refused": True, "error": str(err)}, 2
    try:
        result = server.handle(request)
    except HostagentError as err:
        audit({"event": "rpc", "action": request.verb, "subject": command[:200], "client": client,
               "error": str(err)})
        return {"schema": SCHEMA, "ok": False, "verb": request.verb, "error": str(err)}, 1
    audit({"event": "rpc", "action": request.verb, "subject": command[:200], "client": client,
           "duration_ms": round((time.time() - started) * 1000, 1)})
    return {"schema": SCHEMA, "ok": True, "verb": request.verb, "result": result}, 0


def allowed_verbs(text: str | None) -> tuple[str, ...]:
    """``--allow report,version,maintenance status``: verbs this key may run (all when not given)."""
    if not text:
        return tuple(VERBS)
    verbs = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in verbs if v not in VERBS]
    if unknown:
        raise HostagentError(f"--allow {', '.join(unknown)}: no such verb (verbs: {', '.join(VERBS)})")
    return verbs


def main(config_path: str | None, root: str, state_dir: str | None, allow: str | None = None,
         words: list[str] | None = None) -> int:
    """Serve SSH_ORIGINAL_COMMAND; without one (a local operator, Ansible's command module, or a client
    that asked for a shell) the words given here, which the client does not control."""
    from hostagent.actions import AuditLog

    try:
        server = Server(config_path, root, state_dir, allowed_verbs(allow))
    except HostagentError as err:
        sys.stdout.write(json.dumps({"schema": SCHEMA, "ok": False, "error": str(err)}) + "\n")
        return 1
    try:
        directory = state_dir or server._config().agent.state_dir
    except HostagentError as err:
        sys.stdout.write(json.dumps({"schema": SCHEMA, "ok": False, "error": str(err)}) + "\n")
        return 1
    log = AuditLog(directory)

    def audit(event: dict[str, Any]) -> None:
        try:
            log.record(event)
        except HostagentError as err:  # the reply still goes out; the failure shows in the sshd log
            print(f"hostagent rpc: {err}", file=sys.stderr)

    command = os.environ.get("SSH_ORIGINAL_COMMAND")
    reply, code = serve(server, " ".join(words or []) if command is None else command, audit)
    sys.stdout.write(json.dumps(reply) + "\n")
    return code
