"""Hypervisors behind one small interface: what maintenance needs to save and restore guests."""

from __future__ import annotations

import abc
import os

from hostagent.errors import HostagentError
from hostagent.records import record


@record(frozen=True)
class GuestInfo:
    name: str
    running: bool
    persistent: bool
    memory_kib: int
    owner: str | None = None
    unsaveable: str | None = None  # why the guest cannot be saved (host PCI passthrough, ...)
    autostart: bool = False  # the hypervisor starts it at boot by itself


class Hypervisor(abc.ABC):
    """One connection; every call may raise HostagentError naming the guest."""

    @abc.abstractmethod
    def guests(self) -> list[GuestInfo]:
        """Every defined guest."""

    @abc.abstractmethod
    def image_for(self, name: str, save_dir: str) -> str:
        """Where ``save`` puts the guest's memory image (a restore looks there even when no save was recorded)."""

    @abc.abstractmethod
    def save(self, name: str, image: str) -> str:
        """Save a running guest's memory and stop it; returns where the image is."""

    @abc.abstractmethod
    def restore(self, name: str, image: str) -> None:
        """Resume a guest from its saved image."""

    @abc.abstractmethod
    def has_image(self, name: str, image: str) -> bool:
        """Whether the guest's saved image is still there."""

    @abc.abstractmethod
    def discard_image(self, name: str, image: str) -> None:
        """Delete the image a guest was restored from: once the guest ran on, restoring it again would
        resume stale memory over a disk that has moved on."""

    @abc.abstractmethod
    def start(self, name: str) -> None:
        """Cold boot (the saved image is kept by the caller, never discarded here)."""

    @abc.abstractmethod
    def cold_boot(self, name: str, image: str | None, keep_as: str) -> str | None:
        """Boot the guest afresh after its restore failed, keeping its save image; returns where it is kept."""

    @abc.abstractmethod
    def shutdown(self, name: str) -> None:
        """Ask the guest to shut down gracefully."""

    @abc.abstractmethod
    def is_running(self, name: str) -> bool:
        """Whether the guest runs now."""

    def present(self, name: str) -> str | None:
        """The state of the guest's live domain, in words, or None when it has none (a domain whose save
        completed has none).  Backends that know more (a suspended or crashed domain) say more."""
        return "running" if self.is_running(name) else None

    def clear_interrupted_restore(self, name: str) -> bool:
        """Destroy what a restore that was killed midway left of the guest's domain (its image on disk is
        whole: the guest never ran since it was written); True when there was such a domain.  libvirtd
        finishes a restore whose client went away, so by default there is nothing to clear."""
        return False

    @abc.abstractmethod
    def resume_paused(self, name: str) -> bool:
        """Let a guest that an interrupted save or restore left paused run on; True when it was paused."""

    @abc.abstractmethod
    def sync_clock(self, name: str) -> str:
        """Bring a restored guest's clock up to date (it is behind by the downtime); returns how it was set."""

    @abc.abstractmethod
    def abort(self, name: str) -> None:
        """Abort the guest's running job (a save that overran its timeout); the guest keeps running."""

    @abc.abstractmethod
    def job_progress(self, name: str) -> tuple[int, int] | None:
        """Bytes done and total of the guest's running job, from the hypervisor's job stats; None if unknown."""


def remove_file(guest: str, path: str) -> None:
    """Delete one of a guest's files; one already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise HostagentError(f"guest {guest}: cannot delete {path}: {err.strerror or err}") from None
