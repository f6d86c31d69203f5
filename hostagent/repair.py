"""Turn findings' remedies into steps, show or apply them, and re-check afterwards.

Shared by ``hostagent disk tune`` and ``hostagent boot repair``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from hostagent.actions import AuditLog, Outcome, Step, perform
from hostagent.context import CheckContext
from hostagent.model import Finding


def steps_from(action: str, findings: Iterable[Finding]) -> list[Step]:
    return [Step(action, f.subject, f.remedy.what, argv)
            for f in findings if f.remedy is not None for argv in f.remedy.commands]


def repair(ctx: CheckContext, action: str, check: Callable[[CheckContext], list[Finding]], *, apply: bool,
           audit: AuditLog, timeout: float) -> tuple[list[Outcome], list[Finding]]:
    """Show (or apply) the remedies of ``check``'s findings; after applying, what the check still finds."""
    outcomes = perform(ctx.host, steps_from(action, check(ctx)), apply=apply, audit=audit, timeout=timeout)
    if not apply:
        return outcomes, []
    fresh = CheckContext.for_host(ctx.host, ctx.state, ctx.inventory.include, ctx.inventory.exclude)
    return outcomes, check(fresh)


def render(outcomes: list[Outcome], remaining: list[Finding], apply: bool, as_json: bool, nothing: str,
           examined: tuple[int | None, str] = (None, "")) -> str:
    if as_json:
        document: dict[str, Any] = {"applied": apply, "examined": {"items": examined[0], "unit": examined[1]},
                                    "steps": [o.to_json() for o in outcomes],
                                    "remaining": [f.to_json() for f in remaining]}
        return json.dumps(document, indent=2) + "\n"
    lines = [] if outcomes else [nothing]
    for outcome in outcomes:
        mark = "applied" if outcome.applied else "dry run"
        status = "" if outcome.ok else f"  FAILED: {outcome.error or outcome.output or outcome.returncode}"
        command = " ".join(outcome.step.argv)
        lines.append(f"[{mark}] {outcome.step.subject}: {outcome.step.what}\n    $ {command}{status}")
    if outcomes and not apply:
        lines.append("dry run: nothing was changed; run again with --apply to make these changes")
    if apply:
        lines += [f"after: {f.severity.name} {f.code} {f.subject}: {f.summary}" for f in remaining] or [
            "after: the check finds nothing left to repair"]
    return "\n".join(lines) + "\n"


def succeeded(outcomes: list[Outcome], remaining: list[Finding]) -> bool:
    return all(o.ok for o in outcomes) and not remaining
