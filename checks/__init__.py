"""Health checks: one module per check, each with NAME, Config and run(ctx, config)."""

from __future__ import annotations

from types import ModuleType

from checks import boot, erc, hung, md, net, smart

ALL: tuple[ModuleType, ...] = (md, hung, smart, erc, boot, net)
BY_NAME = {module.NAME: module for module in ALL}
