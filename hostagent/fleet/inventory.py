"""The fleet is the Ansible inventory that installed it: INI or YAML, with groups, children,
``ansible_host``/``ansible_port``/``ansible_user`` and ``host_vars``/``group_vars`` files.

With ansible-core installed its own parser reads the inventory (``parse_with_ansible``);
otherwise ``parse`` reads these formats itself.  Both give the same ``FleetHost`` list, which
tests check on the same files.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hostagent.errors import ConfigError
from hostagent.records import field, record

RANGE = re.compile(r"\[([0-9a-zA-Z]+):([0-9a-zA-Z]+)(?::(\d+))?\]")


@record(frozen=True)
class FleetHost:
    name: str
    address: str
    port: int = 22
    user: str | None = None
    groups: tuple[str, ...] = ()
    vars: Mapping[str, Any] = field(default_factory=dict)


@record
class _Group:
    name: str
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)


def load(path: str, prefer_ansible: bool = True) -> list[FleetHost]:
    """The hosts of an inventory file, ansible-core's parser first when it is installed."""
    if not Path(path).is_file():
        raise ConfigError(f"inventory {path}: no such file")
    if prefer_ansible:
        try:
            return parse_with_ansible(path)
        except ImportError:
            pass
    return parse(path)


def parse(path: str) -> list[FleetHost]:
    source = Path(path)
    try:
        text = source.read_text()
    except OSError as err:
        raise ConfigError(f"inventory {path}: {err.strerror or err}") from None
    groups: dict[str, _Group] = {"all": _Group("all"), "ungrouped": _Group("ungrouped")}
    if source.suffix in (".yml", ".yaml") or text.lstrip().startswith(("all:", "---")):
        _read_yaml(text, path, groups)
    else:
        _read_ini(text, path, groups)
    for name in groups:
        if name != "all" and not any(name in g.children for g in groups.values()):
            groups["all"].children.append(name)
    return _resolve(groups, source.parent)


def _expand(pattern: str, where: str) -> list[str]:
    """``web[01:03].example.com`` -> web01, web02, web03 (Ansible's ranges, with an optional stride)."""
    match = RANGE.search(pattern)
    if not match:
        return [pattern]
    start, end, stride = match.group(1), match.group(2), int(match.group(3) or 1)
    head, tail = pattern[:match.start()], pattern[match.end():]
    if start.isdigit() and end.isdigit():
        width = len(start) if start.startswith("0") else 0
        values = [str(i).zfill(width) for i in range(int(start), int(end) + 1, stride)]
    elif len(start) == 1 and len(end) == 1 and start.isalpha() and end.isalpha():
        values = [chr(c) for c in range(ord(start), ord(end) + 1, stride)]
    else:
        raise ConfigError(f"{where}: bad host range [{match.group(0)[1:-1]}]")
    return [name for value in values for name in _expand(head + value + tail, where)]


def _value(text: str) -> Any:
    """INI values as Ansible reads them: numbers become numbers, quotes are removed."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    if text in ("true", "True", "yes"):
        return True
    if text in ("false", "False", "no"):
        return False
    return text


def _read_ini(text: str, path: str, groups: dict[str, _Group]) -> None:
    section, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"inventory {path}, line {number}"
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(f"{where}: unclosed section header {line!r}")
            header = line[1:-1].strip()
            section, _, kind = header.partition(":")
            kind = kind or "hosts"
            if kind not in ("hosts", "vars", "children"):
                raise ConfigError(f"{where}: unknown section kind {kind!r} (hosts, vars or children)")
            groups.setdefault(section, _Group(section))
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
        if not words:
            continue
        group = groups[section]
        if kind == "vars":
            key, sep, value = line.partition("=")
            if not sep:
                raise ConfigError(f"{where}: expected key=value in [{section}:vars]")
            group.vars[key.strip()] = _value(shlex.split(value)[0] if value.strip() else "")
        elif kind == "children":
            groups.setdefault(words[0], _Group(words[0]))
            group.children.append(words[0])
        else:
            hostvars: dict[str, Any] = {}
            for word in words[1:]:
                key, sep, value = word.partition("=")
                if not sep:
                    raise ConfigError(f"{where}: expected key=value after the host name, got {word!r}")
                hostvars[key] = _value(value)
            for name in _expand(words[0], where):
                group.hosts.setdefault(name, {}).update(hostvars)


def _read_yaml(text: str, path: str, groups: dict[str, _Group]) -> None:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"inventory {path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"inventory {path}: expected groups at the top level, got {type(data).__name__}")

    def visit(name: str, body: Any, where: str) -> None:
        group = groups.setdefault(name, _Group(name))
        if body is None:
            return
        if not isinstance(body, dict):
            raise ConfigError(f"inventory {path}: {where}: expected hosts, children or vars")
        for key in body:
            if key not in ("hosts", "children", "vars"):
                raise ConfigError(f"inventory {path}: {where}: unknown key {key!r} (hosts, children or vars)")
        for host, hostvars in (body.get("hosts") or {}).items():
            for expanded in _expand(str(host), f"inventory {path}: {where}"):
                group.hosts.setdefault(expanded, {}).update(hostvars or {})
        group.vars.update(body.get("vars") or {})
        for child, child_body in (body.get("children") or {}).items():
            if child not in group.children:
                group.children.append(child)
            visit(child, child_body, f"{where}.children.{child}")

    for name, body in data.items():
        visit(name, body, name)


def _vars_file(directory: Path, name: str) -> dict[str, Any]:
    """``group_vars/<name>.yml`` (or .yaml, or no suffix), or every file in ``group_vars/<name>/``."""
    import yaml

    found: dict[str, Any] = {}
    candidates = [directory / f"{name}{suffix}" for suffix in ("", ".yml", ".yaml")]
    if (directory / name).is_dir():
        candidates = sorted(p for p in (directory / name).iterdir() if p.suffix in (".yml", ".yaml"))
    for candidate in candidates:
        if candidate.is_file():
            try:
                data = yaml.safe_load(candidate.read_text()) or {}
            except yaml.YAMLError as err:
                raise ConfigError(f"{candidate}: not valid YAML: {err}") from None
            if not isinstance(data, dict):
                raise ConfigError(f"{candidate}: expected variables (a mapping)")
            found.update(data)
    return found


def _resolve(groups: dict[str, _Group], base: Path) -> list[FleetHost]:
    parents: dict[str, set[str]] = {name: set() for name in groups}
    for group in groups.values():
        for child in group.children:
            parents.setdefault(child, set()).add(group.name)

    def ancestors(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        if name in seen:
            raise ConfigError(f"inventory: group {name} is its own ancestor")
        found = {name}
        for parent in parents.get(name, ()):
            found |= ancestors(parent, seen | {name})
        return found

    def depth(name: str) -> int:
        return 0 if name == "all" else 1 + max((depth(p) for p in parents.get(name, ()) if p != name), default=0)

    hosts: dict[str, set[str]] = {}
    inline: dict[str, dict[str, Any]] = {}
    for group in groups.values():
        for name, hostvars in group.hosts.items():
            hosts.setdefault(name, set()).update(ancestors(group.name))
            inline.setdefault(name, {}).update(hostvars)
    result = []
    for name in sorted(hosts):
        member_of = hosts[name] | {"all"}
        if member_of - {"all", "ungrouped"}:
            member_of.discard("ungrouped")
        else:
            member_of.add("ungrouped")  # as Ansible: a host in no group but all
        merged: dict[str, Any] = {}
        for group_name in sorted(member_of, key=lambda g: (depth(g), g)):
            merged.update(groups[group_name].vars if group_name in groups else {})
            merged.update(_vars_file(base / "group_vars", group_name))
        merged.update(inline[name])
        merged.update(_vars_file(base / "host_vars", name))
        result.append(_host(name, merged, member_of))
    return result


def _host(name: str, variables: Mapping[str, Any], groups: Iterable[str]) -> FleetHost:
    try:
        port = int(variables.get("ansible_port", variables.get("ansible_ssh_port", 22)))
    except (TypeError, ValueError):
        raise ConfigError(f"inventory: host {name}: ansible_port {variables.get('ansible_port')!r} is not a number"
                          ) from None
    address = str(variables.get("ansible_host", variables.get("ansible_ssh_host", name)))
    user = variables.get("ansible_user", variables.get("ansible_ssh_user"))
    return FleetHost(name, address, port, str(user) if user is not None else None,
                     tuple(sorted(g for g in groups if g != "all")), dict(variables))


def parse_with_ansible(path: str) -> list[FleetHost]:
    """ansible-core's own inventory plugins (INI, YAML and the rest), with host and group vars files."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[path])
    variables = VariableManager(loader=loader, inventory=inventory)
    result = []
    for host in sorted(inventory.get_hosts(), key=lambda h: h.name):
        found = variables.get_vars(host=host)
        names = {g.name for g in host.get_groups()}
        own = {k: v for k, v in found.items() if not k.startswith(("ansible_play", "ansible_version", "group_names",
                                                                    "groups", "inventory_", "omit", "playbook_dir",
                                                                    "ansible_config_file", "ansible_check_mode",
                                                                    "ansible_diff_mode", "ansible_forks",
                                                                    "ansible_inventory_sources",
                                                                    "ansible_skip_tags", "ansible_run_tags",
                                                                    "ansible_verbosity"))}
        result.append(_host(host.name, own, names))
    return result


def select(hosts: list[FleetHost], patterns: Iterable[str]) -> list[FleetHost]:
    """Hosts named, or in a group named, by any pattern (``all`` for every host)."""
    wanted = [p for p in patterns if p]
    if not wanted or "all" in wanted:
        return hosts
    chosen = [h for h in hosts if h.name in wanted or set(h.groups) & set(wanted)]
    unknown = [p for p in wanted if not any(h.name == p or p in h.groups for h in hosts)]
    if unknown:
        raise ConfigError(f"no host or group named {', '.join(unknown)} in the inventory")
    return chosen
