"""What watching members for hangs costs the daemon: one ``hung.sample`` (the look every second)
over a two-member mirror, and one probe read by ``dd`` against the Python child it replaced.

Run: .venv/bin/python bench/bench_hung_cost.py   (a few seconds; no VM)
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from checks import hung  # noqa: E402
from hostagent.context import CheckContext  # noqa: E402
from hostagent.host import Host  # noqa: E402
from hostagent.state import StateStore  # noqa: E402
from tests.snapshots import sata_mirror  # noqa: E402

SAMPLES = 2000
PROBES = 100


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    root = Path(tempfile.mkdtemp())
    sata_mirror(root)
    host, state, volatile = Host(root), StateStore(None), {}  # type: ignore[var-annotated]
    config = hung.Config()

    def context(now: float) -> CheckContext:
        return CheckContext(host, CheckContext.for_host(host).inventory, state, now=now, volatile=volatile)

    hung.run(context(0.0), config)
    start = time.process_time()
    for i in range(SAMPLES):
        hung.sample(context(float(i)), config)
    print(f"hung.sample over 2 members: {(time.process_time() - start) / SAMPLES * 1000:.3f} ms of CPU per look")
    target = str(REPO / "README.md")
    before, start = children_cpu(), time.process_time()
    for _ in range(PROBES):
        subprocess.run(["dd", f"if={target}", "of=/dev/null", "bs=4096", "count=1", "iflag=direct"],
                       stderr=subprocess.DEVNULL, check=False)
    print(f"dd probe: {(children_cpu() - before) / PROBES * 1000:.2f} ms of CPU in the child, "
          f"{(time.process_time() - start) / PROBES * 1000:.2f} ms in the daemon to start and reap it")
    before = children_cpu()
    for _ in range(PROBES // 10):
        subprocess.run([sys.executable, "-I", "-c", "import json, mmap, os, sys, time"], check=False)
    print(f"the Python probe child it replaced: {(children_cpu() - before) / (PROBES // 10) * 1000:.1f} ms of CPU")


if __name__ == "__main__":
    main()
