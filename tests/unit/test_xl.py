"""The xl backend's pure parsers on output captured from a real Xen 4.17 dom0, and the choice of backend (issue #20)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostagent.config import MaintenanceConfig
from hostagent.errors import ParseError
from hostagent.host import Host
from hostagent.hypervisor import select
from hostagent.maintenance.preflight import plan
from hostagent.sources import xl

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "xen"


def test_xl_list_long_of_a_real_dom0_names_every_domain_and_its_memory() -> None:
    domains = xl.parse_list_long((FIXTURES / "xl-list-l-two.json").read_text())
    assert [(d.domid, d.name, d.type, d.max_memkb) for d in domains] == [
        (0, "Domain-0", "pv", 1048576), (2, "lv1", "pv", 98304), (3, "pv2", "pv", 98304)]
    assert all(d.pci == () for d in domains) and domains[2].uuid
    single = xl.parse_list_long((FIXTURES / "xl-list-l.json").read_text())
    assert [d.name for d in single if d.domid != xl.DOM0] == ["pv1"]


def test_plain_xl_list_gives_state_flags_and_a_paused_domain() -> None:
    states = {s.name: s for s in xl.parse_list((FIXTURES / "xl-list.txt").read_text())}
    assert {n: s.domid for n, s in states.items()} == {"Domain-0": 0, "pv2": 2, "pv1": 3}
    assert all(s.alive and not s.paused for s in states.values())
    session = (FIXTURES / "xl-session.txt").read_text().split("# xl save")[0]
    paused = {s.name: s for s in xl.parse_list(session)}["pv2"]
    assert paused.paused and paused.alive
    assert not xl.XlState(5, "gone", "---s--").alive and not xl.XlState(5, "dying", "-----d").alive


def test_a_domain_name_with_spaces_is_read_from_the_right() -> None:
    line = "Name  ID   Mem VCPUs\tState\tTime(s)\nweb shop 1   7   512     1     -b----       3.2\n"
    assert xl.parse_list(line) == [xl.XlState(7, "web shop 1", "-b----", 512)]
    # a run of spaces or a tab inside the name is the name's (adversarial review, issue #34): read as one
    # space, the real domain looked stopped and went down with the host unsaved
    odd = "Name  ID   Mem VCPUs\tState\tTime(s)\nshop  prod\tx   8   96     1     -b----       0.5\n"
    assert xl.parse_list(odd) == [xl.XlState(8, "shop  prod\tx", "-b----", 96)]


def test_xl_saves_own_progress_lines_are_read_as_pages() -> None:
    text = (FIXTURES / "xl-session.txt").read_text()
    assert xl.parse_progress(text) == (24576, 24576)  # the "End of stream: 0/0" line after it is not progress
    assert xl.parse_progress(text.split("Frames: 10240")[0]) == (8192, 24576)
    assert xl.parse_progress("Saving to /x new xl format") is None


def test_pci_list_and_passthrough_in_the_configuration() -> None:
    assert xl.parse_pci_list("") == []
    assert xl.parse_pci_list("Vdev Device\n04.0 0000:00:1b.0\n05.0 0000:03:00.1\n") == ["0000:00:1b.0", "0000:03:00.1"]
    data = json.loads((FIXTURES / "xl-list-l.json").read_text())
    data[1]["config"]["pcidevs"] = [{"dev": 27, "bus": 0, "func": 0, "domain": 0}]
    assert xl.parse_list_long(json.dumps(data))[1].pci == ("0000:00:1b.0",)


@pytest.mark.parametrize(("text", "message"), [
    ("{", "not JSON"),
    ("[" * 100000 + "]" * 100000, "not JSON"),
    ('{"domid": 1}', "expected a list of domains"),
    ('[{"domid": 1, "config": {"c_info": {"name": "x"}}}]', "no config.c_info and config.b_info"),
    ('[{"domid": 1, "config": {"c_info": {"name": "x"}, "b_info": {"max_memkb": "lots"}}}]', "max_memkb is 'lots'"),
    ('[{"domid": 1, "config": {"c_info": {"name": "x"}, "b_info": {"max_memkb": -1}}}]', "max_memkb is '-1'"),
    ('[{"domid": 1, "config": {"c_info": {"name": "a\\u001b[2J"}, "b_info": {}}}]', "name is"),
    ('[{"domid": true, "config": {"c_info": {"name": "x"}, "b_info": {}}}]', "domid is 'True'"),
])
def test_bad_xl_list_long_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(ParseError, match="xl list -l") as raised:
        xl.parse_list_long(text)
    assert message in str(raised.value)


def test_a_garbled_xl_list_line_names_the_line() -> None:
    with pytest.raises(ParseError, match="xl list:2: not a domain line"):
        xl.parse_list("Name ID Mem VCPUs State Time(s)\nDomain-0 zero 1024 2 r----- 1.0\n")


def test_domain0_is_never_planned_from_the_real_listing() -> None:
    from hostagent.hypervisor import GuestInfo

    guests = [GuestInfo(d.name, True, True, d.max_memkb) for d in
              xl.parse_list_long((FIXTURES / "xl-list-l-two.json").read_text()) if d.domid != xl.DOM0]
    assert [plan(g).name for g in guests] == ["lv1", "pv2"]


def host_with(tmp_path: Path, capabilities: str | None) -> Host:
    if capabilities is not None:
        (tmp_path / "proc/xen").mkdir(parents=True)
        (tmp_path / "proc/xen/capabilities").write_text(capabilities)
    return Host(str(tmp_path))


@pytest.mark.parametrize(("capabilities", "uri", "wanted", "kind", "save_dir"), [
    ("control_d\n", "qemu:///system", "auto", "xl", "/var/lib/xen/save"),
    ("control_d\n", "xen:///system", "auto", "libvirt", "/var/lib/libvirt/libxl/save"),
    ("", "qemu:///system", "auto", "libvirt", "/var/lib/libvirt/qemu/save"),  # a DomU, not a dom0
    (None, "qemu:///system", "auto", "libvirt", "/var/lib/libvirt/qemu/save"),
    (None, "qemu:///system", "xl", "xl", "/var/lib/xen/save"),
    ("control_d\n", "qemu:///system", "libvirt", "libvirt", "/var/lib/libvirt/qemu/save"),
])
def test_auto_picks_what_the_host_runs(tmp_path: Path, capabilities: str | None, uri: str, wanted: str,
                                       kind: str, save_dir: str) -> None:
    settings = MaintenanceConfig(hypervisor=wanted, uri=uri)  # type: ignore[arg-type]
    resolved = select.resolve(settings, host_with(tmp_path, capabilities))
    assert (resolved.hypervisor, resolved.save_dir) == (kind, save_dir)
    mine = select.resolve(MaintenanceConfig(hypervisor=wanted, uri=uri, save_dir="/srv/save"),  # type: ignore[arg-type]
                          host_with(tmp_path / "again", capabilities))
    assert mine.save_dir == "/srv/save"
