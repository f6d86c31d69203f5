"""The Xen dom0 the Xen tests share (issue #20): Debian's Xen 4.17 under QEMU (TCG), Debian 12 as
dom0, PV DomUs of the test guests' kind, ansible/site.yml's install, and one snapshot of it.

Two pytest processes share one install (docs/testing.md, "Suite time"):
- ``tests/vm/test_xen.py`` boots the dom0, saves and restores a PV DomU, runs ``site.yml`` on it,
  and then the operator's checks, the second (idempotent) and the ``--check --diff`` runs;
- ``tests/vm/test_xen_maintenance.py`` runs the maintenances with their real reboots, on a copy of
  that dom0 started from a snapshot taken right after the first ``site.yml`` run.

With ``HOSTAGENT_XEN_SNAPSHOT`` set to a directory (``make test`` sets it for both), the first
process publishes the snapshot there and the second waits for it. Without it, each module boots and
installs its own dom0, so either runs alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostagent.maintenance.journal import Journal
from tests import ansible_run, guests
from tests.debian_vm import DebianVM, Machine, Snapshot, debian_vm, from_snapshot, kernel
from tests.suite import process_start, write_json

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "xen"
HOSTAGENT = "/opt/hostagent/venv/bin/hostagent"
CONFIG = "/etc/hostagent/hostagent.toml"
OWNERS = {"pv1": "alice@example.com", "pv2": "bob@example.com", "pv3": "bob@example.com"}
PV = ("pv1", "pv2", "pv3")
SHARE = "HOSTAGENT_XEN_SNAPSHOT"
SNAPSHOT_WAIT = 3600.0  # the other process's boot and first site.yml run, on a slow day


@contextlib.contextmanager
def booted_dom0(workdir: Path, smtp_port: int) -> Iterator[DebianVM]:
    """A fresh dom0 with the test guests' kernel and initramfs, and xl's configuration of five PV DomUs."""
    with debian_vm(workdir, memory_mib=2048, xen=True, smtp_port=smtp_port, extra_disks=2) as machine:
        vmlinuz = Path(kernel()[0])
        subprocess.run(["scp", "-q", "-i", str(machine.key), "-P", str(machine.port), "-o", "BatchMode=yes", "-o",
                        f"UserKnownHostsFile={machine.known_hosts}", str(vmlinuz), str(guests.initramfs()),
                        "root@127.0.0.1:/root/"], check=True, timeout=120)
        for name in (*PV, "lv1", "lv2"):  # xl's configuration files, where xl and xendomains look for them
            ssh_ok(machine, f"cat > /etc/xen/{name}.cfg <<'EOF'\nname = \"{name}\"\ntype = \"pv\"\n"
                            f"kernel = \"/root/{vmlinuz.name}\"\nramdisk = \"/root/{guests.initramfs().name}\"\n"
                            "extra = \"console=hvc0 quiet\"\nmemory = 96\nEOF")
        yield machine


def install(dom0: DebianVM, tmp: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """ansible/site.yml's first run on the dom0: alerts and owners' notices go to 10.0.2.100:25."""
    hosts = ansible_run.inventory(dom0, tmp)
    extra = tmp / "vars.json"
    extra.write_text(json.dumps({
        "hostagent_smtp_host": "10.0.2.100", "hostagent_alert_to": ["ops@example.com"],
        "hostagent_config_extra": "[maintenance.owners]\n" + "".join(f'{g} = "{o}"\n' for g, o in OWNERS.items())}))
    for name in ("libvirt-guests", "xendomains"):  # Debian's own files, as libvirt and Xen install them
        text = (ansible_run.REPO / "tests/fixtures/coexist" / name).read_text()
        ssh_ok(dom0, f"cat > /etc/default/{name} <<'EOF'\n{text}EOF")
    first = ansible_run.playbook(hosts, "-e", f"@{extra}")
    (tmp / "extra").write_text(str(extra))
    return hosts, first


def share() -> Path | None:
    value = os.environ.get(SHARE)
    return Path(value) if value else None


def read_json(path: Path) -> dict[str, object] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


@contextlib.contextmanager
def publishing(directory: Path | None, fresh: bool = False) -> Iterator[None]:
    """Tell the waiting process why no snapshot will come, if anything in the block fails.

    ``fresh``: the producer's start; what an earlier run left in the directory is removed (``make
    test``'s runner gives each run a new directory, and names the producer in it first)."""
    if directory is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    if fresh:
        for stale in ("ready.json", "failed.json"):
            (directory / stale).unlink(missing_ok=True)
        shutil.rmtree(directory / "snapshot", ignore_errors=True)
    producer = read_json(directory / "producer.json")
    if producer is None or producer.get("pid") != os.getpid():
        write_json(directory / "producer.json", {"pid": os.getpid(), "start": process_start(os.getpid())})
    try:
        yield
    except BaseException as error:
        if not (directory / "ready.json").exists():
            write_json(directory / "failed.json",
                       {"error": "".join(traceback.format_exception_only(type(error), error))[-4000:]})
        raise


def publish(dom0: DebianVM, directory: Path, first: subprocess.CompletedProcess[str]) -> None:
    """The installed dom0's snapshot for the other process (or the reason there is none)."""
    if first.returncode != 0:
        raise AssertionError(f"the first site.yml run failed: {first.stdout[-3000:]}")
    taken = dom0.snapshot(directory / "snapshot")
    write_json(directory / "ready.json", {"state": str(taken.state), "disks": [str(d) for d in taken.machine.disks],
                                          "memory_mib": taken.machine.memory_mib, "host_key": taken.machine.host_key})


def wait_for_snapshot(directory: Path, timeout: float = SNAPSHOT_WAIT) -> Snapshot:
    """The snapshot the other process publishes after its first site.yml run; a failure at once if
    that process failed, or is gone (dead, a zombie, or its pid now another process's)."""
    deadline = time.monotonic() + timeout
    while True:
        said = read_json(directory / "ready.json")
        if said is not None:
            machine = Machine(int(str(said["memory_mib"])), True, [Path(d) for d in said["disks"]],  # type: ignore[attr-defined]
                              str(said["host_key"]), None)
            return Snapshot(machine, Path(str(said["state"])))
        failed = read_json(directory / "failed.json")
        if failed is not None:
            pytest.fail(f"no installed dom0 to start from: {failed.get('error')}")
        producer = read_json(directory / "producer.json")
        if producer is not None:
            pid, start = int(str(producer.get("pid"))), producer.get("start")
            if process_start(pid) is None or (start is not None and process_start(pid) != start):
                pytest.fail(f"the process installing the dom0 (pid {pid}) ended without a snapshot in {directory}")
        if time.monotonic() > deadline:
            pytest.fail(f"no snapshot of the installed dom0 in {directory} after {timeout:g} s "
                        f"(tests/vm/test_xen.py publishes it)")
        time.sleep(2)


@contextlib.contextmanager
def installed_dom0(workdir: Path, smtp_port: int) -> Iterator[DebianVM]:
    """An installed dom0 of this process's own: started from the other process's snapshot, or
    booted and installed here when no other process shares one."""
    directory = share()
    if directory is None:
        with booted_dom0(workdir, smtp_port) as machine:
            _, first = install(machine, workdir)
            assert first.returncode == 0, first.stdout[-4000:]
            yield machine
        return
    with from_snapshot(workdir, wait_for_snapshot(directory), smtp_port=smtp_port) as machine:
        yield machine


def ssh_ok(vm: DebianVM, command: str, timeout: float = 180) -> str:
    done = vm.ssh(command, timeout=timeout)
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


def wait_for(what: str, predicate: object, timeout: float, step: float = 2.0, vm: DebianVM | None = None) -> None:
    """Poll ``predicate`` until it holds; on a timeout, name what was awaited and (with ``vm``) dump
    the dom0's state: its console's tail, the agent's journal, the domains and the maintenance journals."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}"
                                 + (f"\n{state_of(vm)}" if vm is not None else ""))
        time.sleep(step)


def state_of(vm: DebianVM) -> str:
    """What a failed wait on the dom0 needs to explain itself (never raises)."""
    said = [f"--- the dom0's console (last 3000 characters of {vm.console}):",
            vm.console.read_text(errors="replace")[-3000:] if vm.console.exists() else "(none)"]
    for title, command in (("hostagent's journal", "journalctl -u hostagent.service -n 60 --no-pager"),
                           ("xl list", "xl list"),
                           ("maintenance journals", "tail -c 1500 /var/lib/hostagent/maintenance/*.json")):
        try:
            done = vm.ssh(command, timeout=30)
            said += [f"--- {title} (rc {done.returncode}):", (done.stdout + done.stderr)[-3000:]]
        except subprocess.TimeoutExpired:
            said += [f"--- {title}: no answer within 30 s"]
    return "\n".join(said)


def console(vm: DebianVM, name: str, local: Path) -> Path:
    """The guest's console as xenconsoled logged it, copied here for tests/guests.py's readers."""
    local.write_text(vm.ssh(f"cat /var/log/xen/console/guest-{name}.log").stdout)
    return local


def printed(vm: DebianVM, name: str) -> int:
    done = vm.ssh(f"grep -c '^uptime ' /var/log/xen/console/guest-{name}.log")
    return int(done.stdout.strip() or 0) if done.returncode in (0, 1) else 0


def start_pv(vm: DebianVM, name: str) -> None:
    ssh_ok(vm, f"xl create /etc/xen/{name}.cfg")
    before = printed(vm, name)
    wait_for(f"{name} to print its uptime", lambda: printed(vm, name) > before, 120, vm=vm)


def boot_id(vm: DebianVM) -> str | None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        done = vm.ssh("cat /proc/sys/kernel/random/boot_id", timeout=20)
        if done.returncode == 0:
            return done.stdout.strip()
    return None


def journal(vm: DebianVM, journal_id: str) -> Journal | None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        done = vm.ssh(f"cat /var/lib/hostagent/maintenance/{journal_id}.json", timeout=20)
        if done.returncode == 0:
            return Journal.from_json(json.loads(done.stdout))
    return None


def schedule(vm: DebianVM, ahead: float, reason: str) -> str:
    at = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ahead)).isoformat(timespec="seconds")
    out = ssh_ok(vm, f"{HOSTAGENT} maintenance --reboot-at {at} --reason '{reason}' --notify-owners --json")
    return str(json.loads(out)["id"])


def finish(vm: DebianVM, journal_id: str, timeout: float = 900) -> Journal:
    found: list[Journal] = []

    def final() -> bool:
        current = journal(vm, journal_id)
        found[:] = [current] if current else []
        return current is not None and current.final
    wait_for(f"maintenance {journal_id} to end", final, timeout, 5, vm=vm)
    return found[0]


def configure(vm: DebianVM, *lines: str) -> None:
    """The installed configuration with these [maintenance] settings set, and the daemon restarted."""
    ssh_ok(vm, f"cp {CONFIG}.installed {CONFIG} 2>/dev/null || cp {CONFIG} {CONFIG}.installed")
    for line in lines:
        key = line.split("=")[0].strip()
        ssh_ok(vm, f"if grep -q '^{key} = ' {CONFIG}; then sed -i 's|^{key} = .*|{line}|' {CONFIG}; "
                   f"else sed -i '/^\\[maintenance\\]$/a {line}' {CONFIG}; fi")
    ssh_ok(vm, f"{HOSTAGENT} config check {CONFIG} && systemctl restart hostagent.service")


