"""The packaged systemd units, rated by systemd-analyze security (docs/security.md records the
scores), and the Ansible roles install these very files."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "hostagent" / "data"


def exposure(unit: Path) -> float:
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)
    found = re.findall(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout + done.stderr)
    assert found, done.stdout[-2000:] + done.stderr[-2000:]
    return float(found[-1])


@pytest.mark.parametrize(("unit", "limit"), [("hostagent.service", 7.0), ("hostagent-fleet.service", 5.0)])
def test_the_units_are_rated_below_their_limits(unit: str, limit: float) -> None:
    assert exposure(UNITS / unit) < limit


def test_the_controller_runs_as_its_own_account_and_the_agent_keeps_its_needs() -> None:
    fleet = (UNITS / "hostagent-fleet.service").read_text()
    assert "\nUser=hostagent-fleet\n" in fleet and "\nCapabilityBoundingSet=\n" in fleet
    agent = (UNITS / "hostagent.service").read_text()
    for setting in ("ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=yes", "UMask=0077",
                    "ProtectHome=read-only", "RuntimeDirectoryPreserve=yes"):
        assert f"\n{setting}\n" in agent, setting
    # what root really needs stays open: the disks, the kernel log, sysfs writes and Xen's /proc/xen
    # (ProtectKernelTunables and ProtectControlGroups hide it: the agent would not know it is on a dom0)
    for setting in ("PrivateDevices=", "ProtectKernelLogs=", "ProtectKernelTunables=", "ProtectClock=",
                    "ProtectControlGroups="):
        assert f"\n{setting}" not in agent, setting


def test_the_roles_install_the_packaged_units() -> None:
    sources = []
    for tasks in (REPO / "ansible" / "roles").glob("*/tasks/*.yml"):
        for task in yaml.safe_load(tasks.read_text()) or []:
            copy = task.get("ansible.builtin.copy") or {}
            if str(copy.get("dest", "")).startswith("/etc/systemd/system/"):
                sources.append((copy["src"].split("}}")[-1], copy["dest"]))
    assert sorted(sources) == [
        ("/hostagent/data/hostagent-fleet.service", "/etc/systemd/system/hostagent-fleet.service"),
        ("/hostagent/data/hostagent.service", "/etc/systemd/system/hostagent.service")]
    assert not list((REPO / "ansible").rglob("*.service.j2"))


def test_the_agent_starts_after_the_clock_is_synchronised() -> None:
    """Downtimes after a reboot are wall-clock differences across it (issue #34, I5)."""
    agent = (UNITS / "hostagent.service").read_text()
    lines = {line.split("=", 1)[0]: line.split("=", 1)[1].split() for line in agent.splitlines() if "=" in line}
    assert "time-sync.target" in lines["After"] and "time-sync.target" in lines["Wants"]
