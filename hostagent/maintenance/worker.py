"""The maintenance worker: one maintenance step in a child process.

``python -m hostagent.maintenance.worker --state-dir DIR [--config FILE] run|restore ID``

The daemon (and ``maintenance run-now``) start it and kill it at a deadline, so a hypervisor
call or a device that hangs can stall only this process, never the daemon.  The journal records
every step, so whatever stops the worker, the next one resumes from the truth.  It prints
progress (redrawn on a terminal, log lines otherwise) and ends with one JSON line: the outcome.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hostagent.config import Config, MaintenanceConfig
from hostagent.errors import HostagentError
from hostagent.host import Host
from hostagent.hypervisor import Hypervisor
from hostagent.maintenance.journal import Journal, JournalStore
from hostagent.records import record

KILL_GRACE = 5.0


def deadline_for(action: str, journal: Journal, config: MaintenanceConfig) -> float:
    """How long a worker may take before the daemon kills it: the sum of the step timeouts it may use."""
    rounds = math.ceil(max(len(journal.guests), 1) / max(config.concurrency, 1))
    if action == "run":
        return 120 + rounds * (config.save_timeout + config.abort_grace) + config.shutdown_timeout + 120
    return 60 + (len(config.restore_priority) + rounds) * config.restore_attempts * config.restore_timeout


def command(action: str, journal_id: str, state_dir: str, config_path: str | None) -> list[str]:
    argv = [sys.executable, "-m", "hostagent.maintenance.worker", "--state-dir", state_dir]
    if config_path:
        argv += ["--config", config_path]
    return [*argv, action, journal_id]


@record
class Worker:
    """A running worker, as the daemon sees it."""

    action: str
    journal_id: str
    process: subprocess.Popen[bytes]
    deadline: float
    started: float  # monotonic, when the process started: no default (0 is a machine's boot, not a start)
    log_path: Path | None = None

    def extend_to(self, journal: Journal, config: MaintenanceConfig) -> None:
        """The deadline for the guests the journal has now: the run-time plan and the final listing add
        guests the deadline at the start did not count, and a worker killed mid-save on xl leaves a
        domain suspended."""
        self.deadline = max(self.deadline, self.started + deadline_for(self.action, journal, config))

    @classmethod
    def start(cls, action: str, journal: Journal, state_dir: str, config: Config, config_path: str | None,
              log_path: Path | None = None) -> Worker:
        out = log_path.open("ab") if log_path is not None else None
        try:
            process = subprocess.Popen(command(action, journal.id, state_dir, config_path),
                                       stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        finally:
            if out is not None:
                out.close()
        now = time.monotonic()
        return cls(action, journal.id, process, now + deadline_for(action, journal, config.maintenance), started=now,
                   log_path=log_path)

    def last_words(self) -> str:
        """The last line the worker wrote to its log (its outcome or its error)."""
        if self.log_path is None:
            return "no log"
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(max(0, handle.seek(0, os.SEEK_END) - 2048))
                tail = handle.read().decode(errors="replace").strip().splitlines()
        except OSError as err:
            return f"{self.log_path}: {err.strerror or err}"
        return tail[-1] if tail else "no output"

    def finished(self) -> bool:
        return self.process.poll() is not None

    def overdue(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) > self.deadline

    def kill(self) -> None:
        kill_group(self.process)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker and its whole process group (it runs in a session of its own): an ``xl save`` or a
    shutdown it started must not outlive it and take a guest down after a later worker restored it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):  # a child in D state cannot be reaped: leave it
        process.wait(timeout=KILL_GRACE)


def restorers_on(host: Host, hypervisor: Hypervisor) -> dict[str, str]:
    """The services on this host that may restore a guest before we do (named in its outcome)."""
    from hostagent.maintenance.coexist import detect, restorers

    try:
        return restorers(detect(host, hypervisor.guests()))
    except HostagentError:
        return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hostagent.maintenance.worker")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--config")
    parser.add_argument("action", choices=("run", "restore"))
    parser.add_argument("id")
    args = parser.parse_args(argv)
    from hostagent.actions import AuditLog
    from hostagent.config import load_config
    from hostagent.maintenance.run import current_boot_id, execute, resume_after_boot
    from hostagent.progress import ProgressBoard
    from hostagent.state import StateStore

    progress = ProgressBoard(sys.stdout)
    try:
        config = load_config(args.config)
        store = JournalStore(Path(args.state_dir) / "maintenance")
        audit = AuditLog.configured(args.state_dir, config.agent)
        with store.worker(args.id):  # one worker per maintenance, even one a killed daemon left behind
            journal = store.load(args.id)
            if args.action == "run":
                host = Host("/", command_timeout=config.agent.command_timeout)
                result: Journal | None = execute(host, StateStore(args.state_dir), config, store, journal, audit,
                                                 progress)
            else:
                from hostagent.hypervisor import select

                settings = select.resolve(config.maintenance, Host("/"))
                moved = select.changed(journal.hypervisor, settings)
                if moved:  # the images are the planned backend's: left for a daemon that sees it again
                    raise HostagentError(f"maintenance {journal.id}: not restored: {moved}")
                hypervisor = select.connect(settings)
                result = resume_after_boot(store, hypervisor, settings, audit, progress,
                                           others=restorers_on(Host("/"), hypervisor),
                                           boot_id=current_boot_id(Host("/")))
    except HostagentError as err:
        _say({"id": args.id, "action": args.action, "error": str(err)})
        os._exit(1)
    progress.close()
    outcome = {"id": args.id, "action": args.action, "phase": result.phase if result else None,
               "error": result.error if result else None}
    behind = result is not None and _on_disk(store, args.id) != result
    if behind:  # the journal could not be written: the daemon must hear of it, and resume from the disk
        outcome["error"] = f"the journal on disk is behind this run (it ended {outcome['phase']}): {outcome['error']}"
    _say(outcome)
    os._exit(2 if behind else 0)  # a hypervisor call stuck in a thread must not keep the worker alive


def _say(outcome: dict[str, object]) -> None:
    """The worker's last line for the daemon; a log that cannot be written (a full disk) is no reason to fail."""
    with contextlib.suppress(OSError):
        print(json.dumps(outcome), flush=True)


def _on_disk(store: JournalStore, journal_id: str) -> Journal | None:
    try:
        return store.load(journal_id)
    except HostagentError:
        return None


if __name__ == "__main__":
    sys.exit(main())
