"""The libvirt backend: KVM/QEMU through managedSave, Xen (libxl) through save to a file.

libxl's save and managedSave accept no flags, so none are passed for ``xen:`` URIs.
libvirt is imported here only, so commands that do not touch guests never load it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from hostagent.errors import HostagentError, ProbeUnavailable
from hostagent.hypervisor import GuestInfo, Hypervisor

OWNER_NS = "https://hostagent.invalid/xmlns/owner/1"


class LibvirtHypervisor(Hypervisor):
    def __init__(self, uri: str) -> None:
        try:
            import libvirt
        except ImportError:
            raise ProbeUnavailable("libvirt-python is not installed: install hostagent[libvirt]") from None
        self._libvirt = libvirt
        self.uri = uri
        self.xen = uri.startswith("xen:")
        try:
            self._conn = libvirt.open(uri)
        except libvirt.libvirtError as err:
            raise ProbeUnavailable(f"hypervisor {uri} not reachable: {err.get_error_message()}") from None

    def _domain(self, name: str) -> Any:
        try:
            return self._conn.lookupByName(name)
        except self._libvirt.libvirtError as err:
            raise HostagentError(f"guest {name}: {err.get_error_message()}") from None

    def _call(self, name: str, what: str, func: Any, *args: Any) -> Any:
        try:
            return func(*args)
        except self._libvirt.libvirtError as err:
            raise HostagentError(f"guest {name}: {what} failed: {err.get_error_message()}") from None

    def guests(self) -> list[GuestInfo]:
        found = []
        for domain in self._conn.listAllDomains():
            xml = ET.fromstring(domain.XMLDesc(0))
            owner = xml.find(f"metadata/{{{OWNER_NS}}}owner")
            owner_text = owner.text.strip() if owner is not None and owner.text else None
            passthrough = xml.find("devices/hostdev")
            found.append(GuestInfo(
                name=domain.name(), running=bool(domain.isActive()), persistent=bool(domain.isPersistent()),
                memory_kib=int(domain.info()[2]), owner=owner_text,
                unsaveable="host device passthrough (hostdev)" if passthrough is not None else None,
            ))
        return sorted(found, key=lambda g: g.name)

    def save(self, name: str, image: str) -> str:
        domain = self._domain(name)
        if self.xen:
            self._call(name, "save", domain.save, image)
            return image
        self._call(name, "managedSave", domain.managedSave, 0)
        return "managed"

    def restore(self, name: str, image: str) -> None:
        if image == "managed":
            self._call(name, "start from managed save", self._domain(name).create)
        else:
            self._call(name, "restore", self._conn.restore, image)

    def has_image(self, name: str, image: str) -> bool:
        if image == "managed":
            return bool(self._call(name, "hasManagedSaveImage", self._domain(name).hasManagedSaveImage, 0))
        import os

        return os.path.exists(image)

    def start(self, name: str) -> None:
        domain = self._domain(name)
        if domain.isActive():
            return
        if not self.xen and domain.hasManagedSaveImage(0):
            raise HostagentError(f"guest {name}: a managed save image exists; restore it or remove it deliberately")
        self._call(name, "start", domain.create)

    def shutdown(self, name: str) -> None:
        self._call(name, "shutdown", self._domain(name).shutdown)

    def is_running(self, name: str) -> bool:
        return bool(self._domain(name).isActive())
