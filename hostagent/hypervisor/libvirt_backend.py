"""The libvirt backend: KVM/QEMU through managedSave, Xen (libxl) through save to a file.

libxl's save and managedSave accept no flags, so none are passed for ``xen:`` URIs.
libvirt is imported here only, so commands that do not touch guests never load it.
An embedded driver (``qemu:///embed?root=...``) runs inside this process and needs libvirt's
event loop running in a thread; only one process may hold an embed root at a time.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import xml.etree.ElementTree as ET
from typing import Any

from hostagent.errors import HostagentError, ParseError, ProbeUnavailable
from hostagent.hypervisor import GuestInfo, Hypervisor, remove_file
from hostagent.names import MAIL_ADDRESS

OWNER_NS = "https://hostagent.invalid/xmlns/owner/1"
_event_loop_started = threading.Lock()
_event_loop: list[threading.Thread] = []


def _start_event_loop(libvirt: Any) -> None:
    with _event_loop_started:
        if _event_loop:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        thread.start()
        _event_loop.append(thread)


def domain_facts(xml_text: str, source: str) -> tuple[str | None, bool]:
    """(owner from hostagent's metadata, whether a host device is passed through) of a domain's XML."""
    try:
        xml = ET.fromstring(xml_text)
    except (ET.ParseError, ValueError) as err:
        raise ParseError(source, None, f"not XML: {str(err)[:100]}") from None
    owner = xml.find(f"metadata/{{{OWNER_NS}}}owner")
    owner_text = owner.text.strip() if owner is not None and owner.text and owner.text.strip() else None
    if owner_text is not None and not MAIL_ADDRESS.fullmatch(owner_text):  # a mail header's boundary: no CR/LF
        owner_text = None  # not an address: maintenance.owners decides, as for a guest without one
    return owner_text, xml.find("devices/hostdev") is not None


class LibvirtHypervisor(Hypervisor):
    def __init__(self, uri: str) -> None:
        try:
            import libvirt
        except ImportError:
            raise ProbeUnavailable("libvirt-python is not installed: install hostagent[libvirt]") from None
        self._libvirt = libvirt
        libvirt.registerErrorHandler(lambda context, error: None, None)  # errors come as exceptions, not stderr
        self.uri = uri
        self.xen = uri.startswith("xen:")
        if "/embed" in uri:
            _start_event_loop(libvirt)
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
        """Every domain; one undefined while it is read is skipped (it is gone), any other error is a
        HostagentError (never a libvirt exception: the callers decide on HostagentError)."""
        libvirt = self._libvirt
        try:
            domains = self._conn.listAllDomains()
        except libvirt.libvirtError as err:
            raise HostagentError(f"listing the guests failed: {err.get_error_message()}") from None
        found = []
        for domain in domains:
            try:
                if self.xen and domain.ID() == 0:  # libxl lists Domain-0 as a running, persistent domain
                    continue
                owner_text, passthrough = domain_facts(domain.XMLDesc(0), f"guest {domain.name()}: XML")
                found.append(GuestInfo(
                    name=domain.name(), running=bool(domain.isActive()), persistent=bool(domain.isPersistent()),
                    memory_kib=int(domain.info()[2]), owner=owner_text,
                    unsaveable="host device passthrough (hostdev)" if passthrough else None,
                    autostart=bool(domain.autostart()),
                ))
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # undefined between the listing and this look
                raise HostagentError(f"listing the guests failed: {err.get_error_message()}") from None
        return sorted(found, key=lambda g: g.name)

    def image_for(self, name: str, save_dir: str) -> str:
        return os.path.join(save_dir, f"{name}.save") if self.xen else "managed"

    def save(self, name: str, image: str) -> str:
        domain = self._domain(name)
        if self.xen:
            try:
                os.makedirs(os.path.dirname(image), mode=0o700, exist_ok=True)
            except OSError as err:
                raise HostagentError(f"guest {name}: cannot save to {image}: {err.strerror or err}") from None
            started = time.time()
            try:
                self._call(name, "save", domain.save, image)
            except HostagentError:
                # libxl leaves what it wrote when a save fails (libvirt's libxlDoDomainSave unlinks nothing),
                # and the guest runs on: that file is not its memory and must never be restored (I5)
                with contextlib.suppress(OSError):
                    if os.stat(image).st_mtime >= started - 1:
                        os.unlink(image)
                raise
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
        return os.path.exists(image)

    def discard_image(self, name: str, image: str) -> None:
        """libvirt deletes a managed save image itself when it starts the guest from it."""
        if image != "managed":
            remove_file(name, image)

    def start(self, name: str) -> None:
        domain = self._domain(name)
        if domain.isActive():
            return
        if not self.xen and domain.hasManagedSaveImage(0):
            raise HostagentError(f"guest {name}: a managed save image exists; restore it or remove it deliberately")
        self._call(name, "start", domain.create)

    def cold_boot(self, name: str, image: str | None, keep_as: str) -> str | None:
        """A managed save image is hard-linked to ``keep_as`` (in the managed save directory) before
        libvirt's force boot unlinks it; a file image is left where it is."""
        domain = self._domain(name)
        if domain.isActive():
            return image
        if image == "managed" and domain.hasManagedSaveImage(0):
            managed = os.path.join(os.path.dirname(keep_as), f"{name}.save")
            try:
                os.link(managed, keep_as)
            except OSError as err:
                raise HostagentError(f"guest {name}: cannot keep the managed save image {managed}: "
                                     f"{err.strerror or err}; not cold booting") from None
            self._call(name, "force boot", domain.createWithFlags, self._libvirt.VIR_DOMAIN_START_FORCE_BOOT)
            return keep_as
        self._call(name, "start", domain.create)
        return image

    def shutdown(self, name: str) -> None:
        self._call(name, "shutdown", self._domain(name).shutdown)

    def is_running(self, name: str) -> bool:
        return bool(self._domain(name).isActive())

    def clear_interrupted_restore(self, name: str) -> bool:
        """A restore whose libvirt went away midway (the embedded driver in the worker, or a libvirtd
        killed or restarted during it) leaves the domain paused, starting up or reading its image, with its
        managed image kept: a fresh connection still shows it active for a while, then its reconnect
        kills it (or, having read it all, lets it run).  Taking
        it for running (and resuming it) recorded a guest as restored that then went down; it is
        destroyed here, and restored again from its image."""
        domain = self._domain(name)
        libvirt = self._libvirt
        try:
            if not domain.isActive():
                return False
            state, reason = domain.state()
            # starting up, or still reading its image (a restore is an incoming migration from a file)
            midway = (libvirt.VIR_DOMAIN_PAUSED_STARTING_UP, libvirt.VIR_DOMAIN_PAUSED_MIGRATION)
            if state != libvirt.VIR_DOMAIN_PAUSED or reason not in midway or not domain.hasManagedSaveImage(0):
                return False
            domain.destroy()
        except libvirt.libvirtError:  # the reconnect's own clean-up may get there first
            pass
        try:
            return not domain.isActive()
        except libvirt.libvirtError as err:
            raise HostagentError(f"guest {name}: after an interrupted restore: {err.get_error_message()}") from None

    def resume_paused(self, name: str) -> bool:
        domain = self._domain(name)
        if not self.xen:
            # A fresh connection reconnects to running QEMUs in threads, each holding the domain's job
            # until it has read QEMU's real status; until then state() can still say "running" for a
            # guest whose interrupted save left it paused.  A query that must take the job waits that out.
            with contextlib.suppress(self._libvirt.libvirtError):
                domain.memoryStats()
        state, reason = self._call(name, "state", domain.state)
        if state != self._libvirt.VIR_DOMAIN_PAUSED:
            return False
        try:
            domain.resume()
        except self._libvirt.libvirtError as err:  # libvirt's own recovery of the interrupted job may beat us to it
            if domain.state()[0] != self._libvirt.VIR_DOMAIN_RUNNING:
                raise HostagentError(f"guest {name}: resume (paused, reason {reason}) failed: "
                                     f"{err.get_error_message()}") from None
        return True

    def sync_clock(self, name: str) -> str:
        """``virsh domtime --sync``, as libvirt-guests' SYNC_TIME does."""
        self._call(name, "set the clock", self._domain(name).setTime, None, self._libvirt.VIR_DOMAIN_TIME_SYNC)
        return "set"

    def abort(self, name: str) -> None:
        self._call(name, "abortJob", self._domain(name).abortJob)

    def job_progress(self, name: str) -> tuple[int, int] | None:
        try:
            stats = self._domain(name).jobStats(0)
        except (self._libvirt.libvirtError, HostagentError):  # no job, or a driver without job stats
            return None
        for done, total in (("memory_processed", "memory_total"), ("data_processed", "data_total")):
            if stats.get(total):
                return int(stats.get(done, 0)), int(stats[total])
        return None

