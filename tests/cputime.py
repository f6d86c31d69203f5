"""A pytest plugin (the root conftest.py loads it): the CPU each test costs, its QEMU and other children included.

The suite is bound by CPU on two cores (docs/testing.md, "Suite time"), so wall time alone misleads:
a test that waits out a kernel timeout is long and cheap, an Ansible run on the emulated dom0 is long
and dear.  For each test this keeps the wall time and the CPU time of the pytest process and of the
children it reaped (``getrusage``): a module's VM is reaped at its last test's teardown, so a module's
sum is right even where one test's share is not.  At the end it prints the dearest tests and modules,
and with ``HOSTAGENT_CPU_LOG=path`` writes every figure there as JSON.
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
          f"{sum(f['wall_s'] for f in _FIGURES) / 60:.1f} minutes of tests")
    write("dearest modules (CPU s, wall s):")
    for name, module in sorted(modules.items(), key=lambda kv: -kv[1]["cpu_s"])[:12]:
        write(f"  {module['cpu_s']:8.1f} {module['wall_s']:8.1f}  {name}")
    write("dearest tests (CPU s, wall s):")
    for figure in sorted(_FIGURES, key=lambda f: -f["cpu_s"])[:12]:
        write(f"  {figure['cpu_s']:8.1f} {figure['wall_s']:8.1f}  {figure['test']}")
    target = os.environ.get("HOSTAGENT_CPU_LOG")
    if target:
        Path(target).write_text(json.dumps({"tests": _FIGURES, "modules": modules}, indent=1))
