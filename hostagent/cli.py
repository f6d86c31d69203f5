"""Argument parsing only: each sub-command calls one function.

Exit codes follow Nagios: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (also for usage and
configuration errors, so a monitoring system never reads a typo as CRITICAL).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from hostagent import __version__
from hostagent.errors import ConfigError, HostagentError

EXIT_UNKNOWN = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_UNKNOWN)



def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hostagent", description="Host-health and maintenance agent for md RAID hypervisors.")
    parser.add_argument("--version", action="version", version=f"hostagent {__version__}")
    parser.add_argument("--config", metavar="FILE",
                        help="configuration file (default: $HOSTAGENT_CONFIG or /etc/hostagent/hostagent.toml)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    check = sub.add_parser("check", help="run the health checks once and report (a Nagios plugin too)")
    check.add_argument("--root", default="/", metavar="DIR",
                       help="read proc/sys/dev and recorded commands under DIR (a snapshot); default /")
    check.add_argument("--json", action="store_true", help="print the hostagent.report/1 JSON document")
    check.add_argument("--prom", metavar="FILE", help="also write a node_exporter textfile to FILE (atomically)")
    check.add_argument("--only", metavar="CHECKS", help="comma-separated checks to run (default: all enabled)")
    check.add_argument("--state-dir", metavar="DIR",
                       help="where baselines live (default: agent.state_dir on a live host, none for a snapshot)")
    check.add_argument("--act", action="store_true",
                       help="apply automatic remedies (a hung member is forced out under checks.hung.policy = fail)")

    disk = sub.add_parser("disk", help="disks: status, and tuning of ERC/kernel timeouts")
    disk_sub = disk.add_subparsers(dest="disk_command", required=True, parser_class=_Parser)
    status = disk_sub.add_parser("status", help="each disk with its arrays, SMART health, key attributes and trend")
    status.add_argument("--root", default="/", metavar="DIR", help="read a snapshot instead of the live host")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--state-dir", metavar="DIR", help="where SMART baselines live (for the trend)")
    fail = disk_sub.add_parser("fail", help="force a (hung) member out of its array, with the interlocks")
    fail.add_argument("member", help="the member's kernel name or path: sdb1, /dev/dm-1")
    fail.add_argument("--array", metavar="MD", help="the array, when the member is in more than one")
    fail.add_argument("--apply", action="store_true", help="run the ladder (default: dry run, print it)")
    fail.add_argument("--root", default="/", metavar="DIR", help="plan against a snapshot (never applied)")
    fail.add_argument("--state-dir", metavar="DIR", help="where the audit log is written")
    tune = disk_sub.add_parser("tune", help="show (default) or apply the ERC/timeout remedy for every member disk")
    tune.add_argument("--apply", action="store_true", help="run the commands (default: dry run, print them)")
    tune.add_argument("--root", default="/", metavar="DIR", help="plan against a snapshot (never applied)")
    tune.add_argument("--json", action="store_true", help="print JSON")
    tune.add_argument("--state-dir", metavar="DIR", help="where the audit log is written")
    replace = disk_sub.add_parser("replace", help="replace a failed mirror disk: vet the new one, partition it, "
                                                  "add it to every array, install the bootloader, follow the resync")
    replace.add_argument("--old", required=True, metavar="DISK", help="the failed disk: sdb, /dev/sdb, a by-path or "
                                                                     "by-id link, or its serial")
    replace.add_argument("--new", required=True, metavar="DISK", help="the blank replacement disk")
    replace.add_argument("--apply", action="store_true", help="do it (default: dry run, print the plan)")
    replace.add_argument("--wipe", action="store_true", help="erase a new disk that holds partitions, an md "
                                                             "superblock or a filesystem (refused otherwise)")
    replace.add_argument("--read-test-mib", type=int, default=256, metavar="N",
                         help="MiB read from the new disk while vetting it, spread over the disk (default 256)")
    replace.add_argument("--no-selftest", action="store_true", help="skip the SMART short self-test (about 2 min)")
    replace.add_argument("--json", action="store_true", help="print JSON (progress goes to stderr)")
    replace.add_argument("--root", default="/", metavar="DIR", help="plan against a snapshot (never applied)")
    replace.add_argument("--state-dir", metavar="DIR", help="the audit log (default agent.state_dir), which also "
                                                            "records each finished phase: a re-run resumes from it")
    replace.add_argument("--start-over", action="store_true", help="set aside the recorded progress of an "
                                                                   "unfinished replacement onto this new disk")
    locate = disk_sub.add_parser("locate", help="blink a disk's slot LED (ledctl or sysfs), or print its slot")
    locate.add_argument("disk", help="kernel name, /dev path, by-path/by-id link, or serial")
    locate.add_argument("--off", action="store_true", help="turn the LED off again")
    locate.add_argument("--apply", action="store_true", help="switch the LED (default: dry run)")
    locate.add_argument("--json", action="store_true", help="print JSON")
    locate.add_argument("--root", default="/", metavar="DIR", help="look the disk up in a snapshot")
    locate.add_argument("--state-dir", metavar="DIR", help="where the audit log is written")

    boot = sub.add_parser("boot", help="bootloaders on the members of the boot arrays")
    boot_sub = boot.add_subparsers(dest="boot_command", required=True, parser_class=_Parser)
    repair = boot_sub.add_parser("repair", help="show (default) or apply the commands that make every member bootable")
    repair.add_argument("--apply", action="store_true", help="run the commands (default: dry run, print them)")
    repair.add_argument("--root", default="/", metavar="DIR", help="plan against a snapshot (never applied)")
    repair.add_argument("--json", action="store_true", help="print JSON")
    repair.add_argument("--state-dir", metavar="DIR", help="where the audit log is written")

    watch = sub.add_parser("watch", help="the daemon: events and periodic checks, remedies, alerts")
    watch.add_argument("--root", default="/", metavar="DIR", help="watch a snapshot (periodic only; for tests)")
    watch.add_argument("--state-dir", metavar="DIR", help="state, spool, status file and audit log")
    watch.add_argument("--once", action="store_true", help="run one full cycle (with alerts) and exit")

    status_cmd = sub.add_parser("status", help="the daemon's view: open problems, last cycle, next runs")
    status_cmd.add_argument("--json", action="store_true", help="print the status file as JSON")
    status_cmd.add_argument("--state-dir", metavar="DIR", help="where the daemon keeps its state")

    log_cmd = sub.add_parser("log", help="the audit journal: every action and alert")
    log_cmd.add_argument("--json", action="store_true", help="print JSON lines")
    log_cmd.add_argument("--state-dir", metavar="DIR", help="where the daemon keeps its state")
    log_cmd.add_argument("--last", type=int, default=50, metavar="N", help="the last N records (default 50)")

    alert = sub.add_parser("alert", help="alert delivery")
    alert_sub = alert.add_subparsers(dest="alert_command", required=True, parser_class=_Parser)
    alert_test = alert_sub.add_parser("test", help="send a test message to every route")
    alert_test.add_argument("--state-dir", metavar="DIR", help="where the daemon keeps its state")
    _ack_parsers(alert_sub, "the daemon's state directory (default agent.state_dir)")

    maintenance = sub.add_parser("maintenance", help="scheduled reboots with guest save/restore")
    maintenance.add_argument("action", nargs="?", choices=("schedule", "list", "status", "cancel", "run-now"),
                             default="schedule")
    maintenance.add_argument("--reboot-at", metavar="WHEN",
                             help="ISO 8601, or 'YYYY-MM-DD HH:MM' in the host's time zone")
    maintenance.add_argument("--reason", default="", help="why, for the journal and the notices")
    maintenance.add_argument("--dry-run", action="store_true", help="run the preflight and show the plan only")
    maintenance.add_argument("--force", action="store_true", help="override failed host checks (not the boot check)")
    maintenance.add_argument("--force-unbootable", action="store_true",
                             help="also reboot although a boot-array member cannot boot")
    maintenance.add_argument("--notify-owners", action="store_true",
                             help="mail each guest's owner at maintenance.notice_lead_times before the reboot "
                                  "and afterwards with the measured downtime")
    maintenance.add_argument("--json", action="store_true", help="print JSON")
    maintenance.add_argument("--state-dir", metavar="DIR", help="where the journals live")

    md_event = sub.add_parser(
        "md-event", help="record an event from mdadm's monitor (mdadm.conf PROGRAM); it sends no mail of its own",
        description="mdadm --monitor runs PROGRAM EVENT ARRAY [MEMBER] for every event. The Ansible role points "
                    "PROGRAM here and removes MAILADDR, so each failure is mailed once, by the daemon, which sees "
                    "the same change in /proc/mdstat. The event is kept in the audit log (hostagent log).")
    md_event.add_argument("event", help="mdadm's event name: Fail, DegradedArray, RebuildFinished, TestMessage, ...")
    md_event.add_argument("array", help="the array as mdadm names it: /dev/md0 or /dev/md/name")
    md_event.add_argument("member", nargs="?", help="the member device, for events about one (/dev/sdb1)")
    md_event.add_argument("--json", action="store_true", help="print the audit record as JSON")
    md_event.add_argument("--state-dir", metavar="DIR", help="where the audit log is (default agent.state_dir)")

    hook = sub.add_parser(
        "libvirt-hook", help="libvirt's qemu and libxl hook: refuse guest starts while a maintenance saves "
                             "this host's guests or reboots it",
        description="libvirtd runs /etc/libvirt/hooks/qemu.d/hostagent (libxl.d for its Xen driver) for every "
                    "operation on every domain; the script the Ansible role installs passes 'prepare begin', the "
                    "step before any start, here. Exit 10 refuses the start (the script exits 1 then, and 0 for "
                    "any other status), with the reason on stderr (libvirt passes it on) and in the audit log; "
                    "exit 0 lets it through. It fails open: a journal it cannot "
                    "read lets the start through, and the maintenance's final listing saves a guest that started "
                    "anyway (docs/maintenance.md, I1).")
    hook.add_argument("object", help="the domain's name, as libvirt passes it")
    hook.add_argument("operation", help="libvirt's operation: prepare, start, started, stopped, release, ...")
    hook.add_argument("suboperation", help="libvirt's sub-operation: begin or end")
    hook.add_argument("extra", nargs="?", help="libvirt's extra argument (unused)")
    hook.add_argument("--state-dir", metavar="DIR", help="where the journals live (default agent.state_dir)")

    config_cmd = sub.add_parser("config", help="validate a configuration file")
    config_sub = config_cmd.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    config_check = config_sub.add_parser("check", help="load FILE as the agent would; exit 0 when it is valid")
    config_check.add_argument("file", metavar="FILE")

    rpc = sub.add_parser("rpc", help="forward one controller request to the daemon (an SSH forced command)",
                         description="Run from the RPC account's authorized_keys as command=\"hostagent rpc "
                                     "--allow ...\": the client's command line is read from SSH_ORIGINAL_COMMAND, "
                                     "never passed to a shell, validated, and forwarded to the root daemon's "
                                     "socket. Options given here (in authorized_keys) cannot be changed by the "
                                     "client. See docs/security.md.")
    rpc.add_argument("words", nargs="*", metavar="VERB",
                     help="the request when SSH_ORIGINAL_COMMAND is not set (run locally)")
    rpc.add_argument("--allow", metavar="VERBS",
                     help="comma-separated verbs or groups this key may use (default: version, report, status, "
                          "disk status, maintenance list|status|schedule|cancel; groups: read, maintenance)")
    rpc.add_argument("--socket", default="/run/hostagent/rpc.sock", metavar="PATH",
                     help="the daemon's RPC socket (agent.rpc_socket; default /run/hostagent/rpc.sock)")
    rpc.add_argument("--key", metavar="LABEL",
                     help="names this key in the audit log when sshd does not expose it (ExposeAuthInfo)")

    fleet = sub.add_parser("fleet", help="the SSH fleet controller: poll agents, alert, publish, roll maintenance")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", required=True, parser_class=_Parser)
    fleet_poll = fleet_sub.add_parser("poll", help="ask every host for its report now and store it")
    fleet_status = fleet_sub.add_parser("status", help="hosts with worst status, open findings, last seen, version")
    fleet_watch = fleet_sub.add_parser("watch", help="the controller daemon: poll every fleet.poll_interval")
    fleet_watch.add_argument("--once", action="store_true", help="one poll, alert and publish, then exit")
    fleet_maint = fleet_sub.add_parser("maintenance", help="schedule reboots with guest save/restore on hosts")
    fleet_maint.add_argument("targets", metavar="HOSTS|GROUP", help="comma-separated hosts or inventory groups")
    fleet_maint.add_argument("--reboot-at", required=True, metavar="WHEN",
                             help="ISO 8601, or 'YYYY-MM-DD HH:MM' in the controller's time zone")
    fleet_maint.add_argument("--reason", default="", help="for the journals and the owners' notices")
    fleet_maint.add_argument("--notify-owners", action="store_true", help="mail guest owners (see maintenance)")
    fleet_maint.add_argument("--dry-run", action="store_true", help="each host's preflight and plan only")
    fleet_maint.add_argument("--rolling", action="store_true",
                             help="host by host: wait for each batch to be done before the next; stop at a failure")
    fleet_maint.add_argument("--batch", type=int, default=1, metavar="N", help="hosts per batch (default 1)")
    fleet_maint.add_argument("--health-gate", action="store_true",
                             help="a batch counts as done only when its hosts report no CRITICAL/UNKNOWN after")
    _ack_parsers(fleet_sub, "the controller's state directory (default fleet.state_dir)")
    fleet_page = fleet_sub.add_parser("page", help="write the static HTML status page and fleet.json")
    fleet_page.add_argument("--out", required=True, metavar="DIR")
    fleet_metrics = fleet_sub.add_parser("metrics", help="print the fleet's Prometheus metrics")
    fleet_metrics.add_argument("--out", metavar="FILE", help="write a node_exporter textfile instead")
    fleet_dns = fleet_sub.add_parser("audit-dns", help="single points of failure in the DNS of domains and services")
    fleet_dns.add_argument("domains", nargs="*", metavar="DOMAIN", help="domains whose NS sets to audit")
    fleet_dns.add_argument("--service", action="append", default=[], metavar="HOST",
                           help="a service hostname (repeat); their zones are audited too, and all of them "
                                "under one domain or one provider is flagged")
    fleet_dns.add_argument("--nameserver", action="append", default=[], metavar="IP[:PORT]",
                           help="resolver to ask (repeat; default: /etc/resolv.conf)")
    fleet_dns.add_argument("--timeout", type=float, default=5.0, metavar="S", help="per lookup (default 5)")
    fleet_dns.add_argument("--network-prefix", default="16,32", metavar="V4,V6",
                           help="prefix lengths of 'one network' (default 16,32); one /24 or /48 is always flagged")
    fleet_dns.add_argument("--json", action="store_true", help="print JSON")
    for fleet_parser in (fleet_poll, fleet_status, fleet_watch, fleet_maint, fleet_page, fleet_metrics):
        fleet_parser.add_argument("--limit", metavar="GROUPS", help="only these hosts or groups (shard)")
        fleet_parser.add_argument("--json", action="store_true", help="print JSON")
    for fleet_parser in (fleet_poll, fleet_watch, fleet_maint):
        fleet_parser.add_argument("--accept-new", action="store_true",
                                  help="record the host key of a host contacted for the first time (check its "
                                       "printed fingerprint); a changed key is refused regardless")

    net = sub.add_parser("net", help="flood mitigations: blackhole routes and ExaBGP announcements, expiring")
    net_sub = net.add_subparsers(dest="net_command", required=True, parser_class=_Parser)
    net_list = net_sub.add_parser("mitigations", help="the active mitigations and when each expires")
    net_blackhole = net_sub.add_parser("blackhole", help="drop traffic from a source prefix for a while (ip route)")
    net_blackhole.add_argument("prefix", help="a source prefix: 203.0.113.0/24, 2001:db8:1::/48")
    net_announce = net_sub.add_parser("announce", help="announce an attacked address with community 65535:666 "
                                                       "(RFC 7999) through the ExaBGP pipe")
    net_announce.add_argument("address", help="the attacked address (a /32 or /128)")
    for parser_ in (net_blackhole, net_announce):
        parser_.add_argument("--ttl", type=float, metavar="S",
                             help="seconds until it is removed (default checks.net.mitigation_ttl)")
        parser_.add_argument("--reason", default="", help="recorded in the list and the audit log")
    net_withdraw = net_sub.add_parser("withdraw", help="remove one mitigation before it expires")
    net_withdraw.add_argument("id", help="as listed: blackhole:203.0.113.0/24, announce:198.51.100.7/32")
    net_expire = net_sub.add_parser("expire", help="remove every expired mitigation (the daemon does this each cycle)")
    for parser_ in (net_blackhole, net_announce, net_withdraw, net_expire):
        parser_.add_argument("--apply", action="store_true", help="make the change (default: dry run, print it)")
    for parser_ in (net_list, net_blackhole, net_announce, net_withdraw, net_expire):
        parser_.add_argument("--state-dir", metavar="DIR", help="where the list and the audit log live "
                                                               "(default agent.state_dir)")
        parser_.add_argument("--json", action="store_true", help="print JSON")

    collect = sub.add_parser("collect", help="capture what the checks read into a snapshot directory")
    collect.add_argument("--out", required=True, metavar="DIR", help="new or empty directory for the snapshot")
    collect.add_argument("--root", default="/", metavar="DIR", help="collect from this root (default /)")
    from hostagent.clidoc import add_epilogs

    add_epilogs(parser)
    return parser


def _ack_parsers(sub: Any, where: str) -> None:
    """ack, unack and acks, for ``alert`` on a host and ``fleet`` on the controller (whose subjects are
    HOST/SUBJECT)."""
    ack = sub.add_parser("ack", help="acknowledge an open alert: no reminders until it expires; a worse severity "
                                     "or its resolution is still mailed")
    ack.add_argument("code", help="the finding's code: md.degraded")
    ack.add_argument("subject", help="its subject as alerted: md0 (on the controller: hv2/md0)")
    ack.add_argument("--until", default="24h", metavar="WHEN",
                     help="a span (90m, 8h, 3d, 1w) or a local time (2026-12-05 08:00); default 24h, at most 30 days")
    ack.add_argument("--comment", default="", metavar="TEXT", help="who is on it and why, shown with the alert")
    ack.add_argument("--json", action="store_true", help="print JSON")
    ack.add_argument("--state-dir", metavar="DIR", help=where)
    unack = sub.add_parser("unack", help="remove an ack: reminders resume")
    unack.add_argument("code")
    unack.add_argument("subject")
    unack.add_argument("--state-dir", metavar="DIR", help=where)
    listed = sub.add_parser("acks", help="the acknowledged alerts and when each ack expires")
    listed.add_argument("--json", action="store_true", help="print JSON")
    listed.add_argument("--state-dir", metavar="DIR", help=where)


def _acks(args: argparse.Namespace, directory: str) -> int:
    from pathlib import Path

    from hostagent.commands import acks

    verb = args.alert_command if args.command == "alert" else args.fleet_command
    if verb == "ack":
        return acks.acknowledge(Path(directory), args.code, args.subject, args.until, args.comment, args.json)
    if verb == "unack":
        return acks.unacknowledge(Path(directory), args.code, args.subject)
    return acks.list_acks(Path(directory), args.json)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "collect":
            return _collect(args)
        if args.command == "disk":
            return _disk(args)
        if args.command == "boot":
            return _boot(args)
        if args.command == "watch":
            from hostagent.agent import watch

            return watch(args.config, args.root, args.state_dir, args.once)
        if args.command == "alert" and args.alert_command in ("ack", "unack", "acks"):
            from hostagent.config import load_config

            return _acks(args, args.state_dir or load_config(args.config).agent.state_dir)
        if args.command == "fleet" and args.fleet_command in ("ack", "unack", "acks"):
            from hostagent.config import load_config

            return _acks(args, args.state_dir or load_config(args.config).fleet.state_dir)
        if args.command == "md-event":
            from pathlib import Path

            from hostagent.commands import mdadm_event
            from hostagent.config import load_config

            state_dir = args.state_dir or load_config(args.config).agent.state_dir
            return mdadm_event.record(Path(state_dir), args.event, args.array, args.member, args.json)
        if args.command == "libvirt-hook":
            from pathlib import Path

            from hostagent.maintenance import gate

            state_dir, reboot_wait = _hook_settings(args.config)
            return gate.main(Path(args.state_dir or state_dir), args.object, args.operation, args.suboperation,
                             reboot_wait)
        if args.command in ("status", "log", "alert"):
            from hostagent.commands import daemon_view

            return daemon_view.main(args)
        if args.command == "maintenance":
            return _maintenance(args)
        if args.command == "fleet":
            return _fleet(args)
        if args.command == "net":
            from hostagent.netcmd import main as net_main

            return net_main(args)
        if args.command == "config":
            from hostagent.config import check_on_host, load_config

            loaded = load_config(args.file)
            problems = check_on_host(loaded)
            if problems:
                raise ConfigError("\n".join(problems))
            print(f"{loaded.source}: valid")
            from hostagent.alerts.settings import silence

            silent = silence(loaded.alerts)
            if silent:  # valid, and still worth a loud word: a fresh install that mails nobody
                print(f"hostagent: WARNING: nobody is alerted: {silent}", file=sys.stderr)
            return 0
        if args.command == "rpc":
            from hostagent.rpc import main as rpc_main

            return rpc_main(args.socket, args.allow, args.key, args.words)
    except HostagentError as err:
        print(f"hostagent: {err}", file=sys.stderr)
        return EXIT_UNKNOWN
    except KeyboardInterrupt:
        print("hostagent: interrupted", file=sys.stderr)
        return EXIT_UNKNOWN
    raise AssertionError(f"unhandled command {args.command}")


def _hook_settings(config_path: str | None) -> tuple[str, float]:
    """agent.state_dir and maintenance.reboot_wait, or their defaults when the configuration cannot be read:
    libvirt's hook fails open (hostagent.maintenance.gate), and a broken configuration must not refuse
    every guest start."""
    from hostagent.config import AgentConfig, MaintenanceConfig, load_config

    try:
        config = load_config(config_path)
        return config.agent.state_dir, config.maintenance.reboot_wait
    except HostagentError as err:
        print(f"hostagent: {err}; looking in {AgentConfig().state_dir}", file=sys.stderr)
        return AgentConfig().state_dir, MaintenanceConfig().reboot_wait


def md_event_main() -> int:
    """``hostagent-md-event EVENT ARRAY [MEMBER]``: mdadm.conf's PROGRAM, which takes no arguments of its own."""
    return main(["md-event", *sys.argv[1:]])


def _check(args: argparse.Namespace) -> int:
    from hostagent.config import load_config
    from hostagent.host import Host
    from hostagent.output import render_json, render_prom, render_text, write_atomic
    from hostagent.runner import run_checks

    config = load_config(args.config)
    if not _is_dir(args.root):
        raise HostagentError(f"--root {args.root}: not a directory")
    host = Host(args.root, command_timeout=config.agent.command_timeout)
    only = [c.strip() for c in args.only.split(",") if c.strip()] if args.only else None
    if args.act and host.is_snapshot:
        raise HostagentError("--act changes the host: it cannot be used with a snapshot --root")
    state = _state(host, config, args.state_dir)
    report = run_checks(host, config, only, state=state)
    if args.act:
        from hostagent.actions import AuditLog
        from hostagent.commands.remediate import act

        report = act(host, report, config, AuditLog.configured(state.directory, config.agent))
    prom = args.prom or config.agent.prom_file
    if prom:
        try:
            write_atomic(prom, render_prom(report))
        except OSError as err:
            raise HostagentError(f"--prom {prom}: cannot write: {err.strerror or err}") from None
    from hostagent.output import use_colour

    sys.stdout.write(render_json(report) if args.json else render_text(report, use_colour(sys.stdout)))
    return report.exit_code


def _collect(args: argparse.Namespace) -> int:
    from hostagent.collect import collect
    from hostagent.config import load_config

    config = load_config(args.config)
    if not _is_dir(args.root):
        raise HostagentError(f"--root {args.root}: not a directory")
    print(f"collecting from {args.root} into {args.out} ...", file=sys.stderr)
    report = collect(args.out, config, root=args.root)
    for result in report.results:
        state = f"failed: {result.error}" if result.error else result.status.label
        print(f"  {result.name}: {state} ({result.duration_ms:.1f} ms)", file=sys.stderr)
    print(f"snapshot written to {args.out}; replay with: hostagent check --root {args.out}")
    return 0


def _disk(args: argparse.Namespace) -> int:
    import json

    from hostagent.config import load_config
    from hostagent.context import CheckContext
    from hostagent.diskcmd import disk_status, render_status, timeout_mismatches
    from hostagent.host import Host

    config = load_config(args.config)
    if not _is_dir(args.root):
        raise HostagentError(f"--root {args.root}: not a directory")
    host = Host(args.root, command_timeout=config.agent.command_timeout)
    state = _state(host, config, args.state_dir)
    ctx = CheckContext.for_host(host, state, config.disks.include, config.disks.exclude)
    if args.disk_command == "fail":
        return _disk_fail(args, host, config)
    if args.disk_command in ("replace", "locate"):
        return _disk_replace(args, host, config)
    if args.disk_command == "status":
        rows = disk_status(ctx, config)
        sys.stdout.write(json.dumps(rows, indent=2) + "\n" if args.json else render_status(rows))
        return 0
    return _repair(args, ctx, config, "disk.tune", lambda c: timeout_mismatches(c, config),
                   config.checks.erc.timeout,
                   "nothing to tune: every member disk's error recovery fits the kernel's timeout",
                   ("erc", "no ATA or SAS disk holds a member of a redundant array"))


def _repair(args: argparse.Namespace, ctx: Any, config: Any, action: str, check: Any, timeout: float,
            nothing: str, empty: tuple[str, str]) -> int:
    """``empty``: (the check's name, why it may have examined nothing), so that an empty host never
    reads as one where everything is in order."""
    from hostagent.actions import AuditLog
    from hostagent.repair import render, repair, succeeded

    audit_dir = args.state_dir or (None if ctx.host.is_snapshot else config.agent.state_dir)
    audit = AuditLog.configured(audit_dir, config.agent)
    outcomes, remaining = repair(ctx, action, check, apply=args.apply, audit=audit, timeout=timeout)
    name, why = empty
    items, unit = ctx.examined.get(name, (None, ""))
    if items == 0:
        nothing = f"nothing to check (0 {unit}): {why}"
    sys.stdout.write(render(outcomes, remaining, args.apply, args.json, nothing, (items, unit)))
    return 0 if succeeded(outcomes, remaining) else 1


def _disk_replace(args: argparse.Namespace, host: Any, config: Any) -> int:
    import json

    from hostagent.actions import AuditLog
    from hostagent.commands.disk_replace import locate, replace
    from hostagent.progress import ProgressBoard

    state_dir = args.state_dir or config.agent.state_dir
    if args.disk_command == "locate":
        audit = AuditLog.configured(state_dir, config.agent)
        where, outcomes, how = locate(host, args.disk, apply=args.apply, off=args.off, audit=audit,
                                      timeout=config.agent.command_timeout)
        if args.json:
            print(json.dumps({"disk": where.__dict__, "led": how, "steps": [o.to_json() for o in outcomes]},
                             indent=2))
        else:
            print(where.describe())
            for outcome in outcomes:
                mark = "applied" if outcome.applied else "dry run"
                failed = "" if outcome.ok else f"  FAILED: {outcome.error or outcome.output}"
                print(f"[{mark}] $ {' '.join(outcome.step.argv)}{failed}")
            if not outcomes:
                print(how)
        return 0 if all(o.ok for o in outcomes) else 1
    if args.read_test_mib < 0:
        raise HostagentError(f"--read-test-mib {args.read_test_mib}: give 0 (no read test) or more MiB")
    out = sys.stderr if args.json else sys.stdout
    board = ProgressBoard(out, every=10.0)
    try:
        result = replace(host, config, args.old, args.new, apply=args.apply, wipe=args.wipe,
                         read_mib=args.read_test_mib, selftest=not args.no_selftest, state_dir=state_dir,
                         say=lambda line: print(line, file=out, flush=True), progress=board.update,
                         start_over=args.start_over)
    finally:
        board.close()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0 if result.error is None else 1
    if result.vetting is not None:
        print(f"vetting /dev/{result.plan.new.name}: {result.vetting.verdict.upper()}")
        for line in result.vetting.evidence:
            print(f"  {line}")
    for outcome in result.steps:
        mark = "applied" if outcome.applied else "dry run"
        failed = "" if outcome.ok else f"  FAILED: {outcome.error or outcome.output}"
        print(f"[{mark}] {outcome.step.what}\n    $ {' '.join(outcome.step.argv)}{failed}")
    if result.error:
        print(f"stopped: {result.error}")
        return 1
    if not args.apply:
        print("dry run: nothing was changed; run again with --apply")
        return 0
    print("done: every array has its new member in sync")
    for finding in result.final:
        print(f"after: {finding['severity']} {finding['code']} {finding['subject']}: {finding['summary']}")
    if not result.final:
        print("after: every check is clean")
    return 0


def _disk_fail(args: argparse.Namespace, host: Any, config: Any) -> int:
    from hostagent.actions import AuditLog
    from hostagent.actions.hung import force_fail
    from hostagent.inventory import read_arrays
    from hostagent.names import device_argument

    if args.member.removeprefix("/dev/").startswith("mapper/"):
        raise HostagentError(f"{args.member}: give the kernel name (dm-N) that md lists")
    member = device_argument(args.member)
    if args.array:
        device_argument(args.array)
    holders = [a.name for a in read_arrays(host) if any(m.device == member for m in a.members)]
    if args.array:
        holders = [a for a in holders if a == args.array]
    if len(holders) != 1:
        where = f"in {args.array}" if args.array else "in any array"
        raise HostagentError(f"{member} is not a member {where}" if not holders
                             else f"{member} is in {', '.join(holders)}: name one with --array")
    audit = AuditLog.configured(args.state_dir or (None if host.is_snapshot else config.agent.state_dir),
                                config.agent)
    outcomes, notes = force_fail(host, holders[0], member, apply=args.apply, audit=audit,
                                 timeout=config.agent.command_timeout, unblock_after=config.checks.hung.unblock_after)
    for outcome in outcomes:
        mark = "applied" if outcome.applied else "dry run"
        status = "" if outcome.ok else f"  FAILED: {outcome.error or outcome.output or outcome.returncode}"
        print(f"[{mark}] $ {' '.join(outcome.step.argv)}{status}")
    for note in notes:
        print(f"note: {note}")
    if not args.apply:
        print("dry run: nothing was changed; run again with --apply to force the member out")
    return 0 if all(o.ok for o in outcomes) else 1


def _maintenance(args: argparse.Namespace) -> int:
    from hostagent.config import load_config
    from hostagent.maintenance import cli as maintenance

    config = load_config(args.config)
    if args.action in ("list", "status"):
        rows = maintenance.listing(config, args.state_dir)
        if args.action == "status":
            rows = [r for r in rows if r["phase"] not in ("done", "failed", "cancelled", "missed", "unreadable")][:1]
        status = args.action == "status"
        sys.stdout.write(maintenance.render(rows) if args.json else maintenance.render_rows(rows, status))
        return 0
    if args.action == "run-now":
        document = maintenance.run_now(config, args.config, args.state_dir)
        sys.stdout.write(maintenance.render(document) if args.json
                         else f"maintenance {document['id']}: {document['phase']}"
                         + (f" ({document['error']})" if document["error"] else "") + "\n")
        return 0 if document["phase"] in ("rebooting", "done") else 1
    if args.action == "cancel":
        document = maintenance.cancel(config, args.state_dir)
        sys.stdout.write(maintenance.render(document) if args.json
                         else f"maintenance {document['id']} cancelled: {document['note']}\n")
        return 0
    if not args.reboot_at:
        raise HostagentError("maintenance needs --reboot-at WHEN")
    document, result = maintenance.schedule(config, args.state_dir, args.reboot_at, args.reason,
                                            dry_run=args.dry_run, force=args.force,
                                            force_unbootable=args.force_unbootable,
                                            notify_owners=args.notify_owners)
    if args.json:
        sys.stdout.write(maintenance.render(document))
    else:
        print(f"reboot at {document['reboot_at']}" + (" (dry run: nothing scheduled)" if args.dry_run else ""))
        for line in result.lines():
            print(f"  {line}")
        if "notices" in document:
            leads = ", ".join(f"{lead / 3600:g} h" for lead in document["notices"]["lead_times_s"])
            print(f"  owners are mailed {leads} before and after the reboot")
            for name in document["notices"]["guests_without_owner"]:
                print(f"  guest {name} has no owner (metadata or maintenance.owners): no notice for it")
        if "id" in document:
            print(f"scheduled as maintenance {document['id']}")
    return 0


def _fleet(args: argparse.Namespace) -> int:
    from hostagent.config import load_config
    from hostagent.fleet import cli as fleet
    from hostagent.fleet.controller import Controller, render_status
    from hostagent.fleet.inventory import select
    from hostagent.fleet.publish import metrics, page_extra, write_page
    from hostagent.output import write_atomic

    if args.fleet_command == "audit-dns":
        return _audit_dns(args)
    config = load_config(args.config)
    fleet.refuse_foreign_state(config.fleet.state_dir)
    limit = [p.strip() for p in (args.limit or "").split(",") if p.strip()]
    if args.fleet_command == "watch":
        return fleet.watch(config, once=args.once, accept_new=args.accept_new)
    controller = Controller(config, accept_new=getattr(args, "accept_new", False), limit=limit)
    try:
        if args.fleet_command == "poll":
            results = controller.poll()
            for line in controller.transport.accepted:
                print(f"accepted new host key: {line}", file=sys.stderr)
            if args.json:
                sys.stdout.write(fleet.render([r.__dict__ for r in results]))
            else:
                for result in results:
                    print(f"{result.host:<20} {'ok' if result.ok else 'FAILED':<7} {result.seconds:6.2f} s  "
                          f"{result.status or result.error}")
            return 0 if all(r.ok for r in results) else 1
        rows = [r for r in fleet.rows(controller) if r["host"] in {h.name for h in controller.hosts}]
        now = time.time()
        if args.fleet_command == "status":
            sys.stdout.write(fleet.render(rows) if args.json else render_status(rows))
            return 0
        if args.fleet_command == "page":
            span = config.fleet.retention_days * 86400
            written = write_page(args.out, rows, now, page_extra(controller.store, rows, now, span), span)
            print("\n".join(str(p) for p in written))
            return 0
        if args.fleet_command == "metrics":
            if args.out:
                write_atomic(args.out, metrics(rows, now))
            else:
                sys.stdout.write(metrics(rows, now))
            return 0
        targets = select(controller.hosts, [t.strip() for t in args.targets.split(",")])
        say = (lambda line: print(line, file=sys.stderr)) if args.json else print
        outcome = fleet.maintenance(controller, targets, args.reboot_at, reason=args.reason,
                                    notify_owners=args.notify_owners, dry_run=args.dry_run,
                                    rolling=args.rolling, batch=args.batch, health_gate=args.health_gate, say=say)
        if args.json:
            sys.stdout.write(fleet.render(outcome))
        elif outcome["stopped"]:
            print(f"stopped: {outcome['stopped']}")
        return 1 if outcome["stopped"] else 0
    finally:
        controller.close()


def _audit_dns(args: argparse.Namespace) -> int:
    import json

    from hostagent.fleet.dnsaudit import audit, render
    from hostagent.model import Severity

    if not args.domains and not args.service:
        raise HostagentError("audit-dns: name at least one DOMAIN or --service HOST")
    try:
        v4, v6 = (int(p) for p in args.network_prefix.split(","))
    except ValueError:
        raise HostagentError(f"--network-prefix {args.network_prefix}: expected V4,V6 lengths, e.g. 16,32") from None
    result = audit(args.domains, args.service, nameservers=args.nameserver, timeout=args.timeout,
                   network_prefix=(v4, v6))
    sys.stdout.write(json.dumps(result, indent=2) + "\n" if args.json else render(result))
    return Severity[result["status"]].exit_code


def _boot(args: argparse.Namespace) -> int:
    from checks import boot
    from hostagent.config import load_config
    from hostagent.context import CheckContext
    from hostagent.host import Host

    config = load_config(args.config)
    if not _is_dir(args.root):
        raise HostagentError(f"--root {args.root}: not a directory")
    host = Host(args.root, command_timeout=config.agent.command_timeout)
    ctx = CheckContext.for_host(host, _state(host, config, args.state_dir), config.disks.include,
                                config.disks.exclude)
    return _repair(args, ctx, config, "boot.repair", lambda c: boot.run(c, config.checks.boot),
                   config.agent.command_timeout * 10,
                   "nothing to repair: every member disk of the boot arrays can boot",
                   ("boot", "no md array holds /, /boot or /boot/efi, and checks.boot.arrays names none"))


def _state(host: Any, config: Any, state_dir: str | None) -> Any:
    """The state store; an unusable default one degrades to memory with a warning, not a failure."""
    from hostagent.runner import open_state
    from hostagent.state import StateStore

    try:
        return open_state(host, config, state_dir)
    except HostagentError as err:
        if state_dir is not None:
            raise
        print(f"hostagent: warning: {err}; growth since the last check is not tracked", file=sys.stderr)
        return StateStore(None)


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)
