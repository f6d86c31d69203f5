"""The Ansible install, for real: ansible/site.yml against a VM (tests/vm/test_xen.py's Xen dom0) that
is both a hypervisor and the controller, and the checks an operator would make after it."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.debian_vm import DebianVM

REPO = Path(__file__).resolve().parent.parent
WHEELHOUSE = REPO / ".cache" / "wheelhouse"
# the README's command: ansible/wheelhouse.py's list, so the tested wheelhouse is the documented one
DEPENDENCIES = subprocess.run([sys.executable, str(REPO / "ansible/wheelhouse.py")], capture_output=True, text=True,
                              check=True).stdout.split()


def wheelhouse() -> Path:
    """The offline wheelhouse the roles copy to hosts without internet (downloaded once per dependency list)."""
    marker = WHEELHOUSE / ".complete"
    if not marker.exists() or marker.read_text() != "\n".join(DEPENDENCIES):
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest",
                        str(WHEELHOUSE), *DEPENDENCIES], check=True, capture_output=True)
        marker.write_text("\n".join(DEPENDENCIES))
    return WHEELHOUSE


def inventory(vm: DebianVM, tmp: Path) -> Path:
    dist = tmp / "dist"  # a fresh wheel of this working tree
    path = tmp / "inventory.ini"
    path.write_text(
        "[hypervisors]\n"
        f"debian12 ansible_host=127.0.0.1 ansible_port={vm.port} hostagent_fleet_address=127.0.0.1 "
        "hostagent_fleet_port=22\n\n[controller]\ndebian12\n\n[all:vars]\nansible_user=root\n"
        f"ansible_ssh_private_key_file={vm.key}\n"
        f"ansible_ssh_common_args='-o UserKnownHostsFile={vm.known_hosts} -o StrictHostKeyChecking=yes "
        "-o IdentitiesOnly=yes'\nansible_python_interpreter=/usr/bin/python3\n"
        f"hostagent_wheelhouse={wheelhouse()}\nhostagent_controller_wheelhouse={wheelhouse()}\n"
        f"hostagent_local_dist={dist}\nhostagent_controller_local_dist={dist}\n"
        # one poll at the controller's start (the status page); more, each an SSH login and an agent
        # report on a CPU emulated by TCG, would load the dom0 through every later test
        "hostagent_smart_enabled=false\nhostagent_controller_poll_interval=600\n")
    return path


def playbook(inventory_path: Path, *args: str, mitogen: bool = False) -> subprocess.CompletedProcess[str]:
    return playbooks(inventory_path, args, mitogen=mitogen)[0]


def playbooks(inventory_path: Path, *runs: tuple[str, ...], mitogen: bool = False
              ) -> list[subprocess.CompletedProcess[str]]:
    """ansible/site.yml with each of ``runs``' arguments, all at once (each its own process and stamped
    log, playbook-N.log beside the inventory): the emulated dom0 has two CPUs, and one run keeps one busy.

    ``mitogen``: through Mitogen's linear strategy (``mitogen_linear``), which runs the same modules
    with the same arguments on the same host, from one Python interpreter per run kept on the host,
    instead of a Python started and ``ansible.module_utils`` imported again for every task: on the
    emulated dom0 that start was three quarters of a run's CPU (docs/testing.md, "Fifth round")."""
    taken = len(list(inventory_path.parent.glob("playbook-*.log")))
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(runs)) as pool:
        started = [pool.submit(_playbook, inventory_path, taken + number, args, mitogen)
                   for number, args in enumerate(runs, start=1)]
        return [run.result() for run in started]


def mitogen_strategies() -> Path:
    """Mitogen's strategy plugins (the ``mitogen`` package, a dev dependency)."""
    import ansible_mitogen  # type: ignore[import-untyped]  # here: only a Mitogen run needs it

    return Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"


def _playbook(inventory_path: Path, number: int, args: tuple[str, ...],
              mitogen: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible/ansible.cfg"),
           "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_LOCAL_TEMP": str(inventory_path.parent / "tmp"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "PATH": f"{REPO / '.venv/bin'}:{os.environ['PATH']}"}
    env.pop("ANSIBLE_STRATEGY", None)
    env.pop("ANSIBLE_STRATEGY_PLUGINS", None)
    if mitogen:
        # Mitogen's connect timeout (Ansible's ``timeout``, 10 s) covers the login, the remote Python's start
        # and its bootstrap, not only the TCP connect: on the emulated dom0 beside the rest of the suite that
        # took over 10 s (both runs after the operator's checks found the host "unreachable")
        env |= {"ANSIBLE_STRATEGY_PLUGINS": str(mitogen_strategies()), "ANSIBLE_STRATEGY": "mitogen_linear",
                "ANSIBLE_TIMEOUT": "120"}
    command = [str(REPO / ".venv/bin/ansible-playbook"), "-i", str(inventory_path), str(REPO / "ansible/site.yml"),
               *args]
    log = inventory_path.parent / f"playbook-{number}.log"  # each line stamped with its second: where time goes
    lines: list[str] = []
    started = time.monotonic()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as process, \
            log.open("x") as stamped:
        timer = threading.Timer(2400, process.kill)
        timer.start()
        try:
            for line in process.stdout:  # type: ignore[union-attr]
                lines.append(line)
                stamped.write(f"{time.monotonic() - started:7.1f} {line}")
                stamped.flush()
        finally:
            timer.cancel()
    return subprocess.CompletedProcess(command, process.returncode, "".join(lines), "")


def changed_tasks(output: str) -> list[str]:
    """The task headers followed by a ``changed:`` line: what a run that should change nothing changed."""
    found, task = [], ""
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line
        elif line.startswith("changed:") and task not in found:
            found.append(task)
    return found


def recap(output: str) -> dict[str, int]:
    match = re.search(r"^debian12\s+:\s+(.*)$", output, re.MULTILINE)
    assert match, output[-3000:]
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}


def check_installation(vm: DebianVM, first: subprocess.CompletedProcess[str], tmp_path: Path) -> None:
    """What an operator checks after the first run: services, config, coexistence settings, the
    controller's forced-command key, a fleet poll through it, and the status page."""
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert recap(first.stdout)["failed"] == 0 and recap(first.stdout)["changed"] > 0

    assert vm.ssh("systemctl is-active hostagent.service hostagent-fleet.service").stdout.split() == [
        "active", "active"]
    valid = vm.ssh("/opt/hostagent/venv/bin/hostagent config check /etc/hostagent/hostagent.toml")
    assert valid.returncode == 0 and valid.stdout.strip() == "/etc/hostagent/hostagent.toml: valid"
    check = vm.ssh("/opt/hostagent/venv/bin/hostagent check --json")
    assert json.loads(check.stdout)["schema"] == "hostagent.report/1", check.stderr
    assert "ACTION==" in vm.ssh("cat /etc/udev/rules.d/60-hostagent-erc.rules").stdout
    # the man page and the completion, where man(1) and bash-completion look for them
    assert vm.ssh("head -c 200 /usr/local/share/man/man8/hostagent.8").stdout.startswith(".TH HOSTAGENT 8")
    completion = vm.ssh("cat /usr/share/bash-completion/completions/hostagent").stdout
    assert "complete -o default -F _hostagent hostagent" in completion
    # libvirt-guests and xendomains no longer race the maintenance save and restore
    guests_conf = vm.ssh("grep -E '^ON_(BOOT|SHUTDOWN)=' /etc/default/libvirt-guests").stdout.split()
    assert guests_conf == ["ON_BOOT=ignore", "ON_SHUTDOWN=suspend"]
    xen_conf = vm.ssh("grep -E '^XENDOMAINS_(SAVE|RESTORE|AUTO)=' /etc/default/xendomains").stdout.split()
    assert xen_conf == ['XENDOMAINS_SAVE=""', "XENDOMAINS_RESTORE=false", 'XENDOMAINS_AUTO=""']
    # libvirt's start gate, where libvirt is installed (docs/maintenance.md): both hooks, and the check
    # they run, which lets a start through when no maintenance is saving or rebooting
    gate = vm.ssh("test -d /etc/libvirt || { echo no libvirt; exit; }; "
                  "for d in qemu.d libxl.d; do test -x /etc/libvirt/hooks/$d/hostagent && "
                  "grep -c 'venv/bin/python -I -m hostagent libvirt-hook' /etc/libvirt/hooks/$d/hostagent; done; "
                  "/opt/hostagent/venv/bin/python -I -m hostagent libvirt-hook web1 prepare begin - </dev/null "
                  "&& echo allowed")
    assert gate.stdout.split() in (["no", "libvirt"], ["1", "1", "allowed"]), (gate.stdout, gate.stderr)

    # the units as installed (the packaged files and the role's drop-ins), rated by systemd itself
    for unit, limit in (("hostagent.service", 7.0), ("hostagent-fleet.service", 5.0)):
        rated = vm.ssh(f"systemd-analyze security --no-pager {unit}").stdout
        score = float(re.findall(r"Overall exposure level for \S+: ([0-9.]+)", rated)[-1])
        assert score < limit, (unit, score, rated[-2000:])
    assert vm.ssh("systemctl show -p User --value hostagent-fleet.service").stdout.strip() == "hostagent-fleet"
    check_rpc_boundary(vm, tmp_path)
    # the controller polls the agent through that key, as its own account, with the host keys Ansible collected
    poll = vm.ssh("runuser -u hostagent-fleet -- /opt/hostagent-fleet/venv/bin/hostagent --config "
                  "/etc/hostagent/fleet.toml fleet poll --json")
    assert poll.returncode == 0, poll.stdout + poll.stderr
    assert json.loads(poll.stdout)[0]["ok"] is True
    as_root = vm.ssh("/opt/hostagent-fleet/venv/bin/hostagent --config /etc/hostagent/fleet.toml fleet poll")
    assert as_root.returncode != 0 and "belongs to hostagent-fleet: run the controller as that account" in \
        as_root.stderr, as_root
    assert vm.ssh("test -s /var/www/hostagent/index.html || sleep 15; test -s /var/www/hostagent/index.html"
                  ).returncode == 0  # fleet watch publishes the status page


KEY_LINE = ('restrict,from="127.0.0.1",command="/opt/hostagent/venv/bin/hostagent rpc --allow read,maintenance '
            '--key hostagent-controller" ssh-ed25519 ')


def check_rpc_boundary(vm: DebianVM, tmp_path: Path) -> None:
    """The controller's key as the role installs it, used by a thief (docs/security.md)."""
    line = vm.ssh("cat /var/lib/hostagent-rpc/.ssh/authorized_keys").stdout
    assert line.startswith(KEY_LINE), line
    owners = vm.ssh("stat -c '%U:%G %a' /var/lib/hostagent-rpc /var/lib/hostagent-rpc/.ssh "
                    "/var/lib/hostagent-rpc/.ssh/authorized_keys").stdout.split()
    assert owners == ["root:root", "755", "root:root", "755", "root:root", "644"], owners
    assert "hostagent-controller" not in vm.ssh("cat /root/.ssh/authorized_keys").stdout  # nothing on root
    # from anywhere but the controller's address (here QEMU's user network) the key is refused outright
    controller_key = tmp_path / "controller_key"
    controller_key.write_text(vm.ssh("cat /var/lib/hostagent-fleet/id_ed25519").stdout)
    controller_key.chmod(0o600)
    outside = vm.ssh("report", key=controller_key, user="hostagent-rpc")
    assert outside.returncode == 255 and "Permission denied" in outside.stderr, outside

    started = vm.ssh("date -u +%Y-%m-%dT%H:%M:%S+00:00").stdout.strip()  # the audit's own time format
    done = vm.ssh(f"python3 - <<'EOF'\n{(REPO / 'tests/rpc_attempts.py').read_text()}\nEOF", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])

    def reply(name: str) -> dict[str, object]:
        assert found[name]["last"].startswith("{"), (name, found[name])
        return json.loads(found[name]["last"])  # type: ignore[no-any-return]

    report = reply("report")
    assert report["ok"] is True and report["result"]["source"] == "daemon", report
    for name, why in (("metacharacters", "';' is not allowed"), ("substitution", "is not allowed"),
                      ("force", "--force is refused over RPC"), ("unknown_verb", "not allowed"),
                      ("shell_stdin", "no command")):
        refused = reply(name)
        assert refused["refused"] is True and why in str(refused["error"]), (name, refused)
    # a terminal is refused outright (restrict, PermitTTY no), and nothing runs
    assert found["shell"]["rc"] == 255 and "PTY allocation request failed" in str(found["shell"]["stderr"])
    for name in ("remote_forward", "stdio_forward", "scp", "scp_sftp", "sftp"):
        assert found[name]["rc"] not in (0, None), (name, found[name])
    assert "forwarding failed" in str(found["remote_forward"]["stderr"]), found["remote_forward"]
    assert "administratively prohibited" in str(found["stdio_forward"]["stderr"]), found["stdio_forward"]
    assert found["canary"] is False
    # the RPC account reaches no state: not the directory, the audit log or the journals
    for name in ("state_dir", "audit", "journals"):
        assert found[name]["rc"] != 0 and "Permission denied" in str(found[name]["stderr"]), (name, found[name])
    # the socket: root's, the RPC account's group, 0660; the account itself gets an answer
    assert found["socket"] == {"mode": "0o660", "uid": 0, "gid": found["rpc_gid"]}, found["socket"]
    assert reply("rpc_account_socket")["ok"] is True
    # another user: refused by the file mode, and with the group too, by the daemon's SO_PEERCRED check
    assert found["intruder_socket"]["last"] == "connect: Permission denied", found["intruder_socket"]
    peer = reply("intruder_with_group")
    assert peer["refused"] is True and f"uid {found['intruder_uid']} may not use this socket" in str(peer["error"])
    # each refusal is audited with the key's fingerprint (sshd's ExposeAuthInfo) and the client's address
    audit = [json.loads(line) for line in vm.ssh("cat /var/lib/hostagent/audit.jsonl").stdout.splitlines() if line]
    refusals = [a for a in audit if a.get("event") == "rpc" and a.get("action") == "refused" and a.get("key")
                and a["time"] >= started]  # these attempts' own (not the controller's polls during the install)
    assert len(refusals) >= 5, refusals
    # a command's session has sshd's auth info; a shell requested with a (refused) pty gets none from
    # this sshd, and is named by the key line's label instead
    unnamed = [a for a in refusals if a["client"] != "127.0.0.1" or a["key"] not in (
        {found["fingerprint"]} if a.get("subject") else {found["fingerprint"], "hostagent-controller"})]
    assert not unnamed, (found["fingerprint"], unnamed)
    assert sum(a["key"] == found["fingerprint"] for a in refusals) >= 5
    assert any(a.get("error") == f"uid {found['intruder_uid']} may not use the RPC socket" for a in audit)
