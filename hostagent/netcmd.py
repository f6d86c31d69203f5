"""``hostagent net``: flood mitigations by hand (blackhole, announce, withdraw, expire) and the list."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from hostagent.actions import AuditLog
from hostagent.actions.net import Mitigation, MitigationStore, Result, announce, blackhole, expire, withdraw
from hostagent.config import load_config
from hostagent.host import Host


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    net = config.checks.net
    directory = args.state_dir or config.agent.state_dir
    store = MitigationStore(directory)
    audit = AuditLog.configured(directory, config.agent)
    host = Host("/", command_timeout=config.agent.command_timeout)
    timeout = config.agent.command_timeout
    if args.net_command == "mitigations":
        active = store.active()
        if args.json:
            print(json.dumps({"mitigations": [m.to_json() for m in active]}, indent=2))
        else:
            print(render_active(active))
        return 0
    if args.net_command == "blackhole":
        results = [blackhole(host, args.prefix, config=net, store=store, audit=audit, apply=args.apply, ttl=args.ttl,
                             reason=args.reason, timeout=timeout)]
    elif args.net_command == "announce":
        results = [announce(host, args.address, config=net, store=store, audit=audit, apply=args.apply, ttl=args.ttl,
                            reason=args.reason)]
    elif args.net_command == "withdraw":
        results = [withdraw(host, args.id, config=net, store=store, audit=audit, apply=args.apply, timeout=timeout)]
    else:
        results = expire(host, config=net, store=store, audit=audit, apply=args.apply, timeout=timeout)
    sys.stdout.write(render_results(results, args.apply, args.json))
    return 0 if all(r.error is None for r in results) else 1


def _when(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def render_active(active: list[Mitigation]) -> str:
    if not active:
        return "no active mitigations"
    lines = [f"{'ID':<32} {'EXPIRES':<24} REASON"]
    lines += [f"{m.id:<32} {_when(m.expires):<24} {m.reason}" for m in active]
    return "\n".join(lines)


def render_results(results: list[Result], apply: bool, as_json: bool) -> str:
    if as_json:
        return json.dumps({"applied": apply, "results": [r.to_json() for r in results]}, indent=2) + "\n"
    if not results:
        return "nothing has expired\n"
    lines = []
    for result in results:
        mark = "applied" if apply else "dry run"
        for command in result.commands:
            lines.append(f"[{mark}] {command}" + (f"  FAILED: {result.error}" if result.error else ""))
        if apply and result.error is None:
            lines.append(f"  {result.mitigation.id} until {_when(result.mitigation.expires)}")
    if not apply:
        lines.append("dry run: nothing was changed; run again with --apply")
    return "\n".join(lines) + "\n"
