"""Xen for real (issue #20): Debian's Xen 4.17 under QEMU (TCG), Debian 12 as dom0, PV DomUs.

One dom0 boot serves the whole module, in order:
1. ``xl save`` and ``xl restore`` pause and resume a PV DomU without a reboot;
2. ansible/site.yml installs the agent and the controller on the dom0 (tests/ansible_run.py's
   checks, on the dom0 instead of a plain Debian VM), and a second run changes nothing, nor does a
   ``--check --diff`` run.

Right after the first site.yml run, the installed dom0 is snapshotted for
``tests/vm/test_xen_maintenance.py``, whose maintenances and real reboots then run beside this
module's second and check-mode runs (tests/vm/xen_dom0.py).

The DomUs are the test guests' kind: Debian's kernel and the busybox initramfs that prints its
uptime every second; xenconsoled logs each console to /var/log/xen/console/guest-<name>.log.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from tests import ansible_run, guests
from tests.debian_vm import DebianVM
from tests.integration.test_alerts import Sink, sink_server
from tests.vm.xen_dom0 import (
    CONFIG,
    FIXTURES,
    booted_dom0,
    console,
    install,
    printed,
    publish,
    publishing,
    share,
    ssh_ok,
    start_pv,
    wait_for,
)


@pytest.fixture(scope="module")
def mail() -> Iterator[tuple[Controller, Sink]]:
    with sink_server() as server:
        yield server


@pytest.fixture(scope="module")
def dom0(tmp_path_factory: pytest.TempPathFactory, mail: tuple[Controller, Sink]) -> Iterator[DebianVM]:
    with publishing(share(), fresh=True), booted_dom0(tmp_path_factory.mktemp("xen"), mail[0].port) as machine:
        yield machine


def test_dom0_runs_under_xen_and_a_pv_guest_is_saved_and_restored_without_a_reboot(dom0: DebianVM,
                                                                                   tmp_path: Path) -> None:
    assert ssh_ok(dom0, "cat /sys/hypervisor/type").strip() == "xen"
    start_pv(dom0, "pv1")
    listing = json.loads(ssh_ok(dom0, "xl list -l"))
    assert {d["domid"]: d["config"]["c_info"]["name"] for d in listing} == {0: "Domain-0", 1: "pv1"}
    sample = json.loads((FIXTURES / "xl-list-l.json").read_text())  # captured here: the same shape
    assert [sorted(d["config"]) for d in listing] == [sorted(d["config"]) for d in sample]
    saved = ssh_ok(dom0, "xl save pv1 /root/pv1.save 2>&1")
    assert "Frames: 24576/24576  100%" in saved  # xl's own progress, which the backend shows
    assert "pv1" not in ssh_ok(dom0, "xl list")
    ssh_ok(dom0, "xl restore /root/pv1.save && rm /root/pv1.save")
    before = printed(dom0, "pv1")
    wait_for("pv1 to print after its restore", lambda: printed(dom0, "pv1") >= before + 3, 60, vm=dom0)
    log = console(dom0, "pv1", tmp_path / "pv1.log")
    times = guests.uptimes(log)
    assert guests.boots(log) == 1 and times == sorted(times), log.read_text()[-2000:]


@pytest.fixture(scope="module")
def installed(dom0: DebianVM, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """ansible/site.yml's first run on the dom0, then its snapshot for test_xen_maintenance.py."""
    directory = share()
    with publishing(directory):
        hosts, first = install(dom0, tmp_path_factory.mktemp("ansible"))
        if directory is not None:
            publish(dom0, directory, first)
    return hosts, first


def test_site_installs_the_agent_and_controller_on_the_xen_dom0_idempotently(
        dom0: DebianVM, installed: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    hosts, first = installed
    extra = ("-e", f"@{(hosts.parent / 'extra').read_text()}")
    ansible_run.check_installation(dom0, first, tmp_path)
    config = ssh_ok(dom0, f"cat {CONFIG}")
    assert 'hypervisor = "auto"' in config and "save_dir" not in config  # xl on this dom0, its own directory
    second = ansible_run.playbook(hosts, *extra)
    assert second.returncode == 0 and ansible_run.recap(second.stdout)["changed"] == 0, \
        ansible_run.changed_tasks(second.stdout)
    checked = ansible_run.playbook(hosts, "--check", "--diff", *extra)
    assert checked.returncode == 0 and ansible_run.recap(checked.stdout)["changed"] == 0, \
        ansible_run.changed_tasks(checked.stdout)
    # check mode shows the key line the role writes
    assert '/var/lib/hostagent-rpc/.ssh/authorized_keys: restrict,from=\\"127.0.0.1\\",command=\\"' \
           "/opt/hostagent/venv/bin/hostagent rpc --allow read,maintenance --key hostagent-controller" in \
           checked.stdout, checked.stdout[-3000:]


