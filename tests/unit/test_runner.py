"""One failing check never stops the others; its error and duration are reported."""

from __future__ import annotations

import types
from dataclasses import dataclass

from checks import md
from hostagent.config import Config
from hostagent.context import CheckContext
from hostagent.errors import ProbeUnavailable
from hostagent.host import Host
from hostagent.model import Finding, Severity
from hostagent.runner import run_checks
from tests.helpers import EXAMPLES


@dataclass(frozen=True)
class _Config:
    enabled: bool = True


def _check_module(name: str, exc: Exception) -> types.ModuleType:
    module = types.ModuleType(name)

    def run(ctx: CheckContext, config: _Config) -> list[Finding]:
        raise exc

    module.NAME = name  # type: ignore[attr-defined]
    module.Config = _Config  # type: ignore[attr-defined]
    module.run = run  # type: ignore[attr-defined]
    return module


def test_a_crashing_check_becomes_unknown_and_the_rest_still_run() -> None:
    broken = _check_module("broken", ZeroDivisionError("division by zero"))
    unavailable = _check_module("unavailable", ProbeUnavailable("smartctl: command not found"))
    report = run_checks(Host(EXAMPLES / "failed-member"), Config(), modules=[broken, md, unavailable])
    by_name = {r.name: r for r in report.results}
    assert by_name["broken"].status is Severity.UNKNOWN
    assert by_name["broken"].error is not None
    assert by_name["broken"].error.startswith("internal error: ZeroDivisionError: division by zero (at ")
    assert "test_runner.py:" in by_name["broken"].error
    assert by_name["unavailable"].error == "smartctl: command not found"
    assert by_name["md"].error is None
    assert {f.code for f in by_name["md"].findings} == {"md.degraded", "md.failed_member"}
    assert all(r.duration_ms >= 0 for r in report.results)
    # a CRITICAL finding is never masked by a check that could not run
    assert report.status is Severity.CRITICAL and report.exit_code == 2


def test_unknown_alone_exits_3() -> None:
    broken = _check_module("broken", ProbeUnavailable("nope"))
    report = run_checks(Host(EXAMPLES / "healthy-mirror"), Config(), modules=[broken, md])
    assert report.status is Severity.UNKNOWN and report.exit_code == 3
    assert report.findings[0].code == "check.failed"
    assert report.findings[0].subject == "broken"
