"""Disk inventory helpers: transports from real sysfs paths, serials, selection, parent disks."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostagent.host import Host
from hostagent.sources.blockdev import clean_serial, parent_disks, read_disks, selected, transport_from_path
from tests.snapshots import HostSnapshot


@pytest.mark.parametrize(("name", "path", "transport"), [
    # the SAS disk behind an expander from the prometheus/procfs fixture tree
    ("sdv", "../devices/pci0000:00/0000:00:03.0/0000:03:00.0/host11/port-11:0/expander-11:0/port-11:0:0/"
            "end_device-11:0:0/target11:0:7/11:0:7:0/block/sdv", "sas"),
    ("sda", "../devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda", "ata"),
    ("sdc", "../devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdc", "usb"),
    ("nvme0n1", "../devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1", "nvme"),
    ("vda", "../devices/pci0000:00/0000:00:02.0/virtio1/block/vda", "virtio"),  # this machine's disk
    ("sdb", "../devices/pci0000:00/0000:00:05.0/virtio2/host2/target2:0:0/2:0:0:0/block/sdb", "scsi"),
    ("xvda", "../devices/vbd-51712/block/xvda", "xen"),
])
def test_transport_from_path(name: str, path: str, transport: str) -> None:
    assert transport_from_path(name, path) == transport


def test_serials() -> None:
    assert clean_serial(b"\x00\x80\x00\x08ZA1B2C3D") == "ZA1B2C3D"  # VPD page 0x80
    assert clean_serial(b"S4EWNX0R123456  \n") == "S4EWNX0R123456"
    assert clean_serial(b"\n") is None


def test_virtual_devices_are_left_out_unless_included() -> None:
    assert not selected("loop0", (), ()) and selected("loop0", ("loop*",), ())
    assert not selected("md0", (), ()) and not selected("dm-1", (), ())
    assert selected("sda", (), ()) and not selected("sda", (), ("sd[a-b]",))


def test_members_map_to_their_disks(tmp_path: Path) -> None:
    snap = HostSnapshot(tmp_path)
    snap.disk("sda", partitions=("sda1", "sda2"), serial="A")
    snap.disk("nvme0n1", "nvme", partitions=("nvme0n1p1",), serial="N")
    snap.link("sys/block/dm-0/slaves/sda2", "../../sda/sda2")
    host = Host(tmp_path)
    assert parent_disks(host, "sda1") == ["sda"]
    assert parent_disks(host, "nvme0n1p1") == ["nvme0n1"]
    assert parent_disks(host, "dm-0") == ["sda"]
    assert parent_disks(host, "sdb") == ["sdb"]
    disks = {d.name: d for d in read_disks(host)}
    assert disks["sda"].partitions == ("sda1", "sda2") and disks["sda"].transport == "ata"
    assert disks["sda"].size_bytes == 3907029168 * 512 and disks["sda"].serial == "A"
    assert disks["nvme0n1"].transport == "nvme"
