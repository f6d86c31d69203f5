"""Which hypervisor backend a host runs, and the maintenance settings that follow from it.

``maintenance.hypervisor = "auto"`` picks ``xl`` on a Xen dom0 (``/proc/xen/capabilities`` says
``control_d``), unless ``uri`` names libvirt's Xen driver (``xen:``): hosts that manage their
DomUs through libvirtd say so there.  Anywhere else it picks libvirt.  ``save_dir = ""`` takes
the backend's own directory (``DEFAULT_SAVE_DIRS``).
"""

from __future__ import annotations

from hostagent.config import MaintenanceConfig
from hostagent.errors import HostagentError
from hostagent.host import Host
from hostagent.hypervisor import Hypervisor
from hostagent.records import replace

CAPABILITIES = "/proc/xen/capabilities"
DEFAULT_SAVE_DIRS = {
    "xl": "/var/lib/xen/save",  # where Debian's xendomains saves too
    "libvirt-xen": "/var/lib/libvirt/libxl/save",
    "libvirt": "/var/lib/libvirt/qemu/save",  # libvirt's managed save directory (a kept image is linked there)
}


def is_xen_dom0(host: Host) -> bool:
    try:
        text = host.read_optional(CAPABILITIES)
    except (OSError, HostagentError):  # xenfs not mounted, or unreadable: not a dom0 we can drive
        return False
    return text is not None and "control_d" in text


def resolve(m: MaintenanceConfig, host: Host) -> MaintenanceConfig:
    """The settings with ``hypervisor`` decided (``xl`` or ``libvirt``) and ``save_dir`` filled in."""
    kind = m.hypervisor
    if kind == "auto":
        kind = "xl" if is_xen_dom0(host) and not m.uri.startswith("xen:") else "libvirt"
    save_dir = m.save_dir or DEFAULT_SAVE_DIRS["libvirt-xen" if kind == "libvirt" and m.uri.startswith("xen:")
                                               else kind]
    return replace(m, hypervisor=kind, save_dir=save_dir)


def describe(m: MaintenanceConfig) -> str:
    """Resolved settings as a journal records them: ``xl``, or ``libvirt URI``."""
    return "xl" if m.hypervisor == "xl" else f"libvirt {m.uri}"


def changed(planned: str | None, m: MaintenanceConfig) -> str | None:
    """Why a maintenance planned with ``planned`` must not go on with these settings, if it must not.
    Guests seen through another backend are not the planned ones: each would look stopped."""
    now = describe(m)
    if planned is None or planned == now:
        return None
    return (f"the guests were planned with {planned}, but the hypervisor is now {now} (on a dom0, is "
            "/proc/xen visible?)")


def connect(m: MaintenanceConfig) -> Hypervisor:
    """The backend for resolved settings; libvirt is imported only when it is the one."""
    if m.hypervisor == "xl":
        from hostagent.hypervisor.xl_backend import XlHypervisor

        return XlHypervisor(m.save_dir, m.xl_config_dirs, restore_timeout=m.restore_timeout)
    from hostagent.hypervisor.libvirt_backend import LibvirtHypervisor

    return LibvirtHypervisor(m.uri)
