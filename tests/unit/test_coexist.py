"""Services that also act on guests at a reboot: libvirt-guests, libvirt autostart, xendomains (issue #19)."""

from __future__ import annotations

from pathlib import Path

from hostagent.host import Host
from hostagent.hypervisor import GuestInfo
from hostagent.maintenance import coexist

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "coexist"  # Debian 12's own files


def test_debians_libvirt_guests_file_gives_the_scripts_defaults() -> None:
    text = (FIXTURES / "libvirt-guests").read_text()
    values = coexist.parse_shell_defaults(text, coexist.LIBVIRT_GUESTS_DEFAULTS)
    assert values["ON_BOOT"] == "ignore" and values["ON_SHUTDOWN"] == "shutdown"
    assert [c.change for c in coexist.libvirt_guests(values, enabled=True)] == [
        "set ON_SHUTDOWN=suspend in /etc/default/libvirt-guests, so such a guest is suspended and hostagent "
        "restores it from that image"]


def test_debians_xendomains_file_saves_and_restores_every_domain() -> None:
    values = coexist.parse_shell_defaults((FIXTURES / "xendomains").read_text(), coexist.XENDOMAINS_DEFAULTS)
    assert (values["XENDOMAINS_SAVE"], values["XENDOMAINS_RESTORE"]) == ("/var/lib/xen/save", "true")
    assert [c.service for c in coexist.xendomains(values, enabled=True)] == ["xendomains", "xendomains"]
    assert coexist.xendomains(values, enabled=False) == []


def test_assignments_quotes_comments_and_export() -> None:
    text = ('# ON_BOOT=start\nON_BOOT=start\nexport ON_SHUTDOWN="suspend"  # keep them\nURIS=\'qemu:///system xen:///\'\n'
            "PARALLEL_SHUTDOWN=$(nproc)\nnot an assignment\nBROKEN=\"open\n")
    values = coexist.parse_shell_defaults(text, coexist.LIBVIRT_GUESTS_DEFAULTS)
    assert values["ON_BOOT"] == "start" and values["ON_SHUTDOWN"] == "suspend"
    assert values["URIS"] == "qemu:///system xen:///" and "BROKEN" not in values


def guest(name: str, running: bool, autostart: bool) -> GuestInfo:
    return GuestInfo(name, running, True, 65536, autostart=autostart)


def test_detect_names_each_service_and_what_to_change(tmp_path: Path) -> None:
    (tmp_path / "etc/default").mkdir(parents=True)
    (tmp_path / "etc/default/libvirt-guests").write_text("ON_BOOT=start\n")
    (tmp_path / "etc/default/xendomains").write_text('XENDOMAINS_SAVE=""\nXENDOMAINS_RESTORE=true\n')
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "libvirt-guests.service").write_text("")
    found = coexist.detect(Host(str(tmp_path)), [guest("web1", True, True), guest("old1", False, True),
                                                 guest("db1", True, False)])
    lines = [c.line() for c in found]
    assert any("ON_BOOT=start" in line and "set ON_BOOT=ignore" in line for line in lines)
    assert any("ON_SHUTDOWN=shutdown" in line and "ON_SHUTDOWN=suspend" in line for line in lines)
    assert not any(c.service == "xendomains" for c in found)  # installed but not enabled
    assert "libvirt autostart: web1 has autostart on" in "\n".join(lines)
    assert any("old1 is stopped but has autostart on" in line and "virsh autostart --disable old1" in line
               for line in lines)
    assert coexist.restorers(found) == {"*": "libvirt-guests", "web1": "libvirt autostart",
                                        "old1": "libvirt autostart"}
    (wants / "xendomains.service").write_text("")
    xen = [c for c in coexist.detect(Host(str(tmp_path)), []) if c.service == "xendomains"]
    assert [c.change for c in xen] == ['set XENDOMAINS_RESTORE=false and XENDOMAINS_AUTO="" in /etc/default/xendomains']


def test_nothing_to_say_on_a_host_without_them(tmp_path: Path) -> None:
    assert coexist.detect(Host(str(tmp_path)), [guest("web1", True, False)]) == []
