"""/etc/hostagent/hostagent.toml -> frozen, typed objects, validated once.

An unknown key is an error naming its path; a wrong type names the key and the type
expected; ranges, cross-field rules, addresses and the SMTP password file are checked too, and
every problem is reported at once.  A missing file means defaults.  The reference is docs/config.md.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from checks import boot, erc, hung, md, net, smart
from hostagent.alerts.settings import AlertsConfig
from hostagent.errors import ConfigError
from hostagent.names import MAIL_ADDRESS
from hostagent.records import field, field_names, is_record, record, replace
from hostagent.selftest import compile_schedule

DEFAULT_PATH = "/etc/hostagent/hostagent.toml"
ENV_VAR = "HOSTAGENT_CONFIG"
MAX_BYTES = 1 << 20  # a configuration is a few KiB; anything near this is not one
_MAIL = MAIL_ADDRESS
_HOST = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
                   r"[A-Za-z0-9])?)*\.?")
# a warning limit and the critical limit it must stay below (or a value and its maximum: at most)
_BELOW = (("checks.smart.temperature_warning", "checks.smart.temperature_critical", True),
          ("checks.smart.nvme_temperature_warning", "checks.smart.nvme_temperature_critical", True),
          ("checks.net.syn_recv_warning", "checks.net.syn_recv_critical", True),
          ("checks.net.icmp_echo_warning", "checks.net.icmp_echo_critical", True),
          ("checks.net.mitigation_ttl", "checks.net.mitigation_max_ttl", False))


@record(frozen=True)
class AgentConfig:
    command_timeout: float = 30.0
    prom_file: str | None = None
    state_dir: str = "/var/lib/hostagent"
    rpc_socket: str = "/run/hostagent/rpc.sock"  # "": no RPC socket
    rpc_user: str = "hostagent-rpc"  # the only account besides root that the socket answers
    rpc_allow: tuple[str, ...] = ()  # the most any key line may allow (empty: rpc.DEFAULT_ALLOW)
    audit_max_bytes: int = 8 << 20  # the audit journal is rotated when it reaches this size
    audit_keep: int = 5  # rotated audit files kept (audit.jsonl.1 ... .N)


@record(frozen=True)
class DisksConfig:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@record(frozen=True)
class ChecksConfig:
    md: md.Config = field(default_factory=md.Config)
    hung: hung.Config = field(default_factory=hung.Config)
    smart: smart.Config = field(default_factory=smart.Config)
    erc: erc.Config = field(default_factory=erc.Config)
    boot: boot.Config = field(default_factory=boot.Config)
    net: net.Config = field(default_factory=net.Config)


@record(frozen=True)
class WatchConfig:
    md_interval: float = 10.0
    hung_interval: float = 5.0
    smart_interval: float = 1800.0
    erc_interval: float = 3600.0
    boot_interval: float = 3600.0
    net_interval: float = 5.0
    act: bool = True


@record(frozen=True)
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
    min_notice_lead: float = 3600.0  # --notify-owners: the reboot at least this far ahead (CLI and RPC)
    retention_days: float = 90.0  # final journals (and their logs) older than this are pruned
    owners: Mapping[str, str] = field(default_factory=dict)


@record(frozen=True)
class FleetConfig:
    inventory: str = "/etc/hostagent/inventory.ini"
    limit: tuple[str, ...] = ()  # groups or hosts this controller polls (sharding); empty: all
    key: str = "/var/lib/hostagent-fleet/id_ed25519"
    known_hosts: str = "/var/lib/hostagent-fleet/known_hosts"
    state_dir: str = "/var/lib/hostagent-fleet"
    user: str = "hostagent-rpc"  # when the inventory gives no ansible_user: the role's RPC account
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


@record(frozen=True)
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

    if len(raw) > MAX_BYTES:
        raise ConfigError(f"config file {path}: {len(raw)} bytes; a configuration is at most {MAX_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path}: not valid TOML: {err}") from None
    except RecursionError:
        raise ConfigError(f"config file {path}: not valid TOML: arrays or tables nested too deeply") from None
    return parse_config(data, source=path)


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> Config:
    """The typed configuration, or one ConfigError listing every problem, one per line."""
    problems: list[str] = []
    values: Config = _build(Config, dict(data), source, "", problems, skip=("source",))
    problems += _check_maintenance(values.maintenance, source)
    problems += _rules(values, source)
    if problems:
        raise ConfigError("\n".join(problems))
    return replace(values, source=source)


def _fields(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """(dotted path, value) of every field, nested sections included."""
    found: list[tuple[str, Any]] = []
    for name in field_names(value):
        item = getattr(value, name)
        where = _join(path, name)
        found += _fields(item, where) if is_record(item) else [(where, item)]
    return found


def _rules(config: Config, source: str) -> list[str]:
    """Ranges, cross-field rules, addresses and the password file (the file's types are right)."""
    problems: list[str] = []
    values = dict(_fields(config))

    def bad(path: str, message: str) -> None:
        problems.append(f"{source}: {path}: {message}")

    for path, value in values.items():
        leaf = path.rsplit(".", 1)[-1]
        if leaf.endswith(("timeout", "interval")) and isinstance(value, int | float) and value <= 0:
            bad(path, f"must be more than 0 s, got {value}")
    for low, high, strictly in _BELOW:
        if values[low] > values[high] or (strictly and values[low] == values[high]):
            bad(low, f"{values[low]} must be {'below' if strictly else 'at most'} {high} ({values[high]})")
    try:
        compile_schedule(config.checks.smart.selftest_schedule)
    except ValueError as err:
        bad("checks.smart.selftest_schedule", str(err))
    hung = config.checks.hung
    for path, value, least in (("checks.hung.hung_after", hung.hung_after, 1.0),
                               ("checks.hung.crawl_ms", hung.crawl_ms, 1000.0)):
        if value < least:  # lower, healthy I/O under load would count as hung or crawling, and be failed
            bad(path, f"must be at least {least:g}, got {value:g}")
    grace = config.checks.md.inactive_grace
    if not 0 <= grace <= 3600:
        bad("checks.md.inactive_grace", f"must be from 0 to 3600 s, got {grace:g}")
    if config.agent.audit_max_bytes < 4096:
        bad("agent.audit_max_bytes", f"must be at least 4096, got {config.agent.audit_max_bytes}")
    if not 0 <= config.agent.audit_keep <= 99:
        bad("agent.audit_keep", f"must be from 0 to 99, got {config.agent.audit_keep}")
    elsewhere = config.alerts.elsewhere
    if elsewhere is not None and (not elsewhere.strip() or len(elsewhere) > 200 or not elsewhere.isprintable()):
        bad("alerts.elsewhere", "must say where alerts go, on one line of at most 200 characters")
    smtp = config.alerts.smtp
    if not 1 <= smtp.port <= 65535:
        bad("alerts.smtp.port", f"must be a port from 1 to 65535, got {smtp.port}")
    if not _is_host(smtp.host):
        bad("alerts.smtp.host", f"{_shorten(smtp.host)} is not a host name or address")
    addresses = [("alerts.smtp.from_addr", smtp.from_addr)] + [
        (f"alerts.routes[{i}].to[{j}]", to) for i, route in enumerate(config.alerts.routes)
        for j, to in enumerate(route.to)]
    for path, address in addresses:
        if not _MAIL.fullmatch(address):
            bad(path, f"{_shorten(address)} is not a mail address (name@domain)")
    if smtp.username and smtp.security == "none" and not smtp.allow_plaintext_auth:
        bad("alerts.smtp.username", 'AUTH over an unencrypted connection sends the password in clear: set '
                                    'security = "starttls" or "tls" (or allow_plaintext_auth = true on purpose)')
    if bool(smtp.username) != bool(smtp.password_file):
        bad("alerts.smtp.password_file" if smtp.username else "alerts.smtp.username",
            "username and password_file go together")
    if smtp.password_file:
        problems += [f"{source}: alerts.smtp.password_file: {p}" for p in password_file_problems(smtp.password_file)]
    if config.fleet.metrics_listen is not None:
        host, _, port = config.fleet.metrics_listen.rpartition(":")
        if not (port.isdigit() and 1 <= int(port) <= 65535 and _is_host(host.strip("[]") or "0.0.0.0")):
            bad("fleet.metrics_listen", f"{_shorten(config.fleet.metrics_listen)} is not HOST:PORT "
                                        "with a port from 1 to 65535")
    from hostagent.rpc import GROUPS, VERBS

    for i, verb in enumerate(config.agent.rpc_allow):
        if verb not in VERBS and verb not in GROUPS:
            bad(f"agent.rpc_allow[{i}]", f"{_shorten(verb)} is not a verb or group (verbs: {', '.join(VERBS)}; "
                                         f"groups: {', '.join(GROUPS)})")
    net = config.checks.net
    try:
        ipaddress.ip_address(net.exabgp_next_hop)
    except ValueError:
        bad("checks.net.exabgp_next_hop", f"{_shorten(net.exabgp_next_hop)} is not an IP address")
    for i, prefix in enumerate(net.never_block):
        try:
            ipaddress.ip_network(prefix, strict=False)
        except ValueError:
            bad(f"checks.net.never_block[{i}]", f"{_shorten(prefix)} is not an address or prefix")
    return problems


def password_file_problems(path: str) -> list[str]:
    """A secret file must be root's (or the reading account's own) and closed to group and others."""
    try:
        info = os.stat(path)
    except OSError as err:
        return [f"{path}: {err.strerror or err}"]
    problems = []
    if info.st_uid not in (0, os.geteuid()):
        problems.append(f"{path} belongs to uid {info.st_uid}: it must be root's")
    if info.st_mode & 0o077:
        problems.append(f"{path} has mode {info.st_mode & 0o777:04o}: the group and others must not read it "
                        "(chmod 600)")
    return problems


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return _HOST.fullmatch(text) is not None
    return True


def _shorten(value: Any, limit: int = 60) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[:limit] + "...'"


def _check_maintenance(m: MaintenanceConfig, source: str) -> list[str]:
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
    if m.reboot_wait <= 0:  # the timeouts are checked with every other timeout
        problems.append(f"reboot_wait: must be more than 0 s, got {m.reboot_wait}")
    if any(not 0 < lead <= 366 * 86400 for lead in m.notice_lead_times):
        problems.append("notice_lead_times: every lead time must be more than 0 s and at most 366 days")
    if not 0 <= m.min_notice_lead <= 366 * 86400:
        problems.append(f"min_notice_lead: must be 0 s to 366 days, got {m.min_notice_lead}")
    if not 1 <= m.retention_days <= 36600:
        problems.append(f"retention_days: must be 1 to 36600 days, got {m.retention_days}")
    for key in ("late_start_grace", "reboot_wait", "save_timeout", "abort_grace", "shutdown_timeout",
                "restore_timeout"):
        if getattr(m, key) > 366 * 86400:
            problems.append(f"{key}: at most 366 days, got {getattr(m, key)}")
    for guest, owner in m.owners.items():
        if "@" not in owner or any(c.isspace() or not c.isprintable() for c in owner):
            problems.append(f"owners.{guest}: {owner!r} is not a mail address")
    return [f"{source}: maintenance.{problem}" for problem in problems]


def check_on_host(config: Config) -> list[str]:
    """What ``config check`` finds wrong for this host beyond the file itself (commands that are missing)."""
    import shutil

    command = config.maintenance.reboot_command[0]
    if shutil.which(command) is None:
        return [f"{config.source}: maintenance.reboot_command: {command!r} is not an executable on this host"]
    return []


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
_INVALID = object()  # what _convert returns for a value it added a problem about


def _build(cls: Any, data: Any, source: str, path: str, problems: list[str], skip: tuple[str, ...] = ()) -> Any:
    """``cls`` from a table; each bad key is added to ``problems`` and left at its default."""
    where = path or "top level"
    if not isinstance(data, Mapping):
        problems.append(f"{source}: {where}: expected a table, got {_describe(data)}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {name for name in field_names(cls) if name not in skip}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            problems.append(f"{source}: unknown key {_join(path, key)} (known keys here: {', '.join(sorted(fields))})")
            continue
        converted = _convert(value, hints[key], source, _join(path, key), problems)
        if converted is not _INVALID:  # a bad value stays at its default, so the rules still run
            kwargs[key] = converted
    return cls(**kwargs)


def _convert(value: Any, tp: Any, source: str, path: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)

    def bad(message: str) -> object:
        problems.append(f"{source}: {path}: {message}")
        return _INVALID

    if is_record(tp):
        return _build(tp, value, source, path, problems)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            return bad(f"expected one of {', '.join(map(repr, choices))}, got {_shorten(value)}")
        return value
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(value, options[0], source, path, problems)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if not isinstance(value, list):
            kind = "tables" if is_record(item) else f"{_TYPE_NAMES[item][2:]}s"
            return bad(f"expected a list of {kind}, got {_describe(value)}")
        items = [_convert(v, item, source, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return _INVALID if _INVALID in items else tuple(items)
    if origin in (Mapping, dict, typing.Mapping):
        _, item = typing.get_args(tp)
        if not isinstance(value, Mapping):
            return bad(f"expected a table, got {_describe(value)}")
        table = {str(k): _convert(v, item, source, _join(path, k), problems) for k, v in value.items()}
        return _INVALID if _INVALID in table.values() else types.MappingProxyType(table)
    if tp is float and type(value) is int:
        value = float(value)
    if tp in _TYPE_NAMES:
        if type(value) is not tp:
            return bad(f"expected {_TYPE_NAMES[tp]}, got {_describe(value)}")
        if tp is float and not math.isfinite(value):
            return bad(f"must be a finite number, got {value}")
        if tp in (int, float) and value < 0:
            return bad(f"must not be negative, got {value}")
        if tp is str and not value.isprintable():
            return bad(f"{_shorten(value)} contains a control character (such as a newline): only printable text")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}
    shown = repr(value)
    return f"{kind.get(type(value), type(value).__name__)} {shown if len(shown) <= 60 else shown[:60] + '...'}"
