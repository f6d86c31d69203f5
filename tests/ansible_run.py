"""The Ansible install, for real: ansible/site.yml against a VM (tests/vm/test_xen.py's Xen dom0) that
is both a hypervisor and the controller, and the checks an operator would make after it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

from tests.debian_vm import DebianVM

REPO = Path(__file__).resolve().parent.parent
WHEELHOUSE = REPO / ".cache" / "wheelhouse"
EXTRAS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
DEPENDENCIES = EXTRAS["agent"] + EXTRAS["controller"]  # what the two roles install


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


def playbook(inventory_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible/ansible.cfg"),
           "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_LOCAL_TEMP": str(inventory_path.parent / "tmp"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "PATH": f"{REPO / '.venv/bin'}:{os.environ['PATH']}"}
    command = [str(REPO / ".venv/bin/ansible-playbook"), "-i", str(inventory_path), str(REPO / "ansible/site.yml"),
               *args]
    runs = len(list(inventory_path.parent.glob("playbook-*.log")))
    log = inventory_path.parent / f"playbook-{runs + 1}.log"  # each line stamped with its second: where time goes
    lines: list[str] = []
    started = time.monotonic()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as process, \
            log.open("w") as stamped:
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
    # libvirt-guests and xendomains no longer race the maintenance save and restore
    guests_conf = vm.ssh("grep -E '^ON_(BOOT|SHUTDOWN)=' /etc/default/libvirt-guests").stdout.split()
    assert guests_conf == ["ON_BOOT=ignore", "ON_SHUTDOWN=suspend"]
    xen_conf = vm.ssh("grep -E '^XENDOMAINS_(SAVE|RESTORE|AUTO)=' /etc/default/xendomains").stdout.split()
    assert xen_conf == ['XENDOMAINS_SAVE=""', "XENDOMAINS_RESTORE=false", 'XENDOMAINS_AUTO=""']

    # the controller's key runs hostagent rpc and nothing else
    controller_key = tmp_path / "controller_key"
    controller_key.write_text(vm.ssh("cat /var/lib/hostagent-fleet/id_ed25519").stdout)
    controller_key.chmod(0o600)
    line = vm.ssh("grep hostagent-controller /root/.ssh/authorized_keys").stdout
    assert line.startswith('restrict,command="/opt/hostagent/venv/bin/hostagent rpc" ssh-ed25519 ')
    shell = vm.ssh("touch /tmp/canary; id", key=controller_key)
    reply = json.loads(shell.stdout.splitlines()[-1])
    assert reply["refused"] is True and "';' is not allowed" in reply["error"]
    assert vm.ssh("test -e /tmp/canary").returncode == 1
    version = json.loads(vm.ssh("version", key=controller_key).stdout)
    assert version["ok"] is True and version["result"]["version"] == "0.1.0"

    # the controller inside the VM polls the agent through that key, with the host key Ansible collected
    poll = vm.ssh("/opt/hostagent-fleet/venv/bin/hostagent --config /etc/hostagent/fleet.toml fleet poll --json")
    assert poll.returncode == 0, poll.stdout + poll.stderr
    assert json.loads(poll.stdout)[0]["ok"] is True
    assert vm.ssh("test -s /var/www/hostagent/index.html || sleep 15; test -s /var/www/hostagent/index.html"
                  ).returncode == 0  # fleet watch publishes the status page
