"""A stand-in reboot command for tests: ``python -m tests.fake_reboot PIDFILE LOG -- DAEMON-ARGV...``.

Like a real reboot it stops the daemon (SIGTERM), lets the maintenance worker that ran it finish,
and starts a new daemon afterwards (as the boot would), appending its output to LOG and its pid to
PIDFILE.  It returns at once, as ``systemctl reboot`` does.

``--hook PROGRAM`` (first): run ``PROGRAM shutdown`` once the old processes are gone and ``PROGRAM
boot`` before the new daemon starts, for what a real shutdown and boot also run (libvirt-guests,
libvirt's autostart).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def main() -> int:
    if sys.argv[1] == "--restart":  # the detached half: wait for the old processes, then "boot"
        _, hook, pidfile, log, old_daemon, worker, *argv = sys.argv[1:]
        for pid in (int(old_daemon), int(worker)):
            while _alive(pid):
                time.sleep(0.1)
        with open(log, "ab") as out:
            for stage in ("shutdown", "boot") if hook else ():
                out.write(f"== fake reboot: {hook} {stage}\n".encode())
                out.flush()
                subprocess.run([hook, stage], stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=False)
        with open(log, "ab") as out:
            daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        Path(pidfile).write_text(f"{daemon.pid}\n")
        return 0
    hook = ""
    args = sys.argv[1:]
    if args[0] == "--hook":
        hook, args = args[1], args[2:]
    pidfile, log, dash, *argv = args
    assert dash == "--", "usage: python -m tests.fake_reboot PIDFILE LOG -- DAEMON-ARGV..."
    old = int(Path(pidfile).read_text())
    os.kill(old, signal.SIGTERM)
    subprocess.Popen([sys.executable, "-m", "tests.fake_reboot", "--restart", hook, pidfile, log, str(old),
                      str(os.getppid()), *argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
