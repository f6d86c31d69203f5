"""Preflight over snapshots and the libvirt test driver (issue #8, in progress)."""

from __future__ import annotations

from pathlib import Path

from hostagent.config import Config
from hostagent.context import CheckContext
from hostagent.errors import ProbeUnavailable
from hostagent.host import Host
from hostagent.hypervisor.libvirt_backend import LibvirtHypervisor
from hostagent.maintenance.preflight import run_preflight
from tests.integration.test_hypervisor import node
from tests.snapshots import HostSnapshot


def test_bootable_healthy_host_may_reboot(tmp_path: Path, images: dict[str, Path]) -> None:
    snap = HostSnapshot(tmp_path / "snap")
    snap.boot_mirror({"sda": images["mbr-grub"], "sdb": images["mbr-grub"]}, 1)
    uri = node(tmp_path)
    result = run_preflight(CheckContext.for_host(Host(snap.root)), Config(), lambda: LibvirtHypervisor(uri), "/")
    assert result.boot_problems == ()
    # gpu1 has a host PCI device: it cannot be saved, which is a host problem --force may override
    assert result.host_problems == ("guest gpu1: cannot save: host device passthrough (hostdev)",)
    assert not result.allowed() and result.allowed(force=True)
    assert "guest web1 (256 MiB): save" in result.lines()


def test_a_member_without_grub_needs_force_unbootable(tmp_path: Path, images: dict[str, Path]) -> None:
    snap = HostSnapshot(tmp_path / "snap")
    snap.boot_mirror({"sda": images["mbr-grub"], "sdb": images["mbr-bare"]}, 1)
    snap.mdstat("Personalities : [raid1]\nmd0 : active raid1 sda1[0]\n      60000 blocks super 1.2 [2/1] [U_]\n")
    uri = node(tmp_path)
    result = run_preflight(CheckContext.for_host(Host(snap.root)), Config(), lambda: LibvirtHypervisor(uri), "/")
    assert any(p.startswith("md.degraded: md0") for p in result.host_problems)
    assert result.boot_problems == ()  # sdb left the array: sda, with GRUB, is the only member now
    snap2 = HostSnapshot(tmp_path / "snap2")
    snap2.boot_mirror({"sda": images["mbr-grub"], "sdb": images["mbr-bare"]}, 1)
    result2 = run_preflight(CheckContext.for_host(Host(snap2.root)), Config(), lambda: LibvirtHypervisor(uri), "/")
    assert [p.split(":")[0] for p in result2.boot_problems] == ["boot.missing_on_member"]
    assert not result2.allowed(force=True) and result2.allowed(force=True, force_unbootable=True)


def test_an_unreachable_hypervisor_and_no_room_to_save(tmp_path: Path) -> None:
    snap = HostSnapshot(tmp_path / "snap")

    def unreachable() -> LibvirtHypervisor:
        raise ProbeUnavailable("hypervisor qemu:///system not reachable: no socket")

    result = run_preflight(CheckContext.for_host(Host(snap.root)), Config(), unreachable, "/")
    assert result.hypervisor_problem == "hypervisor qemu:///system not reachable: no socket"
    assert not result.allowed(force=True, force_unbootable=True)  # no override for guests it cannot see
    small = tmp_path / "small.xml"
    big = node(tmp_path).removeprefix("test://")
    small.write_text(Path(big).read_text().replace("<memory unit='MiB'>512</memory>",
                                                   "<memory unit='MiB'>999999999</memory>"))
    full = run_preflight(CheckContext.for_host(Host(snap.root)), Config(),
                         lambda: LibvirtHypervisor(f"test://{small}"), "/")
    assert any("the running guests need" in p for p in full.host_problems)
