"""Health checks: one module per check, each with NAME, Config and run(ctx, config)."""

from __future__ import annotations

from types import ModuleType

from checks import md

ALL: tuple[ModuleType, ...] = (md,)
BY_NAME = {module.NAME: module for module in ALL}
