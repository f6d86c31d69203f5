"""A pytest plugin (the root conftest.py loads it): the CPU each test costs, its QEMU and other children included.

The suite is bound by CPU on two cores (docs/testing.md, "Suite time"), so wall time alone misleads:
a test that waits out a kernel timeout is long and cheap, an Ansible run on the emulated dom0 is long
and dear.  For each test this keeps the wall time and the CPU time of the pytest process and of the
children it reaped (``getrusage``): a module's VM is reaped at its last test's teardown, so a module's
sum is right even where one test's share is not.  Not counted: what is not this process's child, such
as the QEMU that libvirtd starts for a guest, and a session's VM (reaped after the last test).  So it
also prints what the whole machine spent over the run (``/proc/stat``, every process: with the Xen
module beside the rest, both print the same machine).  At the end it prints the dearest tests and
modules, and with ``HOSTAGENT_CPU_LOG=path`` writes every figure there as JSON.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_FIGURES: list[dict[str, Any]] = []
_MACHINE: dict[str, tuple[float, float]] = {}


def machine() -> tuple[float, float]:
    """The machine's (busy, all) CPU seconds since boot, every CPU and process (/proc/stat's cpu line)."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(x) for x in handle.readline().split()[1:9]]
    except (OSError, ValueError):
        return (0.0, 0.0)
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle, iowait
    return ((sum(fields) - idle) / tick, sum(fields) / tick)


def pytest_sessionstart(session: pytest.Session) -> None:
    _MACHINE["start"] = machine()


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    wall, cpu = time.monotonic(), _cpu()
    yield
    _FIGURES.append({"test": item.nodeid, "module": item.nodeid.split("::")[0],
                     "wall_s": round(time.monotonic() - wall, 2), "cpu_s": round(_cpu() - cpu, 2)})


def totals(figures: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each module's wall and CPU seconds, from its tests' figures."""
    modules: dict[str, dict[str, float]] = {}
    for figure in figures:
        module = modules.setdefault(figure["module"], {"wall_s": 0.0, "cpu_s": 0.0})
        module["wall_s"] = round(module["wall_s"] + figure["wall_s"], 2)
        module["cpu_s"] = round(module["cpu_s"] + figure["cpu_s"], 2)
    return modules


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    modules = totals(_FIGURES)
    write = terminalreporter.write_line
    terminalreporter.section("CPU time (this process and its children; tests/cputime.py)")
    write(f"all tests: {sum(f['cpu_s'] for f in _FIGURES) / 60:.1f} CPU-minutes in "
          f"{sum(f['wall_s'] for f in _FIGURES) / 60:.1f} minutes of tests (this process and its children)")
    (busy, every), (busy_0, every_0) = machine(), _MACHINE.get("start", (0.0, 0.0))
    if every > every_0:
        write(f"the machine, every process: {(busy - busy_0) / 60:.1f} CPU-minutes busy of "
              f"{(every - every_0) / 60:.1f} ({(busy - busy_0) / (every - every_0):.0%})")
    write("dearest modules (CPU s, wall s):")
    for name, module in sorted(modules.items(), key=lambda kv: -kv[1]["cpu_s"])[:12]:
        write(f"  {module['cpu_s']:8.1f} {module['wall_s']:8.1f}  {name}")
    write("dearest tests (CPU s, wall s):")
    for figure in sorted(_FIGURES, key=lambda f: -f["cpu_s"])[:12]:
        write(f"  {figure['cpu_s']:8.1f} {figure['wall_s']:8.1f}  {figure['test']}")
    target = os.environ.get("HOSTAGENT_CPU_LOG")
    if target:
        Path(target).write_text(json.dumps({"tests": _FIGURES, "modules": modules,
                                            "machine_busy_s": round(busy - busy_0, 1),
                                            "machine_all_s": round(every - every_0, 1)}, indent=1))
