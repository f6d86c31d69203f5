"""Ansible inventories: our parser against ansible-core's own, on the same files."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostagent.errors import ConfigError
from hostagent.fleet.inventory import FleetHost, parse, parse_with_ansible, select

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "inventories"


def essentials(hosts: list[FleetHost]) -> dict[str, tuple[str, int, str | None, tuple[str, ...]]]:
    return {h.name: (h.address, h.port, h.user, h.groups) for h in hosts}


@pytest.mark.parametrize("inventory", ["ini/hosts.ini", "yaml/hosts.yml"])
def test_our_parser_agrees_with_ansible(inventory: str) -> None:
    ours = essentials(parse(str(FIXTURES / inventory)))
    theirs = essentials(parse_with_ansible(str(FIXTURES / inventory)))
    assert ours == theirs


def test_ini_ranges_children_and_vars_files() -> None:
    hosts = {h.name: h for h in parse(str(FIXTURES / "ini/hosts.ini"))}
    assert sorted(hosts) == ["ctl.example.net", "hv-old.dc1.example.net", "hv01.dc1.example.net",
                             "hv02.dc1.example.net", "hv03.dc1.example.net", "hva.dc2.example.net",
                             "hvb.dc2.example.net", "spare.example.net"]
    assert hosts["hv01.dc1.example.net"].groups == ("dc1", "hypervisors")
    assert hosts["hv01.dc1.example.net"].user == "ops"  # inline host vars beat group_vars files
    assert hosts["hv02.dc1.example.net"].port == 2202  # host_vars file
    assert (hosts["hv-old.dc1.example.net"].address, hosts["hv-old.dc1.example.net"].port) == ("192.0.2.10", 2222)
    assert (hosts["hva.dc2.example.net"].port, hosts["hva.dc2.example.net"].user) == (2200, "hostagent")
    assert hosts["hva.dc2.example.net"].vars["rack"] == "B 12" and hosts["spare.example.net"].vars["site"] == "example"
    assert hosts["spare.example.net"].groups == ("ungrouped",)


def test_select_by_host_or_group_and_unknown_names() -> None:
    hosts = parse(str(FIXTURES / "ini/hosts.ini"))
    assert [h.name for h in select(hosts, ["dc2", "spare.example.net"])] == [
        "hva.dc2.example.net", "hvb.dc2.example.net", "spare.example.net"]
    assert len(select(hosts, ["all"])) == len(hosts)
    with pytest.raises(ConfigError, match="no host or group named dc9"):
        select(hosts, ["dc9"])


@pytest.mark.parametrize(("text", "message"), [
    ("[dc1\nhv1\n", "line 1: unclosed section header"),
    ("[dc1:bogus]\nhv1\n", "unknown section kind 'bogus'"),
    ("[dc1]\nhv1 ansible_port\n", "line 2: expected key=value after the host name"),
    ("[dc1]\nhv[1:x]\n", "bad host range"),
    ("[dc1]\nhv1 ansible_port=twelve\n", "ansible_port 'twelve' is not a number"),
])
def test_bad_ini_is_refused_with_the_place(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "hosts.ini"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse(str(path))


def test_bad_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  hostz:\n    a:\n")
    with pytest.raises(ConfigError, match="all: unknown key 'hostz'"):
        parse(str(path))
