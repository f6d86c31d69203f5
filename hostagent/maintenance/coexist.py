"""Other services that act on guests at shutdown and at boot, and would race our save or restore.

- **libvirt-guests** (``/etc/default/libvirt-guests``): at shutdown it suspends or shuts down the
  guests still running; with ``ON_BOOT=start`` it starts them at boot, perhaps before our restore.
- **libvirt autostart**: libvirtd starts every autostart guest at boot (from its managed save image,
  if it has one), including a guest that was stopped before the maintenance.
- **xendomains** (``/etc/default/xendomains``): saves every domain at shutdown
  (``XENDOMAINS_SAVE``), restores them at boot (``XENDOMAINS_RESTORE``) and starts those in
  ``XENDOMAINS_AUTO``.

The parsers are pure; ``detect`` reads the files under the host's root.  Each finding says what to
change; none blocks a maintenance, because the restore is idempotent: a guest already running is
recorded as restored by the service that got there first.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

from hostagent.host import Host
from hostagent.hypervisor import GuestInfo
from hostagent.records import record

LIBVIRT_GUESTS = "/etc/default/libvirt-guests"
LIBVIRT_GUESTS_ENABLED = "/etc/systemd/system/multi-user.target.wants/libvirt-guests.service"
XENDOMAINS = "/etc/default/xendomains"
XENDOMAINS_ENABLED = "/etc/systemd/system/multi-user.target.wants/xendomains.service"
# Debian's libvirt-guests.sh defaults, and Xen's xendomains defaults
LIBVIRT_GUESTS_DEFAULTS = {"ON_BOOT": "ignore", "ON_SHUTDOWN": "shutdown", "URIS": "default"}
XENDOMAINS_DEFAULTS = {"XENDOMAINS_SAVE": "/var/lib/xen/save", "XENDOMAINS_RESTORE": "true",
                       "XENDOMAINS_AUTO": "/etc/xen/auto"}


@record(frozen=True)
class Coexistence:
    service: str  # "libvirt-guests", "libvirt autostart", "xendomains"
    problem: str
    change: str
    guest: str | None = None  # the one guest concerned (autostart); None: every guest
    restores: bool = False  # it may start or restore guests at boot, before hostagent

    def line(self) -> str:
        return f"{self.service}: {self.problem}; {self.change}"


def parse_shell_defaults(text: str, defaults: dict[str, str]) -> dict[str, str]:
    """``KEY=value`` lines of an /etc/default file (comments, quotes and ``export`` handled); values not
    plain assignments are ignored, as a shell would source them only with their side effects."""
    values = dict(defaults)
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, rest = line.partition("=")
        if not sep or not key.isidentifier():
            continue
        try:
            words = shlex.split(rest, comments=True)
        except ValueError:
            continue
        values[key] = " ".join(words)
    return values


def libvirt_guests(values: dict[str, str], enabled: bool) -> list[Coexistence]:
    if not enabled:
        return []
    found = []
    if values.get("ON_BOOT") == "start":
        found.append(Coexistence("libvirt-guests", "ON_BOOT=start starts at boot the guests it stopped at "
                                 "shutdown, perhaps before hostagent restores them (reported as restored by "
                                 "libvirt-guests)", f"set ON_BOOT=ignore in {LIBVIRT_GUESTS}", restores=True))
    if values.get("ON_SHUTDOWN") == "shutdown":
        found.append(Coexistence("libvirt-guests", "ON_SHUTDOWN=shutdown shuts down at the reboot any guest "
                                 "hostagent could not save", f"set ON_SHUTDOWN=suspend in {LIBVIRT_GUESTS}, so "
                                 "such a guest is suspended and hostagent restores it from that image"))
    return found


def xendomains(values: dict[str, str], enabled: bool) -> list[Coexistence]:
    if not enabled:
        return []
    found = []
    if values.get("XENDOMAINS_SAVE"):
        found.append(Coexistence("xendomains", f"XENDOMAINS_SAVE={values['XENDOMAINS_SAVE']} saves every domain "
                                 "still running at shutdown", f'set XENDOMAINS_SAVE="" in {XENDOMAINS}'))
    if values.get("XENDOMAINS_RESTORE") == "true" or values.get("XENDOMAINS_AUTO"):
        found.append(Coexistence("xendomains", "it restores or starts domains at boot "
                                 "(XENDOMAINS_RESTORE, XENDOMAINS_AUTO), racing hostagent's restore",
                                 f'set XENDOMAINS_RESTORE=false and XENDOMAINS_AUTO="" in {XENDOMAINS}',
                                 restores=True))
    return found


def autostart(guests: Iterable[GuestInfo]) -> list[Coexistence]:
    found = []
    for guest in guests:
        if not guest.autostart:
            continue
        if guest.running:
            problem = f"{guest.name} has autostart on: libvirtd restores it at boot, perhaps before hostagent"
        else:
            problem = f"{guest.name} is stopped but has autostart on: libvirtd starts it at boot"
        found.append(Coexistence("libvirt autostart", problem, f"virsh autostart --disable {guest.name}",
                                 guest.name, restores=True))
    return found


def detect(host: Host, guests: Iterable[GuestInfo]) -> list[Coexistence]:
    """Every service on this host that would act on the guests at the reboot, with what to change."""
    found = libvirt_guests(parse_shell_defaults(host.read_optional(LIBVIRT_GUESTS) or "", LIBVIRT_GUESTS_DEFAULTS),
                           host.exists(LIBVIRT_GUESTS_ENABLED))
    found += xendomains(parse_shell_defaults(host.read_optional(XENDOMAINS) or "", XENDOMAINS_DEFAULTS),
                        host.exists(XENDOMAINS_ENABLED))
    return found + autostart(guests)


def restorers(found: Iterable[Coexistence]) -> dict[str, str]:
    """Guest name (``*``: any guest) -> the service that may restore it before hostagent (``restored_by``)."""
    who: dict[str, str] = {}
    for item in found:
        if item.restores:
            key = item.guest or "*"
            who[key] = f"{who[key]} or {item.service}" if key in who else item.service
    return who
