"""/etc/hostagent/hostagent.toml -> frozen, typed objects, validated once.

An unknown key is an error naming its path; a wrong type names the key and the type
expected; a missing file means defaults.  The reference is docs/config.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from checks import boot, erc, hung, md, net, smart
from hostagent.alerts.settings import AlertsConfig
from hostagent.errors import ConfigError

DEFAULT_PATH = "/etc/hostagent/hostagent.toml"
ENV_VAR = "HOSTAGENT_CONFIG"


@dataclass(frozen=True)
class AgentConfig:
    command_timeout: float = 30.0
    prom_file: str | None = None
    state_dir: str = "/var/lib/hostagent"
    rpc_socket: str = "/run/hostagent/rpc.sock"  # "": no RPC socket
    rpc_user: str = "hostagent-rpc"  # the only account besides root that the socket answers
    rpc_allow: tuple[str, ...] = ()  # the most any key line may allow (empty: rpc.DEFAULT_ALLOW)


@dataclass(frozen=True)
class DisksConfig:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChecksConfig:
    md: md.Config = field(default_factory=md.Config)
    hung: hung.Config = field(default_factory=hung.Config)
    smart: smart.Config = field(default_factory=smart.Config)
    erc: erc.Config = field(default_factory=erc.Config)
    boot: boot.Config = field(default_factory=boot.Config)
    net: net.Config = field(default_factory=net.Config)


@dataclass(frozen=True)
class WatchConfig:
    md_interval: float = 10.0
    hung_interval: float = 5.0
    smart_interval: float = 1800.0
    erc_interval: float = 3600.0
    boot_interval: float = 3600.0
    net_interval: float = 5.0
    act: bool = True


@dataclass(frozen=True)
class MaintenanceConfig:
    hypervisor: Literal["auto", "xl", "libvirt"] = "auto"  # auto: xl on a Xen dom0 unless uri is xen:
    uri: str = "qemu:///system"
    save_dir: str = ""  # "": the backend's own (hostagent.hypervisor.select.DEFAULT_SAVE_DIRS)
    xl_config_dirs: tuple[str, ...] = ("/etc/xen/auto", "/etc/xen")
    late_start_grace: float = 900.0
    reboot_command: tuple[str, ...] = ("systemctl", "reboot")
    reboot_wait: float = 900.0
    concurrency: int = 4
    save_timeout: float = 600.0
    abort_grace: float = 30.0
    on_save_failure: Literal["shutdown", "skip", "abort"] = "shutdown"
    shutdown_timeout: float = 120.0
    restore_priority: tuple[str, ...] = ()
    restore_concurrency: int = 0  # 0: one per CPU, at most ``concurrency``
    restore_attempts: int = 3
    restore_timeout: float = 300.0
    cold_boot_on_failure: bool = False
    notice_lead_times: tuple[float, ...] = (86400.0, 3600.0)
    owners: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FleetConfig:
    inventory: str = "/etc/hostagent/inventory.ini"
    limit: tuple[str, ...] = ()  # groups or hosts this controller polls (sharding); empty: all
    key: str = "/var/lib/hostagent-fleet/id_ed25519"
    known_hosts: str = "/var/lib/hostagent-fleet/known_hosts"
    state_dir: str = "/var/lib/hostagent-fleet"
    user: str = "hostagent"  # when the inventory gives no ansible_user
    concurrency: int = 20
    connect_timeout: float = 10.0
    command_timeout: float = 60.0
    keepalive: int = 15
    poll_interval: float = 60.0
    stale_after: float = 300.0
    maintenance_window: float = 1800.0  # after a host's announced reboot time: silence is expected, not paged
    retention_days: float = 30.0
    host_findings: Literal["agent", "controller", "both"] = "agent"
    digest_hour: int = 7
    digest: bool = True
    prom_file: str | None = None
    metrics_listen: str | None = None
    page_dir: str | None = None
    rolling_start_delay: float = 60.0
    rolling_timeout: float = 3600.0


@dataclass(frozen=True)
class Config:
    agent: AgentConfig = field(default_factory=AgentConfig)
    disks: DisksConfig = field(default_factory=DisksConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    maintenance: MaintenanceConfig = field(default_factory=MaintenanceConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    source: str = "defaults"

    def check_config(self, name: str) -> Any:
        return getattr(self.checks, name)


def config_path(explicit: str | None) -> tuple[str, bool]:
    """The path to load and whether the operator named it (then it must exist)."""
    if explicit:
        return explicit, True
    env = os.environ.get(ENV_VAR)
    if env:
        return env, True
    return DEFAULT_PATH, False


def load_config(explicit: str | None = None) -> Config:
    path, required = config_path(explicit)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path} does not exist") from None
        return Config()
    except OSError as err:
        raise ConfigError(f"config file {path}: cannot read: {err.strerror or err}") from None
    import tomllib  # only when there is a file: keeps `hostagent check` quick without one

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path}: not valid TOML: {err}") from None
    return parse_config(data, source=path)


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> Config:
    values: Config = _build(Config, dict(data), source, "", skip=("source",))
    _check_maintenance(values.maintenance, source)
    return dataclasses.replace(values, source=source)


def _check_maintenance(m: MaintenanceConfig, source: str) -> None:
    """Values that would only fail in the middle of a maintenance, after guests were saved."""
    problems = []
    if not m.reboot_command or not m.reboot_command[0].strip():
        problems.append("reboot_command: must name a command, e.g. [\"systemctl\", \"reboot\"]")
    if not m.uri.strip():
        problems.append("uri: must name the hypervisor, e.g. \"qemu:///system\"")
    if m.save_dir and not m.save_dir.startswith("/"):
        problems.append(f"save_dir: must be an absolute path, got {m.save_dir!r}")
    problems += [f"xl_config_dirs: must be absolute paths, got {d!r}"
                 for d in m.xl_config_dirs if not d.startswith("/")]
    for key in ("concurrency", "restore_attempts"):
        if getattr(m, key) < 1:
            problems.append(f"{key}: must be at least 1, got {getattr(m, key)}")
    for key in ("save_timeout", "shutdown_timeout", "restore_timeout", "reboot_wait"):
        if getattr(m, key) <= 0:
            problems.append(f"{key}: must be more than 0 s, got {getattr(m, key)}")
    if any(lead <= 0 for lead in m.notice_lead_times):
        problems.append("notice_lead_times: every lead time must be more than 0 s")
    for guest, owner in m.owners.items():
        if "@" not in owner or any(c.isspace() or not c.isprintable() for c in owner):
            problems.append(f"owners.{guest}: {owner!r} is not a mail address")
    if problems:
        raise ConfigError(f"{source}: maintenance." + f"\n{source}: maintenance.".join(problems))


def check_on_host(config: Config) -> list[str]:
    """What ``config check`` finds wrong for this host beyond the file itself (commands that are missing)."""
    import shutil

    command = config.maintenance.reboot_command[0]
    if shutil.which(command) is None:
        return [f"{config.source}: maintenance.reboot_command: {command!r} is not an executable on this host"]
    return []


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _build(cls: Any, data: Any, source: str, path: str, skip: tuple[str, ...] = ()) -> Any:
    where = path or "top level"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {where}: expected a table, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.name not in skip}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key {_join(path, key)} (known keys here: {known})")
    kwargs = {key: _convert(value, hints[key], source, _join(path, key)) for key, value in data.items()}
    return cls(**kwargs)


def _convert(value: Any, tp: Any, source: str, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, source, path)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{source}: {path}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(value, options[0], source, path)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if not isinstance(value, list):
            kind = "tables" if dataclasses.is_dataclass(item) else f"{_TYPE_NAMES[item][2:]}s"
            raise ConfigError(f"{source}: {path}: expected a list of {kind}, got {_describe(value)}")
        return tuple(_convert(v, item, source, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict, typing.Mapping):
        _, item = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {path}: expected a table, got {_describe(value)}")
        return types.MappingProxyType({str(k): _convert(v, item, source, _join(path, k)) for k, v in value.items()})
    if tp is float and type(value) is int:
        value = float(value)
    if tp in _TYPE_NAMES:
        if type(value) is not tp:
            raise ConfigError(f"{source}: {path}: expected {_TYPE_NAMES[tp]}, got {_describe(value)}")
        if tp is float and not math.isfinite(value):
            raise ConfigError(f"{source}: {path}: must be a finite number, got {value}")
        if tp in (int, float) and value < 0:
            raise ConfigError(f"{source}: {path}: must not be negative, got {value}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}
    return f"{kind.get(type(value), type(value).__name__)} {value!r}"
