"""Not collected by default: a VM test that announces its QEMU and then hangs.

tests/vm/test_harness_cleanup.py runs it in a child pytest and kills that child mid-run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.vm.harness import VM


def test_hangs_inside_a_vm(vm: VM) -> None:
    vm.run("echo busy")
    marker = Path(os.environ["HOSTAGENT_PROBE_MARKER"])
    marker.write_text(json.dumps({"run_dir": str(vm.run_dir),
                                  "qemu_pid": int((vm.run_dir / "qemu.pid").read_text())}))
    time.sleep(600)
