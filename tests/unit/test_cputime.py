"""tests/cputime.py: each test's CPU, its reaped children's included, and the modules' sums."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests import cputime

REPO = Path(__file__).resolve().parents[2]

BURNS = '''
import subprocess, sys

def test_a_child_burns_cpu():
    # a child that runs until it has used 0.3 s of CPU: CPU time, whatever the machine's load
    subprocess.run([sys.executable, "-c", "import time\\nwhile time.process_time() < 0.3: pass"], check=True)

def test_nothing():
    pass
'''


def test_a_tests_cpu_includes_the_children_it_reaped(tmp_path: Path) -> None:
    (tmp_path / "test_burn.py").write_text(BURNS)
    log = tmp_path / "cpu.json"
    (tmp_path / "conftest.py").write_text((REPO / "conftest.py").read_text())  # the repository's, as it is
    # the venv's pytest script, as tests/suite.py runs it: its sys.path has neither this directory nor the repository
    done = subprocess.run([str(Path(sys.executable).parent / "pytest"), "-p", "no:cacheprovider", "--rootdir",
                           str(tmp_path), str(tmp_path / "test_burn.py")], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "HOSTAGENT_CPU_LOG": str(log), "PYTHONPATH": str(REPO)},
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CPU time (this process and its children" in done.stdout
    assert "the machine, every process: " in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("=")  # pytest's closing line stays the last
    figures = json.loads(log.read_text())
    cpu = {f["test"].split("::")[-1]: f["cpu_s"] for f in figures["tests"]}
    assert cpu["test_a_child_burns_cpu"] >= 0.3, cpu
    assert cpu["test_nothing"] < 0.3, cpu
    assert 0 < figures["machine_busy_s"] <= figures["machine_all_s"]  # the machine worked while the child did
    [(module, total)] = figures["modules"].items()
    assert module.endswith("test_burn.py") and total["cpu_s"] >= 0.3


def test_modules_sum_their_tests() -> None:
    figures = [{"test": "a.py::x", "module": "a.py", "wall_s": 1.5, "cpu_s": 0.5},
               {"test": "a.py::y", "module": "a.py", "wall_s": 2.0, "cpu_s": 3.25},
               {"test": "b.py::z", "module": "b.py", "wall_s": 0.1, "cpu_s": 0.0}]
    assert cputime.totals(figures) == {"a.py": {"wall_s": 3.5, "cpu_s": 3.75}, "b.py": {"wall_s": 0.1, "cpu_s": 0.0}}
