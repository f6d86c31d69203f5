"""Run inside a host that the Ansible role set up, as root: every way a stolen controller key
might be used beyond its forced command, and what the RPC account and another user can reach.
Prints one JSON object (tests/ansible_run.py asserts on it).  Standalone: only the standard library."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

KEY = "/var/lib/hostagent-fleet/id_ed25519"
TARGET = "hostagent-rpc@127.0.0.1"
OPTIONS = ["-i", KEY, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
           "-o", "UserKnownHostsFile=/var/lib/hostagent-fleet/known_hosts", "-o", "ConnectTimeout=30"]
SOCKET = "/run/hostagent/rpc.sock"
CANARY = "/tmp/hostagent-canary"


def run(argv: list[str], stdin: str = "") -> dict[str, object]:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return {"rc": None, "last": "", "stderr": "timed out"}
    lines = done.stdout.strip().splitlines()
    return {"rc": done.returncode, "last": lines[-1][-(1 << 20):] if lines else "", "stderr": done.stderr[-2000:]}


def ssh(*args: str) -> dict[str, object]:
    return run(["ssh", *OPTIONS, *args])


def as_user(user: str, group: str | None, code: str) -> dict[str, object]:
    groups = ["-g", group] if group else []
    return run(["runuser", "-u", user, *groups, "--", sys.executable, "-c", code])


CONNECT = (
    "import json, socket\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "try:\n"
    f"    s.connect({SOCKET!r})\n"
    "except OSError as err:\n"
    "    print('connect:', err.strerror); raise SystemExit(3)\n"
    "s.sendall(json.dumps({'op': 'request', 'command': 'report', 'allow': ['report']}).encode() + b'\\n')\n"
    "s.shutdown(socket.SHUT_WR)\n"
    "print(s.makefile().read())\n"
)

results: dict[str, object] = {
    "report": ssh(TARGET, "report"),
    "metacharacters": ssh(TARGET, f"touch {CANARY}; id"),
    "substitution": ssh(TARGET, f"report $(touch {CANARY})"),
    "force": ssh(TARGET, "maintenance schedule --reboot-at now --reason stolen --force"),
    "unknown_verb": ssh(TARGET, f"maintenance run --state-dir /tmp && touch {CANARY}"),
    "shell": ssh("-tt", TARGET),
    "shell_stdin": run(["ssh", *OPTIONS, "-T", TARGET], stdin=f"touch {CANARY}\nid\n"),
    "remote_forward": ssh("-N", "-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:2299:127.0.0.1:22", TARGET),
    "stdio_forward": ssh("-W", "127.0.0.1:22", TARGET),
    "scp": run(["scp", "-O", *OPTIONS, "/etc/hostname", f"{TARGET}:{CANARY}"]),
    "scp_sftp": run(["scp", *OPTIONS, "/etc/hostname", f"{TARGET}:{CANARY}"]),
    "sftp": run(["sftp", *OPTIONS, "-b", "-", TARGET], stdin=f"put /etc/hostname {CANARY}\n"),
    "state_dir": as_user("hostagent-rpc", None, "import os; print(os.listdir('/var/lib/hostagent'))"),
    "audit": as_user("hostagent-rpc", None, "print(open('/var/lib/hostagent/audit.jsonl').read()[:100])"),
    "journals": as_user("hostagent-rpc", None, "import os; print(os.listdir('/var/lib/hostagent/maintenance'))"),
    "rpc_account_socket": as_user("hostagent-rpc", None, CONNECT),
}
subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "hostagent-intruder"],
               capture_output=True)
results["intruder_socket"] = as_user("hostagent-intruder", None, CONNECT)
results["intruder_with_group"] = as_user("hostagent-intruder", "hostagent-rpc", CONNECT)
results["intruder_uid"] = int(subprocess.run(["id", "-u", "hostagent-intruder"], capture_output=True,
                                             text=True).stdout.strip() or -1)
results["canary"] = os.path.exists(CANARY) or os.path.exists(f"/var/lib/hostagent-rpc/{os.path.basename(CANARY)}")
results["fingerprint"] = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", KEY + ".pub"],
                                        capture_output=True, text=True).stdout.split()[1]
stat = os.stat(SOCKET)
results["socket"] = {"mode": oct(stat.st_mode & 0o777), "uid": stat.st_uid, "gid": stat.st_gid}
results["rpc_gid"] = int(subprocess.run(["id", "-g", "hostagent-rpc"], capture_output=True, text=True).stdout)
results["hostname"] = socket.gethostname()
print(json.dumps(results))
