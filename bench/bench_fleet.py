"""Fleet polling throughput: hostagent's controller (cold and warm) against Ansible and plain ssh.

Logical hosts (50 and 200) are spread over five real sshds: four in network namespaces and one
on loopback.  Every method runs the same remote work, ``hostagent rpc report`` (all checks), so the
difference is the transport and the controller:

The agents' daemon has run once, so ``report`` returns its published report, as in production.

- hostagent cold: a new controller (no pooled connections); warm: the same controller again;
- ``ansible all -m command -a '... hostagent rpc report' -f 50`` (its own key, no forced command);
- a loop of OpenSSH ``ssh`` clients, 50 at a time, with the controller's (forced-command) key.

The agents run on this same 2-core machine, so every method also pays for their checks; the
controller's own CPU per host per poll (user + system of its process over a warm poll) gives how
many hosts one controller core can poll every 60 s.

    .venv/bin/python bench/bench_fleet.py [--sizes 50,200]     (make bench-fleet)
"""

from __future__ import annotations

import argparse
import os
import pwd
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hostagent.config import parse_config  # noqa: E402
from hostagent.fleet.controller import Controller  # noqa: E402
from tests.sshfleet import SSHD, USER, SshFleet, agent_command, keygen  # noqa: E402

CONCURRENCY = 50
LOOPBACK_PORT = 2299


def loopback_sshd(base: Path, authorized: str) -> tuple[subprocess.Popen[bytes], str]:
    directory = base / "loopback"
    directory.mkdir()
    directory.chmod(0o755)
    host_key = keygen(directory / "host_key")
    (directory / "authorized_keys").write_text(authorized)
    (directory / "sshd_config").write_text(
        f"Port {LOOPBACK_PORT}\nListenAddress 127.0.0.1\nHostKey {directory / 'host_key'}\nPidFile none\n"
        f"UsePAM no\nStrictModes no\nAuthorizedKeysFile {directory / 'authorized_keys'}\nMaxStartups 400\n"
        "MaxSessions 400\nPasswordAuthentication no\nLogLevel ERROR\n")
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(directory / "sshd_config")])
    time.sleep(0.5)
    return process, f"[127.0.0.1]:{LOOPBACK_PORT} {' '.join(host_key.split()[:2])}"


def publish_daemon_report(config: Path, state: Path) -> None:
    """As on a real host, the agent daemon has run its checks: ``report`` returns its published report."""
    user = pwd.getpwnam(USER)
    site = next((REPO / ".venv/lib").glob("python3*/site-packages"))
    subprocess.run(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "env",
                    f"PYTHONPATH={REPO}:{site}", "/usr/bin/python3", "-m", "hostagent", "--config", str(config),
                    "watch", "--once", "--state-dir", str(state)], check=True, capture_output=True, cwd="/")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    base = Path(tempfile.mkdtemp(prefix="habench-", dir="/tmp"))
    base.chmod(0o755)  # the agents' account reads its authorized_keys below it
    try:
        with SshFleet(base / "hosts", 4) as fleet:
            ansible_key = base / "ansible_key"
            ansible_public = keygen(ansible_key)
            state = base / "agent-state"
            state.mkdir()
            shutil.chown(state, USER)
            config = fleet.hosts[0].config
            publish_daemon_report(config, state)
            forced = agent_command(config, state)
            authorized = (f'restrict,command="{forced}" {fleet.controller_public}\n{ansible_public}\n')
            for host in fleet.hosts:
                (host.directory / "authorized_keys").write_text(authorized)
                (host.directory / "sshd_config").write_text(
                    (host.directory / "sshd_config").read_text().replace("MaxStartups 200", "MaxStartups 400\n"
                                                                         "MaxSessions 400"))
                host.process.terminate()  # type: ignore[union-attr]
                host.process.wait()  # type: ignore[union-attr]
                fleet.start(host)
            loopback, loopback_key = loopback_sshd(base, authorized)
            try:
                endpoints = [(h.address, 22) for h in fleet.hosts] + [("127.0.0.1", LOOPBACK_PORT)]
                known = base / "known_hosts"
                known.write_text("".join(f"{h.host_key_line}\n" for h in fleet.hosts) + loopback_key + "\n")
                results = {n: measure(n, endpoints, base, fleet, known, ansible_key, forced) for n in sizes}
            finally:
                loopback.terminate()
        report(results)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


def measure(count: int, endpoints: list[tuple[str, int]], base: Path, fleet: SshFleet, known: Path,
            ansible_key: Path, forced: str) -> dict[str, float]:
    inventory = base / f"inventory-{count}.ini"
    lines = ["[hypervisors]"]
    for index in range(count):
        address, port = endpoints[index % len(endpoints)]
        lines.append(f"h{index:03d} ansible_host={address} ansible_port={port} ansible_user={USER}")
    inventory.write_text("\n".join(lines) + "\n")
    config = parse_config({"fleet": {"inventory": str(inventory), "key": str(fleet.controller_key),
                                     "known_hosts": str(known), "state_dir": str(base / f"fleet-{count}"),
                                     "concurrency": CONCURRENCY, "connect_timeout": 30.0,
                                     "command_timeout": 120.0}, "alerts": {"enabled": False}})
    controller = Controller(config)
    started = time.monotonic()
    cold = controller.poll()
    cold_s = time.monotonic() - started
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    warm = controller.poll()
    warm_s = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    controller.close()
    assert all(r.ok for r in cold + warm), [r.error for r in cold + warm if not r.ok][:3]
    assert all(r.reused for r in warm), "the warm poll opened new connections"
    cpu_per_host = ((after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)) / count
    ansible_s = ansible(inventory, ansible_key, known, forced, count)
    ssh_s = ssh_loop(count, endpoints, fleet.controller_key, known)
    return {"cold": count / cold_s, "warm": count / warm_s, "ansible": count / ansible_s, "ssh": count / ssh_s,
            "cpu_ms": cpu_per_host * 1000, "warm_s": warm_s, "ansible_s": ansible_s}


def ansible(inventory: Path, key: Path, known: Path, forced: str, count: int) -> float:
    command = forced.replace("PYTHONPATH=", "env PYTHONPATH=", 1) + " report"
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_SSH_ARGS":
           f"-o UserKnownHostsFile={known} -o ControlMaster=auto -o ControlPersist=60s",
           "ANSIBLE_PRIVATE_KEY_FILE": str(key), "ANSIBLE_REMOTE_TMP": "/tmp/.ansible-hafleet",
           "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3", "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.minimal",
           "ANSIBLE_LOCAL_TEMP": str(inventory.parent / "ansible-local")}
    started = time.monotonic()
    done = subprocess.run([str(REPO / ".venv/bin/ansible"), "all", "-i", str(inventory), "-f", str(CONCURRENCY),
                           "-m", "ansible.builtin.command", "-a", command], capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    ok = done.stdout.count('"ok": true') + done.stdout.count('\\"ok\\": true')
    if done.returncode != 0 or ok < count:
        raise SystemExit(f"ansible failed ({ok} of {count} ok): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    return seconds


def ssh_loop(count: int, endpoints: list[tuple[str, int]], key: Path, known: Path) -> float:
    def one(index: int) -> None:
        address, port = endpoints[index % len(endpoints)]
        done = subprocess.run(["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes",
                               "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                               f"{USER}@{address}", "report"], capture_output=True, text=True, timeout=300)
        if '"ok": true' not in done.stdout:
            raise SystemExit(f"ssh to {address}:{port} failed: {done.stdout[-300:]} {done.stderr[-300:]}")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        list(pool.map(one, range(count)))
    return time.monotonic() - started


def report(results: dict[int, dict[str, float]]) -> None:
    print(f"hosts per second (higher is better); concurrency {CONCURRENCY}; remote work: hostagent rpc report\n")
    print("| logical hosts | hostagent cold | hostagent warm | ansible -f 50 | ssh loop | warm / ansible |")
    print("|---|---|---|---|---|---|")
    for count, r in results.items():
        print(f"| {count} | {r['cold']:.1f} | {r['warm']:.1f} | {r['ansible']:.1f} | {r['ssh']:.1f} | "
              f"{r['warm'] / r['ansible']:.1f}x |")
    print()
    for count, r in results.items():
        per_core = 60 / (r["cpu_ms"] / 1000)
        print(f"{count} hosts: controller CPU {r['cpu_ms']:.1f} ms per host per warm poll -> one core polls about "
              f"{per_core:,.0f} hosts every 60 s (the agents' own work not counted)")


if __name__ == "__main__":
    sys.exit(main())
