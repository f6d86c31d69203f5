"""The dom0 side of bench/bench_xen.py: alternating rounds of Debian's xendomains and hostagent's xl path.

Runs as root on a Xen dom0 with the system's python3 and this repository's ``hostagent`` and
``checks`` packages on the path (bench_xen.py copies them there).  Usage:

    python3 bench/xen_rounds.py --kernel K --ramdisk R [--rounds 3] [--guests 4] [--memory 128] [--concurrency 4]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dd_bandwidth import dd_bandwidth
from hostagent.config import Config, MaintenanceConfig
from hostagent.context import CheckContext
from hostagent.errors import ProbeUnavailable
from hostagent.host import Host
from hostagent.hypervisor.xl_backend import XlHypervisor
from hostagent.maintenance.journal import Journal, JournalStore
from hostagent.maintenance.preflight import Preflight, run_preflight
from hostagent.maintenance.run import resume_after_boot, run_now
from hostagent.sources import xl

WORK = Path("/var/tmp/hostagent-bench")
SAVE_DIR = Path("/var/lib/xen/bench-save")
CONSOLES = Path("/var/log/xen/console")


class Poller:
    """``xl list`` in a loop: a guest is up while it is alive and not paused; downtime runs from the
    last moment it was seen up to the first moment it is up again."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.down: dict[str, float] = {}
        self.downtime: dict[str, float] = {}
        self.last_up: dict[str, float] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self._stop.is_set():
            listing = subprocess.run(["xl", "list"], capture_output=True, text=True).stdout
            now = time.monotonic()
            try:
                up = {s.name for s in xl.parse_list(listing) if s.alive and not s.paused}
            except ProbeUnavailable:  # a listing torn by a domain being created: the next one counts
                continue
            with self.lock:
                for name in self.names:
                    if name in up:
                        if name in self.down:
                            self.downtime[name] = now - self.down.pop(name)
                        self.last_up[name] = now
                    elif name not in self.down and name in self.last_up:
                        self.down[name] = self.last_up[name]

    def measure(self) -> None:
        with self.lock:
            self.down.clear()
            self.downtime.clear()
            self.last_up.clear()
        if not self.thread.is_alive():
            self.thread.start()
        deadline = time.monotonic() + 30
        while len(self.last_up) < len(self.names):
            if time.monotonic() > deadline:
                raise SystemExit(f"not every guest is up: {sorted(set(self.names) - set(self.last_up))}")
            time.sleep(0.05)

    def wait_all_up(self, timeout: float = 300) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while len(self.downtime) < len(self.names) or self.down:
            if time.monotonic() > deadline:
                raise SystemExit(f"guests did not all come back: down {sorted(self.down)}")
            time.sleep(0.05)
        return dict(self.downtime)

    def stop(self) -> None:
        self._stop.set()


def xendomains_script() -> Path:
    """Debian's /etc/init.d/xendomains reading a scratch defaults file: save to SAVE_DIR, restore from it."""
    defaults = WORK / "xendomains.default"
    defaults.write_text(f'XENDOMAINS_MIGRATE=""\nXENDOMAINS_SAVE={SAVE_DIR}\nXENDOMAINS_RESTORE=true\n'
                        'XENDOMAINS_AUTO=""\nXENDOMAINS_STOP_MAXWAIT=300\n')
    text = Path("/etc/init.d/xendomains").read_text().replace("/etc/default/xendomains", str(defaults))
    script = WORK / "xendomains"
    script.write_text(text)
    return script


def images() -> int:
    return sum(p.stat().st_size for p in SAVE_DIR.glob("*") if p.is_file() and not p.name.endswith(".cfg"))


def round_xendomains(script: Path, poller: Poller) -> dict[str, object]:
    poller.measure()
    start = time.monotonic()
    subprocess.run(["bash", str(script), "stop"], check=True, capture_output=True)
    saved = time.monotonic()
    size = images()
    subprocess.run(["bash", str(script), "start"], check=True, capture_output=True)
    return {"downtime": poller.wait_all_up(), "save_s": saved - start, "restore_s": time.monotonic() - saved,
            "bytes": size}


def round_hostagent(poller: Poller, names: list[str], scratch: Path, concurrency: int) -> dict[str, object]:
    """The worker's code path: run_now (preflight, run-time plan, parallel xl saves) with a reboot that
    does nothing, then resume_after_boot (the restores)."""
    config = MaintenanceConfig(hypervisor="xl", save_dir=str(SAVE_DIR), concurrency=concurrency)
    hypervisor = XlHypervisor(str(SAVE_DIR), ("/etc/xen",))
    store = JournalStore(scratch)
    journal = store.create(Journal.new(0.0, "benchmark", names, force=True, force_unbootable=True))
    context = CheckContext.for_host(Host("/"), None, (), ())

    def preflight() -> Preflight:
        return run_preflight(context, Config(maintenance=config), lambda: hypervisor, str(SAVE_DIR))

    poller.measure()
    start = time.monotonic()
    ran = run_now(store, journal, hypervisor, preflight, config, lambda: None)
    assert ran.phase == "rebooting", ran.error
    saved = time.monotonic()
    size = images()
    done = resume_after_boot(store, hypervisor, config)
    assert done is not None and done.phase == "done", done
    left = sorted(p.name for p in SAVE_DIR.iterdir())
    assert not left, f"images left after the restore: {left}"  # hostagent deletes what it restored from
    return {"downtime": poller.wait_all_up(), "save_s": saved - start, "restore_s": time.monotonic() - saved,
            "bytes": size}


def setup(names: list[str], kernel: str, ramdisk: str, memory: int) -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    shutil.rmtree(SAVE_DIR, ignore_errors=True)
    WORK.mkdir(parents=True)
    SAVE_DIR.mkdir(parents=True, mode=0o700)
    for name in names:
        config = Path(f"/etc/xen/{name}.cfg")
        config.write_text(f'name = "{name}"\ntype = "pv"\nkernel = "{kernel}"\nramdisk = "{ramdisk}"\n'
                          f'extra = "console=hvc0 quiet"\nmemory = {memory}\n')
        (CONSOLES / f"guest-{name}.log").unlink(missing_ok=True)
        subprocess.run(["xl", "create", "--quiet", str(config)], check=True)
    for name in names:
        log = CONSOLES / f"guest-{name}.log"
        deadline = time.monotonic() + 180
        while not (log.exists() and "uptime " in log.read_text(errors="replace")):
            if time.monotonic() > deadline:
                raise SystemExit(f"guest {name} printed no uptime")
            time.sleep(0.5)


def boots(name: str) -> int:
    from tests.guests import MARK

    return (CONSOLES / f"guest-{name}.log").read_text(errors="replace").count(MARK)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", required=True)
    parser.add_argument("--ramdisk", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--guests", type=int, default=4)
    parser.add_argument("--memory", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=4, help="maintenance.concurrency: guests saved at once")
    args = parser.parse_args()
    names = [f"bench{i}" for i in range(args.guests)]
    setup(names, args.kernel, args.ramdisk, args.memory)
    bandwidth = dd_bandwidth(SAVE_DIR, 128)
    script = xendomains_script()
    poller = Poller(names)
    results: dict[str, list[dict[str, object]]] = {"xendomains": [], "hostagent": []}
    try:
        for index in range(args.rounds):
            results["xendomains"].append(round_xendomains(script, poller))
            time.sleep(2)
            results["hostagent"].append(round_hostagent(poller, names, WORK / f"journal-{index}", args.concurrency))
            time.sleep(2)
    finally:
        poller.stop()
        for name in names:
            subprocess.run(["xl", "destroy", name], capture_output=True)
    report(results, bandwidth, {name: boots(name) for name in names}, args)
    return 0


def report(results: dict[str, list[dict[str, object]]], bandwidth: float, boot_counts: dict[str, int],
           args: argparse.Namespace) -> None:
    def total(r: dict[str, object]) -> float:
        return sum(r["downtime"].values())  # type: ignore[attr-defined]

    medians = {tool: statistics.median(total(r) for r in runs) for tool, runs in results.items()}
    print(f"{args.guests} PV guests of {args.memory} MiB, Xen 4.17 dom0 under QEMU (TCG); "
          f"{args.rounds} alternating rounds; hostagent saves {args.concurrency} at once; medians\n")
    print("| | xendomains (XENDOMAINS_SAVE) | hostagent (xl) |")
    print("|---|---|---|")
    print(f"| total guest downtime | {medians['xendomains']:.2f} s | {medians['hostagent']:.2f} s |")
    for phase in ("save_s", "restore_s"):
        values = {tool: statistics.median(float(r[phase]) for r in runs)  # type: ignore[arg-type]
                  for tool, runs in results.items()}
        print(f"| {phase[:-2]} phase | {values['xendomains']:.2f} s | {values['hostagent']:.2f} s |")
    for name in boot_counts:
        values = {tool: statistics.median(r["downtime"][name] for r in runs)  # type: ignore[index]
                  for tool, runs in results.items()}
        print(f"| {name} downtime | {values['xendomains']:.2f} s | {values['hostagent']:.2f} s |")
    print(f"\nratio hostagent / xendomains: {medians['hostagent'] / medians['xendomains']:.2f} (goal <= 0.5)")
    for tool, runs in results.items():
        throughput = statistics.median(float(r["bytes"]) / float(r["save_s"]) for r in runs)  # type: ignore[arg-type]
        print(f"save throughput {tool}: {throughput / 2**20:.0f} MiB/s "
              f"({statistics.median(float(r['bytes']) for r in runs) / 2**20:.0f} MiB of images)")  # type: ignore[arg-type]
    print(f"save directory write bandwidth (dd oflag=direct, 128 MiB): {bandwidth / 2**20:.0f} MiB/s")
    print(f"boots per guest over the whole run (1 = never rebooted): {boot_counts}")


if __name__ == "__main__":
    sys.exit(main())
