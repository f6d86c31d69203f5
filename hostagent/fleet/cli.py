"""``hostagent fleet``: poll, status, watch, maintenance (rolling), page and metrics."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import logging
import os
import pwd
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from hostagent.config import Config
from hostagent.errors import HostagentError
from hostagent.fleet.controller import Controller, ReplyError, fleet_findings, render_status, status_rows
from hostagent.fleet.inventory import FleetHost
from hostagent.fleet.publish import metrics, page_extra, write_page
from hostagent.fleet.transport import TransportError
from hostagent.maintenance.when import parse_when

log = logging.getLogger("hostagent.fleet")
FINAL = ("done", "failed", "cancelled", "missed")


def refuse_foreign_state(state_dir: str) -> None:
    """Root must not write into the controller account's state: the files it left would be root's, and
    the service (running as that account) could no longer replace them."""
    try:
        owner = os.stat(state_dir).st_uid
    except OSError:
        return
    if os.geteuid() == 0 and owner != 0:
        try:
            name = pwd.getpwuid(owner).pw_name
        except KeyError:
            name = str(owner)
        raise HostagentError(f"{state_dir} belongs to {name}: run the controller as that account "
                             f"(runuser -u {name} -- hostagent ...), so that its files stay the service's")


def rows(controller: Controller) -> list[dict[str, Any]]:
    return status_rows(controller.store.hosts(), time.time(), controller.fleet)


def schedule_request(moment: dt.datetime, reason: str, notify_owners: bool, dry_run: bool) -> str:
    """The RPC line; the preflight is never overridden remotely (docs/security.md)."""
    request = f"maintenance schedule --reboot-at {moment.astimezone(dt.UTC).isoformat()}"
    if reason:
        request += f" --reason {quote(reason, safe='')}"
    for flag, on in (("--notify-owners", notify_owners), ("--dry-run", dry_run)):
        if on:
            request += f" {flag}"
    return request


def maintenance(controller: Controller, hosts: list[FleetHost], when: str, *, reason: str = "",
                notify_owners: bool = False, dry_run: bool = False, rolling: bool = False,
                batch: int = 1, health_gate: bool = False, step: float = 2.0,
                say: Callable[[str], None] = print) -> dict[str, Any]:
    """Schedule on every host at WHEN; ``rolling``: batch by batch, each waiting for the previous
    batch to report done (and healthy with ``health_gate``), stopping at the first failure."""
    moment = parse_when(when, dt.datetime.now(dt.UTC).astimezone())
    outcome: dict[str, Any] = {"hosts": {}, "stopped": None}
    if not rolling:
        for host in hosts:
            outcome["hosts"][host.name] = _schedule(controller, host, moment, reason, notify_owners, dry_run)
        failed = [n for n, r in outcome["hosts"].items() if "error" in r]
        outcome["stopped"] = f"not scheduled on {', '.join(failed)}" if failed else None
        return outcome
    batches = [hosts[i:i + max(batch, 1)] for i in range(0, len(hosts), max(batch, 1))]
    for index, group in enumerate(batches):
        at = moment if index == 0 else max(moment, dt.datetime.now(dt.UTC)
                                           + dt.timedelta(seconds=controller.fleet.rolling_start_delay))
        for host in group:
            result = _schedule(controller, host, at, reason, notify_owners, dry_run)
            outcome["hosts"][host.name] = result
            say(f"{host.name}: " + (f"scheduled {result['id']} at {result['reboot_at']}" if "id" in result
                                    else result.get("error", "dry run")))
            if "error" in result:
                outcome["stopped"] = f"{host.name}: could not schedule: {result['error']}"
                return outcome
        if dry_run:
            continue
        for host in group:
            verdict = _wait_done(controller, host, outcome["hosts"][host.name]["id"], health_gate, step, say)
            outcome["hosts"][host.name]["outcome"] = verdict
            if verdict != "done":
                outcome["stopped"] = f"{host.name}: {verdict}; rollout stopped"
                skipped = [h.name for g in batches[index + 1:] for h in g]
                outcome["not_started"] = skipped
                return outcome
    return outcome


def _schedule(controller: Controller, host: FleetHost, moment: dt.datetime, reason: str, notify_owners: bool,
              dry_run: bool) -> dict[str, Any]:
    try:
        document, _, _ = controller.ask(host, schedule_request(moment, reason, notify_owners, dry_run))
    except (TransportError, ReplyError) as err:
        return {"error": str(err)}
    return dict(document["result"])


def _wait_done(controller: Controller, host: FleetHost, journal_id: str, health_gate: bool, step: float,
               say: Callable[[str], None]) -> str:
    deadline = time.monotonic() + controller.fleet.rolling_timeout
    last = None
    while time.monotonic() < deadline:
        try:
            document, _, _ = controller.ask(host, "maintenance status")
        except (TransportError, ReplyError) as err:  # rebooting hosts do not answer for a while
            phase = f"unreachable ({err})"
        else:
            found = [r for r in document["result"].get("recent", []) if r["id"] == journal_id]
            phase = found[0]["phase"] if found else "unknown"
        if phase != last:
            say(f"{host.name}: maintenance {journal_id} {phase}")
            last = phase
        if phase == "done":
            return _health(controller, host) if health_gate else "done"
        if phase in FINAL:
            return f"maintenance {phase}"
        time.sleep(step)
    return f"not done within {controller.fleet.rolling_timeout:g} s"


def _health(controller: Controller, host: FleetHost) -> str:
    try:
        document, _, _ = controller.ask(host, "report")
    except (TransportError, ReplyError) as err:
        return f"health gate: no report ({err})"
    report = document["result"]["report"]
    if report.get("status") in ("CRITICAL", "UNKNOWN"):
        problems = [f"{f['code']} {f['subject']}" for f in report.get("findings", [])
                    if f.get("severity") in ("CRITICAL", "UNKNOWN")]
        return f"health gate: {report.get('status')} after the maintenance ({', '.join(problems)})"
    return "done"


class MetricsServer:
    """``/metrics`` for Prometheus, answering from the last poll."""

    def __init__(self, listen: str) -> None:
        address, _, port = listen.rpartition(":")
        self.text = ""
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                body = outer.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        try:
            self.server = http.server.ThreadingHTTPServer((address or "127.0.0.1", int(port)), Handler)
        except (OSError, ValueError) as err:
            raise HostagentError(f"fleet.metrics_listen {listen!r}: {err}") from None
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def watch(config: Config, once: bool = False, accept_new: bool = False) -> int:
    """The controller daemon: poll every ``poll_interval``, alert, publish, and mail a daily digest."""
    from pathlib import Path

    from hostagent.actions import AuditLog
    from hostagent.alerts.alerter import Alerter
    from hostagent.state import StateStore

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    controller = Controller(config, accept_new=accept_new)
    directory = Path(config.fleet.state_dir)
    state = StateStore(directory)
    alerter = Alerter(config.alerts, state, directory / "spool", f"fleet controller {socket.gethostname()}",
                      AuditLog.configured(directory, config.agent))
    server = MetricsServer(config.fleet.metrics_listen) if config.fleet.metrics_listen else None
    if not once:
        alerter.start_courier()
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        while not stopping.is_set():
            started = time.time()
            _report_own_health(alerter, _watch_cycle(config, controller, alerter, state, server))
            if once:
                break
            stopping.wait(max(config.fleet.poll_interval - (time.time() - started), 1.0))
    finally:
        alerter.stop_courier()
        controller.close()
        if server is not None:
            server.close()
    return 0


def _watch_cycle(config: Config, controller: Controller, alerter: Any, state: Any,
                 server: MetricsServer | None) -> list[str]:
    """One poll, alert and publish; each part runs under its own guard, so a failing part (a full
    disk under the page, a broken store row) neither stops the others nor the daemon.  Returns
    what failed."""
    from hostagent.output import write_atomic

    failures: list[str] = []

    def guarded(part: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except Exception as err:
            failures.append(f"{part}: {type(err).__name__}: {str(err)[:200]}")
            log.error("fleet watch: %s failed: %s: %s", part, type(err).__name__, err)
            return None

    started = time.time()
    results = guarded("poll", controller.poll) or []
    now = time.time()
    current = guarded("status rows", lambda: rows(controller)) or []
    alerts = guarded("alerts", lambda: alerter.process(fleet_findings(controller.store.hosts(), now, config.fleet),
                                                       ["fleet"])) or []
    for alert in alerts:
        log.warning("alert %s: %s %s", alert.kind, alert.record.code, alert.record.subject)
    text = guarded("metrics", lambda: metrics(current, now)) or ""
    if server is not None:
        server.text = text
    prom_file, page_dir = config.fleet.prom_file, config.fleet.page_dir
    if prom_file:
        guarded("metrics textfile", lambda: write_atomic(prom_file, text))
    if page_dir:
        span = config.fleet.retention_days * 86400
        guarded("status page", lambda: write_page(page_dir, current, now,
                                                  page_extra(controller.store, current, now, span), span))
    if config.fleet.digest:
        guarded("digest", lambda: _digest(alerter, state, current, now, config.fleet.digest_hour))
    failed = [r for r in results if not r.ok]
    log.info("polled %d hosts in %.1f s: %d failed", len(results), now - started, len(failed))
    return failures


def _report_own_health(alerter: Any, failures: list[str]) -> None:
    """The controller's own trouble, alerted like any finding; it resolves when a cycle runs clean."""
    from hostagent.model import Finding, Severity

    findings = [Finding("fleet.cycle_failed", "fleet-self", "controller", Severity.CRITICAL,
                        f"fleet watch cycle failed: {'; '.join(failures)}")] if failures else []
    try:
        alerter.process(findings + alerter.delivery_findings("fleet-self"), ["fleet-self"])
    except Exception as err:
        log.error("fleet watch: cannot alert on its own failure: %s: %s", type(err).__name__, err)


def _digest(alerter: Any, state: Any, current: list[dict[str, Any]], now: float, hour: int) -> None:
    today = dt.datetime.fromtimestamp(now, dt.UTC)
    if today.hour < hour or state.get("fleet.digest_date") == today.date().isoformat():
        return
    problems = [r for r in current if r["status"] not in ("OK", "INFO")]
    subject = f"[hostagent] fleet digest {today.date()}: {len(problems)} of {len(current)} hosts need attention"
    alerter.mail(subject, render_status(sorted(current, key=lambda r: r["host"])), alerter.operators(),
                 "fleet.digest")
    state.put("fleet.digest_date", today.date().isoformat())


def render(document: Any) -> str:
    return json.dumps(document, indent=2) + "\n"
