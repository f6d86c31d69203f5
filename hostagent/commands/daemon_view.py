"""``hostagent status``, ``hostagent log`` and ``hostagent alert test``: the daemon's view, read from
its state directory (the status file, the audit journal, the alert routes)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from hostagent.actions import read_audit
from hostagent.config import Config, load_config
from hostagent.durable import read_bounded
from hostagent.errors import HostagentError
from hostagent.model import Severity

MAX_STATUS = 16 << 20


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    directory = Path(args.state_dir or config.agent.state_dir)
    if args.command == "alert":
        return alert_test(config, directory, args.state_dir)
    if args.command == "log":
        return show_log(directory, args.last, args.json)
    return show_status(directory, args.json)


def alert_test(config: Config, directory: Path, state_dir: str | None) -> int:
    from hostagent.actions import AuditLog
    from hostagent.alerts.alerter import Alerter
    from hostagent.host import Host
    from hostagent.state import StateStore

    if not config.alerts.routes:
        raise HostagentError(f"no alert routes in {config.source}: add [[alerts.routes]] with to = [...]")
    alerter = Alerter(config.alerts, StateStore(None), directory / "spool", Host("/").hostname(),
                      AuditLog(state_dir))
    failed = 0
    for route, error in alerter.test():
        print(f"{', '.join(route)}: {'sent' if error is None else 'FAILED: ' + error}")
        failed += error is not None
    return 1 if failed else 0


def show_log(directory: Path, last: int, as_json: bool) -> int:
    """The last records of the audit journal (across its rotated files); a torn or foreign line is
    shown as such, never a crash."""
    for line, entry in read_audit(directory, last):
        if as_json:
            print(line if entry is not None else json.dumps({"torn": line[:500]}))
            continue
        if entry is None:
            print(f"(torn record: {line[:120]!r})")
            continue
        argv = entry.get("argv")
        what = (" ".join(str(a) for a in argv) if isinstance(argv, list) else "") or \
            f"{entry.get('kind', '')} {entry.get('code', '')}".strip()
        print(f"{entry.get('time')} {entry.get('event')!s:8} {entry.get('subject', '-')!s:16} {what}"
              + (f"  error: {entry['error']}" if entry.get("error") else ""))
    return 0


def show_status(directory: Path, as_json: bool) -> int:
    path = directory / "status.json"
    try:
        status = json.loads(read_bounded(path, MAX_STATUS))
        if not isinstance(status, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        raise HostagentError(f"no status file at {path}: is hostagent watch running with this state "
                             "directory?") from None
    except (OSError, ValueError) as err:
        raise HostagentError(f"{path}: unreadable status file: {err}") from None
    running = Path(f"/proc/{status.get('pid')}").exists()
    worst = status_severity(status, running)
    if as_json:
        print(json.dumps({**status, "running": running, "exit_code": worst.exit_code}, indent=2))
    else:
        print(render_status(status, running, acknowledged(directory)), end="")
    return worst.exit_code


def acknowledged(directory: Path) -> dict[str, str]:
    """Alert key -> how it is acknowledged, from the daemon's state store (none without one)."""
    from hostagent.alerts import acks
    from hostagent.state import STATE_FILE, StateStore

    if not (directory / STATE_FILE).is_file():
        return {}
    return {key: ack.describe() for key, ack in acks.active(StateStore(directory), time.time()).items()}


def status_severity(status: dict[str, Any], running: bool) -> Severity:
    """The worst open problem; UNKNOWN, unless something is worse, when the daemon is not running
    (its problems are then as old as its last cycle)."""
    found = [Severity[p["severity"]] for p in status.get("open_problems") or []
             if isinstance(p, dict) and p.get("severity") in Severity.__members__]
    return Severity.worst([*found, *([] if running else [Severity.UNKNOWN])])


def status_line(status: dict[str, Any], running: bool) -> str:
    """``CRITICAL - md0 degraded (1 of 2) | critical=1;;;0 ...``: the daemon's result as a passive check."""
    from hostagent.plugin import SHOWN, STATE, label

    worst = status_severity(status, running)
    problems = [p for p in status.get("open_problems") or []
                if isinstance(p, dict) and p.get("severity") not in ("OK", "INFO")]
    from hostagent.rpc import shown

    named = "; ".join(shown(str(p.get("short") or f"{p.get('subject')} {p.get('code')}"), 200)
                      for p in problems[:SHOWN])
    if len(problems) > SHOWN:
        named += f" (+{len(problems) - SHOWN} more)"
    if not running:
        named = "hostagent watch is NOT RUNNING" + (f"; {named}" if named else "")
    age = max(0.0, time.time() - float(status["last_cycle"]["at"]))
    counts = " ".join(f"{label(s.label)}={sum(p.get('severity') == s.name for p in problems)};;;0"
                      for s in (Severity.CRITICAL, Severity.WARNING, Severity.UNKNOWN))
    return f"{STATE[worst]} - {named or 'no problems'} | {counts} last_cycle_age={age:.0f}s;;;0"


def undelivered_line(item: dict[str, Any]) -> str:
    """One undelivered mail for the terminal: where it is, its subject or file, tries, last error."""
    from hostagent.rpc import shown

    if not isinstance(item, dict):
        return "  UNDELIVERED (unreadable record)"
    where = {"waiting": "WAITING", "memory": "IN MEMORY ONLY", "failed": "FAILED", "corrupt": "CORRUPT"}.get(
        str(item.get("where")), "UNDELIVERED")
    name = item.get("subject") or item.get("file") or item.get("message_id") or "?"
    said = f"  {where:14} {shown(str(name), 120)}"
    if item.get("to"):
        said += f" to {shown(', '.join(map(str, item['to'])), 120)}"
    if isinstance(item.get("attempts"), int) and item["attempts"]:
        said += f", {item['attempts']} tries"
    if isinstance(item.get("age_s"), int | float):
        said += f", waiting {float(item['age_s']):.0f} s"
    if item.get("last_error"):
        said += f": {shown(str(item['last_error']), 200)}"
    return said


def render_status(status: dict[str, Any], running: bool, acks: dict[str, str] | None = None) -> str:
    def when(at: float, form: str = "%Y-%m-%d %H:%M:%S") -> str:
        return time.strftime(form, time.localtime(at))

    lines = [status_line(status, running),
             f"hostagent watch on {status['hostname']}: {'running' if running else 'NOT RUNNING'} "
             f"(pid {status['pid']}), status {status['status']}"]
    cycle = status["last_cycle"]
    lines.append(f"last cycle: {when(cycle['at'])} ({', '.join(cycle['checks'])}, {cycle['duration_ms']} ms)")
    for name, at in sorted(status["next_runs"].items(), key=lambda item: item[1]):
        lines.append(f"next {name}: {when(at, '%H:%M:%S')}")
    from hostagent.rpc import shown  # every string below came from a host or a file: the terminal's boundary

    for part, error in sorted((status.get("failing") or {}).items()):
        lines.append(f"FAILING {shown(str(part), 120)}: {shown(str(error), 400)}")
    last_error = status.get("last_error")
    if last_error:
        lines.append(f"last error: {when(last_error['at'])} {shown(str(last_error['error']), 400)}")
    problems = status["open_problems"]
    lines.append(f"open problems: {len(problems)}")
    for problem in problems:
        lines.append(f"  {shown(str(problem['severity']), 12):8} {shown(str(problem['code']), 60):24} "
                     f"{shown(str(problem['subject']), 120):12} {shown(str(problem['summary']), 400)}")
        ack = (acks or {}).get(f"{problem['code']}|{problem['subject']}")
        if ack:
            lines.append(f"  {'':8} {ack}")
    spool = status["spool"]
    if spool["messages"]:
        lines.append(f"mail spool: {spool['messages']} waiting" + (" (OVERDUE)" if spool["overdue"] else ""))
    for item in spool.get("undelivered") or []:  # every mail that has not reached its readers, by name
        lines.append(undelivered_line(item))
    for refused in status.get("refused_recipients") or []:
        at = refused.get("at")
        since = when(at) if isinstance(at, int | float) and not isinstance(at, bool) and 0 <= at < 1e11 else "?"
        lines.append(f"REFUSED recipient {shown(str(refused.get('address')), 320)}: "
                     f"{shown(str(refused.get('code')), 10)} {shown(str(refused.get('reply')), 300)} (since {since})")
    return "\n".join(lines) + "\n"
