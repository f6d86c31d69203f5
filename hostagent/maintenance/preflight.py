"""Preflight: may this host be rebooted now, and what happens to each guest.

Host problems can be overridden with --force; a member that cannot boot only with
--force-unbootable: never reboot into a host that cannot boot.  A hypervisor that cannot be
reached is overridden by nothing: without the list of guests, a reboot could take any of them down.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from checks import boot, hung, md
from hostagent.config import Config
from hostagent.context import CheckContext
from hostagent.errors import HostagentError
from hostagent.hypervisor import GuestInfo, Hypervisor
from hostagent.maintenance import coexist
from hostagent.maintenance.coexist import Coexistence
from hostagent.records import field, record
from hostagent.sources.mounts import boot_arrays

ARRAY_BLOCKERS = ("md.degraded", "md.recovering", "md.failed", "md.inactive")
SAVE_MARGIN = 1.1


@record(frozen=True)
class GuestPlan:
    name: str
    memory_kib: int
    action: str  # "save", or why not
    owner: str | None = None
    running: bool = True


@record(frozen=True)
class Preflight:
    host_problems: tuple[str, ...] = ()
    boot_problems: tuple[str, ...] = ()
    guests: tuple[GuestPlan, ...] = field(default_factory=tuple)
    hypervisor_problem: str | None = None  # the guests cannot be listed: no override
    coexistence: tuple[Coexistence, ...] = ()  # services that also act on guests at the reboot (warnings)

    def allowed(self, force: bool = False, force_unbootable: bool = False) -> bool:
        return (self.hypervisor_problem is None and (not self.host_problems or force)
                and (not self.boot_problems or force_unbootable))

    def lines(self) -> list[str]:
        out = [f"hypervisor: {self.hypervisor_problem} (no override: the guests cannot be seen)"
               ] if self.hypervisor_problem else []
        out += [f"host: {p}" for p in self.host_problems] + [f"boot: {p}" for p in self.boot_problems]
        out += [f"guest {g.name} ({g.memory_kib // 1024} MiB): {g.action}" for g in self.guests]
        out += [f"warning: {c.line()}" for c in self.coexistence]
        return out


def run_preflight(ctx: CheckContext, config: Config, connect: Callable[[], Hypervisor], save_dir: str) -> Preflight:
    problems: list[str] = []
    critical = set(boot_arrays(ctx.host)) | set(config.checks.boot.arrays)
    for finding in md.run(ctx, config.checks.md):
        if finding.code in ARRAY_BLOCKERS and finding.subject.split("/")[0] in critical:
            problems.append(f"{finding.code}: {finding.summary}")
    for finding in hung.run(ctx, config.checks.hung):
        problems.append(f"{finding.code}: {finding.summary}")
    boot_problems = tuple(f"{f.code}: {f.summary}" for f in boot.blockers(ctx, config.checks.boot))
    try:
        guests = connect().guests()
    except HostagentError as err:
        return Preflight(tuple(problems), boot_problems, hypervisor_problem=str(err))
    plans = [plan(g) for g in guests]
    needed = sum(g.memory_kib for g in guests if g.running) * 1024 * SAVE_MARGIN
    try:  # a save directory not made yet is made by the first save, on the file system of its parent
        stat = os.statvfs(_existing(str(ctx.host.path(save_dir))))
        free = stat.f_bavail * stat.f_frsize
        if free < needed:
            problems.append(f"{save_dir} has {free / 2**30:.1f} GiB free; the running guests need "
                            f"{needed / 2**30:.1f} GiB ({SAVE_MARGIN:g} x their memory)")
    except OSError as err:
        problems.append(f"{save_dir}: {err.strerror or err}")
    problems += [f"guest {p.name}: {p.action}" for p in plans if p.action.startswith("cannot")]
    try:
        others = tuple(coexist.detect(ctx.host, guests))
    except HostagentError as err:
        others = (coexist.Coexistence("coexistence", f"cannot tell which services act on guests: {err}",
                                      "check libvirt-guests, libvirt autostart and xendomains by hand"),)
    return Preflight(tuple(problems), boot_problems, tuple(plans), coexistence=others)


def _existing(path: str) -> str:
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def plan(guest: GuestInfo) -> GuestPlan:
    if not guest.running:
        action = "not running: left alone"
    elif not guest.persistent:
        action = "cannot save: transient domain (no definition to restore into)"
    elif guest.unsaveable:
        action = f"cannot save: {guest.unsaveable}"
    else:
        action = "save"
    return GuestPlan(guest.name, guest.memory_kib, action, guest.owner, guest.running)
