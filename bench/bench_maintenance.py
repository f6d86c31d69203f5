"""Guest downtime of a maintenance: hostagent's save and restore phases against libvirt-guests.

Both run in the same process run, on the same 4 guests of 256 MiB (Debian's kernel and a busybox
initramfs, TCG), through a real libvirtd (qemu:///system), alternating rounds:

- libvirt-guests: Debian's /usr/lib/libvirt/libvirt-guests.sh with ON_SHUTDOWN=suspend, ``stop``
  then ``start`` (its config and list file redirected to a scratch directory);
- hostagent: ``run_now`` (the preflight again, the guests read again from the hypervisor, the saves,
  the compare-and-set before the reboot) then ``resume_after_boot`` (concurrency 4, managedSave): the
  code the worker runs, with a reboot command that does nothing.

A poller watches every guest's state every 50 ms; a guest's downtime is from the last moment it
was seen running (paused counts as down) to the first moment it runs again.  The save throughput (bytes of save images
over the save phase's wall time) is set against the save directory's write bandwidth from
``dd oflag=direct``, the physical limit.  Each guest's console must show one boot only.

    .venv/bin/python bench/bench_maintenance.py [--rounds 3]     (make bench-maintenance)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import libvirt  # noqa: E402

from bench.dd_bandwidth import dd_bandwidth  # noqa: E402
from hostagent.config import Config, MaintenanceConfig  # noqa: E402
from hostagent.context import CheckContext  # noqa: E402
from hostagent.host import Host  # noqa: E402
from hostagent.hypervisor.libvirt_backend import LibvirtHypervisor  # noqa: E402
from hostagent.maintenance.journal import Journal, JournalStore  # noqa: E402
from hostagent.maintenance.preflight import Preflight, run_preflight  # noqa: E402
from hostagent.maintenance.run import resume_after_boot, run_now  # noqa: E402
from tests import guests  # noqa: E402

URI = "qemu:///system"
SAVE_DIR = Path("/var/lib/libvirt/qemu/save")
WORK = Path("/var/tmp/hostagent-bench")
NAMES = [f"bench{i}" for i in range(4)]
MEMORY_MIB = 256


def ensure_libvirtd() -> list[str]:
    """Start virtlogd and libvirtd when they are not running; returns the pid files to stop at the end."""
    if Path("/run/libvirt/libvirt-sock").exists():
        return []
    started = []
    for daemon, pidfile in (("virtlogd", "/run/virtlogd.pid"), ("libvirtd", "/run/libvirtd.pid")):
        subprocess.run([f"/usr/sbin/{daemon}", "-d"], check=True)
        started.append(pidfile)
    deadline = time.monotonic() + 30
    while not Path("/run/libvirt/libvirt-sock").exists():
        if time.monotonic() > deadline:
            raise SystemExit("libvirtd did not create /run/libvirt/libvirt-sock")
        time.sleep(0.2)
    return started


class Poller:
    """Every guest's running state every 20 ms, on its own connection; records stop and start moments."""

    def __init__(self) -> None:
        self.conn = libvirt.open(URI)
        self.down: dict[str, float] = {}
        self.downtime: dict[str, float] = {}
        self.last_up: dict[str, float] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for name in NAMES:
                try:  # paused (as while its memory is written) counts as down: the guest does not answer
                    running = self.conn.lookupByName(name).state()[0] == libvirt.VIR_DOMAIN_RUNNING
                except libvirt.libvirtError:
                    continue
                if running:
                    if name in self.down:
                        self.downtime[name] = now - self.down.pop(name)
                    self.last_up[name] = now
                elif name not in self.down and name in self.last_up:
                    self.down[name] = self.last_up[name]
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    def measure(self) -> None:
        self.down.clear()
        self.downtime.clear()
        self.last_up.clear()
        if not self.thread.is_alive():
            self.thread.start()

    def wait_all_up(self, timeout: float = 120) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while len(self.downtime) < len(NAMES) or self.down:
            if time.monotonic() > deadline:
                raise SystemExit(f"guests did not all come back: down {sorted(self.down)}")
            time.sleep(0.05)
        return dict(self.downtime)


def libvirt_guests_script() -> Path:
    """Debian's script with its config and state paths moved to the scratch directory."""
    etc, var = WORK / "etc", WORK / "var"
    (etc / "default").mkdir(parents=True, exist_ok=True)
    (var / "lib/libvirt").mkdir(parents=True, exist_ok=True)
    (var / "lock").mkdir(parents=True, exist_ok=True)
    (etc / "default/libvirt-guests").write_text(
        f"URIS={URI}\nON_BOOT=start\nON_SHUTDOWN=suspend\nSTART_DELAY=0\nPARALLEL_SHUTDOWN=0\n"
        "SHUTDOWN_TIMEOUT=300\nBYPASS_CACHE=0\nSYNC_TIME=0\n")
    text = Path("/usr/lib/libvirt/libvirt-guests.sh").read_text()
    text = text.replace('sysconfdir="/etc"', f'sysconfdir="{etc}"').replace('localstatedir="/var"',
                                                                           f'localstatedir="{var}"')
    script = WORK / "libvirt-guests.sh"
    script.write_text(text)
    subprocess.run(["sh", str(script), "start"], check=True, capture_output=True)  # the subsystem lock
    return script


def round_libvirt_guests(script: Path, poller: Poller) -> dict[str, object]:
    poller.measure()
    time.sleep(0.2)
    start = time.monotonic()
    subprocess.run(["sh", str(script), "stop"], check=True, capture_output=True)
    saved = time.monotonic()
    size = image_bytes()
    subprocess.run(["sh", str(script), "start"], check=True, capture_output=True)
    return {"downtime": poller.wait_all_up(), "save_s": saved - start, "restore_s": time.monotonic() - saved,
            "bytes": size}


def round_hostagent(poller: Poller, scratch: Path) -> dict[str, object]:
    hypervisor = LibvirtHypervisor(URI)
    config = MaintenanceConfig(uri=URI, save_dir=str(SAVE_DIR), concurrency=4)
    store = JournalStore(scratch)
    journal = store.create(Journal.new(0.0, "benchmark", NAMES, force=True, force_unbootable=True))
    context = CheckContext.for_host(Host("/"), None, (), ())

    def preflight() -> Preflight:  # as at the scheduled time: host checks, then the guests as they are now
        return run_preflight(context, Config(maintenance=config), lambda: hypervisor, str(SAVE_DIR))

    poller.measure()
    time.sleep(0.2)
    start = time.monotonic()
    ran = run_now(store, journal, hypervisor, preflight, config, lambda: None)
    assert ran.phase == "rebooting", ran.error
    saved = time.monotonic()
    size = image_bytes()
    done = resume_after_boot(store, hypervisor, config)
    assert done is not None and done.phase == "done", done
    return {"downtime": poller.wait_all_up(), "save_s": saved - start, "restore_s": time.monotonic() - saved,
            "bytes": size, "journal": {n: g.downtime_s for n, g in done.guests.items()}}


def image_bytes() -> int:
    return sum((SAVE_DIR / f"{name}.save").stat().st_size for name in NAMES if (SAVE_DIR / f"{name}.save").exists())


def setup_guests(conn: libvirt.virConnect) -> Path:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    WORK.chmod(0o755)
    (WORK / "consoles").mkdir()
    shutil.copy2(guests.initramfs(), WORK / "initrd.gz")
    for name in NAMES:
        for domain in [d for d in conn.listAllDomains() if d.name() == name]:
            if domain.isActive():
                domain.destroy()
            domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        conn.defineXML(guests.domain_xml(name, MEMORY_MIB, WORK / "consoles" / f"{name}.log",
                                         WORK / "initrd.gz")).create()
    for name in NAMES:
        deadline = time.monotonic() + 120
        while not guests.uptimes(WORK / "consoles" / f"{name}.log"):
            if time.monotonic() > deadline:
                raise SystemExit(f"guest {name} did not boot")
            time.sleep(0.5)
    return WORK / "consoles"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    started = ensure_libvirtd()
    conn = libvirt.open(URI)
    stack: list[object] = []
    try:
        consoles = setup_guests(conn)
        bandwidth = dd_bandwidth(SAVE_DIR, 256)
        script = libvirt_guests_script()
        poller = Poller()
        stack.append(poller.stop)
        results: dict[str, list[dict[str, object]]] = {"libvirt-guests": [], "hostagent": []}
        for index in range(args.rounds):
            results["libvirt-guests"].append(round_libvirt_guests(script, poller))
            time.sleep(2)
            results["hostagent"].append(round_hostagent(poller, WORK / f"journal-{index}"))
            time.sleep(2)
        boots = {name: guests.boots(consoles / f"{name}.log") for name in NAMES}
        report(results, bandwidth, boots, args.rounds)
    finally:
        for stop in stack:
            stop()  # type: ignore[operator]
        for name in NAMES:
            for domain in [d for d in conn.listAllDomains() if d.name() == name]:
                if domain.isActive():
                    domain.destroy()
                domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        for pidfile in started:
            subprocess.run(["sh", "-c", f"kill $(cat {pidfile})"], check=False)
    return 0


def report(results: dict[str, list[dict[str, object]]], bandwidth: float, boots: dict[str, int],
           rounds: int) -> None:
    def total(r: dict[str, object]) -> float:
        return sum(r["downtime"].values())  # type: ignore[attr-defined]

    medians = {tool: statistics.median(total(r) for r in runs) for tool, runs in results.items()}
    print(f"{len(NAMES)} guests of {MEMORY_MIB} MiB, TCG, {URI}; {rounds} alternating rounds; medians\n")
    print("| | libvirt-guests (suspend) | hostagent |")
    print("|---|---|---|")
    print(f"| total guest downtime | {medians['libvirt-guests']:.2f} s | {medians['hostagent']:.2f} s |")
    for phase in ("save_s", "restore_s"):
        values = {tool: statistics.median(float(r[phase]) for r in runs) for tool, runs in results.items()}  # type: ignore[arg-type]
        print(f"| {phase[:-2]} phase | {values['libvirt-guests']:.2f} s | {values['hostagent']:.2f} s |")
    for name in NAMES:
        values = {tool: statistics.median(r["downtime"][name] for r in runs)  # type: ignore[index]
                  for tool, runs in results.items()}
        print(f"| {name} downtime | {values['libvirt-guests']:.2f} s | {values['hostagent']:.2f} s |")
    ratio = medians["hostagent"] / medians["libvirt-guests"]
    print(f"\nratio hostagent / libvirt-guests: {ratio:.2f} (goal <= 0.41, issue #34)")
    for tool, runs in results.items():
        throughput = statistics.median(float(r["bytes"]) / float(r["save_s"]) for r in runs)  # type: ignore[arg-type]
        print(f"save throughput {tool}: {throughput / 2**20:.0f} MiB/s "
              f"({statistics.median(float(r['bytes']) for r in runs) / 2**20:.0f} MiB of images)")  # type: ignore[arg-type]
    print(f"save directory write bandwidth (dd oflag=direct, 256 MiB): {bandwidth / 2**20:.0f} MiB/s")
    journal = results["hostagent"][-1]["journal"]
    print("hostagent's own journal, last round: " + ", ".join(f"{n} {d:.2f} s" for n, d in journal.items()))  # type: ignore[attr-defined]
    print(f"boots per guest over the whole run (1 = never rebooted): {boots}")


if __name__ == "__main__":
    sys.exit(main())
