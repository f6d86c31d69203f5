"""The libvirt backend against libvirt's test driver (no daemon; state per process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostagent.errors import HostagentError, ProbeUnavailable
from hostagent.hypervisor.libvirt_backend import OWNER_NS, LibvirtHypervisor

DOMAIN = """<domain type='test'>
  <name>{name}</name><memory unit='MiB'>{memory}</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  {metadata}
  <devices>{devices}</devices>
</domain>"""


def node(tmp_path: Path) -> str:
    owner = f"<metadata><hostagent:owner xmlns:hostagent='{OWNER_NS}'>alice@example.com</hostagent:owner></metadata>"
    hostdev = ("<hostdev mode='subsystem' type='pci' managed='yes'><source>"
               "<address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev>")
    domains = [DOMAIN.format(name="web1", memory=256, metadata=owner, devices=""),
               DOMAIN.format(name="db1", memory=512, metadata="", devices=""),
               DOMAIN.format(name="gpu1", memory=128, metadata="", devices=hostdev)]
    path = tmp_path / "node.xml"
    path.write_text("<node>\n" + "\n".join(domains) + "\n</node>\n")
    return f"test://{path}"


def test_guests_with_owner_and_unsaveable_devices(tmp_path: Path) -> None:
    hypervisor = LibvirtHypervisor(node(tmp_path))
    guests = {g.name: g for g in hypervisor.guests()}
    assert sorted(guests) == ["db1", "gpu1", "web1"]
    assert guests["web1"].owner == "alice@example.com" and guests["web1"].memory_kib == 256 * 1024
    assert guests["web1"].running and guests["web1"].persistent
    assert guests["gpu1"].unsaveable == "host device passthrough (hostdev)"
    assert guests["db1"].unsaveable is None


def test_managed_save_and_restore(tmp_path: Path) -> None:
    hypervisor = LibvirtHypervisor(node(tmp_path))
    image = hypervisor.save("web1", str(tmp_path / "web1.save"))
    assert image == "managed" and not hypervisor.is_running("web1") and hypervisor.has_image("web1", image)
    with pytest.raises(HostagentError, match="managed save image exists"):
        hypervisor.start("web1")  # never a silent cold boot over a saved image
    hypervisor.restore("web1", image)
    assert hypervisor.is_running("web1") and not hypervisor.has_image("web1", image)


def test_errors_name_the_guest_and_the_hypervisor(tmp_path: Path) -> None:
    hypervisor = LibvirtHypervisor(node(tmp_path))
    with pytest.raises(HostagentError, match="guest nosuch:"):
        hypervisor.is_running("nosuch")
    with pytest.raises(ProbeUnavailable, match=r"hypervisor test:///no/such/file\.xml not reachable"):
        LibvirtHypervisor("test:///no/such/file.xml")
