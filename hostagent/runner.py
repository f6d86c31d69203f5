"""Run the enabled checks; one failing check never stops the others.

After nagiosplugin: any exception while probing becomes an UNKNOWN finding carrying the
message, and each check's duration is recorded whatever happened.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from types import ModuleType

import checks
from hostagent.config import Config
from hostagent.context import CheckContext
from hostagent.errors import HostagentError
from hostagent.host import Host
from hostagent.model import CheckResult, Finding, Report, Severity
from hostagent.state import StateStore


def enabled_checks(config: Config, only: Sequence[str] | None = None) -> list[ModuleType]:
    """The check modules to run: the enabled ones, or exactly those named in ``only``."""
    if only:
        unknown = sorted(set(only) - set(checks.BY_NAME))
        if unknown:
            raise HostagentError(f"unknown check(s): {', '.join(unknown)} (known: {', '.join(checks.BY_NAME)})")
        return [m for m in checks.ALL if m.NAME in only]
    return [m for m in checks.ALL if config.check_config(m.NAME).enabled]


def run_check(module: ModuleType, ctx: CheckContext, config: Config) -> CheckResult:
    name = module.NAME
    start = time.perf_counter()
    error = None
    try:
        findings = tuple(module.run(ctx, getattr(config.checks, name, None) or module.Config()))
    except HostagentError as err:
        error = str(err)
    except Exception as err:  # a bug must not blank the other checks
        error = f"internal error: {type(err).__name__}: {err} (at {innermost_frame(err)})"
    duration_ms = (time.perf_counter() - start) * 1000
    if error is not None:
        findings = (Finding("check.failed", name, name, Severity.UNKNOWN, f"check {name} could not run: {error}"),)
    items, unit = ctx.examined.get(name, (None, ""))
    return CheckResult(name, findings, duration_ms, error, time.time(), None if error else items, unit,
                       ctx.readings.get(name, {}))


def open_state(host: Host, config: Config, state_dir: str | None) -> StateStore:
    """The state store: --state-dir, else the configured one on a live host; in memory for a snapshot."""
    if state_dir is not None:
        return StateStore(state_dir)
    if host.is_snapshot:
        return StateStore(None)
    return StateStore(config.agent.state_dir)


def run_checks(
    host: Host,
    config: Config,
    only: Sequence[str] | None = None,
    modules: Sequence[ModuleType] | None = None,
    state: StateStore | None = None,
) -> Report:
    ctx = CheckContext.for_host(host, state, config.disks.include, config.disks.exclude)
    selected = enabled_checks(config, only) if modules is None else modules
    results = tuple(run_check(module, ctx, config) for module in selected)
    return Report(
        hostname=host.hostname(),
        root=str(host.root),
        generated_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        results=results,
        inventory=ctx.inventory.to_json(),
    )


def innermost_frame(err: BaseException) -> str:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return "unknown place" if tb is None else f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
