"""Save and restore phases against libvirt's test driver, with failures injected (issue #8, in progress)."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hostagent.config import MaintenanceConfig
from hostagent.errors import HostagentError
from hostagent.hypervisor import Hypervisor
from hostagent.hypervisor.libvirt_backend import LibvirtHypervisor
from hostagent.maintenance.journal import Journal, JournalStore
from hostagent.maintenance.phases import Recorder, restore_phase, save_phase
from hostagent.maintenance.preflight import Preflight, plan
from hostagent.progress import ProgressBoard
from tests.integration.test_hypervisor import DOMAIN


class Faulty(LibvirtHypervisor):
    """The real test-driver backend, with chosen calls failing a chosen number of times."""

    def __init__(self, uri: str, fail: dict[tuple[str, str], int]) -> None:
        super().__init__(uri)
        self.fail = dict(fail)

    def _maybe(self, call: str, name: str) -> None:
        if self.fail.get((call, name), 0) > 0:
            self.fail[(call, name)] -= 1
            raise HostagentError(f"guest {name}: {call} failed: injected")

    def save(self, name: str, image: str) -> str:
        self._maybe("save", name)
        return super().save(name, image)

    def restore(self, name: str, image: str) -> None:
        self._maybe("restore", name)
        super().restore(name, image)

    def discard_image(self, name: str, image: str) -> None:
        self._maybe("discard", name)
        super().discard_image(name, image)


def setup(tmp_path: Path, fail: dict[tuple[str, str], int] | None = None) -> tuple[Faulty, JournalStore, Recorder]:
    domains = "\n".join(DOMAIN.format(name=n, memory=128, metadata="", devices="") for n in ("a", "b", "c"))
    (tmp_path / "node.xml").write_text(f"<node>\n{domains}\n</node>\n")
    hypervisor = Faulty(f"test://{tmp_path / 'node.xml'}", fail or {})
    store = JournalStore(tmp_path / "journal")
    journal = Journal.new(0.0, "test", ["a", "b", "c"]).advance("preflight").advance("saving")
    store.create(journal)
    return hypervisor, store, Recorder(journal, store)


def seen(hypervisor: Hypervisor) -> Callable[[], Preflight]:
    """A preflight that passes and sees the guests as the hypervisor has them when it runs."""
    return lambda: Preflight(guests=tuple(plan(g) for g in hypervisor.guests()))


def states(store: JournalStore, recorder: Recorder) -> dict[str, str]:
    on_disk = store.load(recorder.journal.id)
    assert on_disk == recorder.journal  # the journal on disk always tells what happened
    return {n: g.state for n, g in on_disk.guests.items()}


def test_full_cycle(tmp_path: Path) -> None:
    hypervisor, store, recorder = setup(tmp_path)
    assert save_phase(recorder, hypervisor, MaintenanceConfig(save_dir=str(tmp_path))) is None
    assert states(store, recorder) == {"a": "saved", "b": "saved", "c": "saved"}
    assert not any(hypervisor.is_running(n) for n in "abc")
    recorder.advance("rebooting")
    restore_phase(recorder, hypervisor, MaintenanceConfig(restore_priority=("c",)))
    assert states(store, recorder) == {"a": "running", "b": "running", "c": "running"}
    assert recorder.journal.phase == "done"
    assert all(g.downtime_s is not None and g.downtime_s >= 0 for g in recorder.journal.guests.values())
    assert {g.outcome for g in recorder.journal.guests.values()} == {"restored"}
    assert {g.restored_by for g in recorder.journal.guests.values()} == {"hostagent"}


def test_a_failed_save_is_shut_down_and_cold_started(tmp_path: Path) -> None:
    hypervisor, store, recorder = setup(tmp_path, {("save", "b"): 1})
    assert save_phase(recorder, hypervisor, MaintenanceConfig(save_dir=str(tmp_path), shutdown_timeout=5)) is None
    assert states(store, recorder) == {"a": "saved", "b": "shut_down", "c": "saved"}
    assert "injected" in (recorder.journal.guests["b"].error or "")
    recorder.advance("rebooting")
    restore_phase(recorder, hypervisor, MaintenanceConfig())
    assert recorder.journal.phase == "done" and all(hypervisor.is_running(n) for n in "abc")
    b = recorder.journal.guests["b"]  # the truth: it was shut down and booted again, not restored
    assert (b.state, b.outcome) == ("running", "restarted") and "shut down gracefully" in (b.error or "")


def test_abort_policy_brings_the_saved_guests_back_without_a_reboot(tmp_path: Path) -> None:
    hypervisor, store, recorder = setup(tmp_path, {("save", "a"): 1})
    stop = save_phase(recorder, hypervisor, MaintenanceConfig(save_dir=str(tmp_path), on_save_failure="abort"))
    assert stop is not None
    recorder.advance("restoring", error=stop)
    restore_phase(recorder, hypervisor, MaintenanceConfig(), aborted=True)
    assert states(store, recorder) == {"a": "running", "b": "running", "c": "running"}
    assert recorder.journal.phase == "failed" and "aborted before the reboot" in (recorder.journal.error or "")
    assert "rebooting" not in [phase for phase, _ in recorder.journal.history]
    assert all(hypervisor.is_running(n) for n in "abc")


def test_restore_retries_then_keeps_the_image_when_it_keeps_failing(tmp_path: Path) -> None:
    hypervisor, store, recorder = setup(tmp_path, {("restore", "a"): 2, ("restore", "b"): 9})
    save_phase(recorder, hypervisor, MaintenanceConfig(save_dir=str(tmp_path)))
    recorder.advance("rebooting")
    restore_phase(recorder, hypervisor, MaintenanceConfig(restore_attempts=3))
    guests = store.load(recorder.journal.id).guests
    assert (guests["a"].state, guests["a"].attempts, guests["a"].outcome) == ("running", 3, "restored")
    assert (guests["b"].state, guests["b"].outcome) == ("lost", "lost")
    assert hypervisor.has_image("b", "managed") and "memory image is kept" in (guests["b"].error or "")
    assert recorder.journal.phase == "failed" and "b" in (recorder.journal.error or "")


def test_a_crash_mid_restore_resumes_without_restoring_twice(tmp_path: Path) -> None:
    hypervisor, store, recorder = setup(tmp_path)
    save_phase(recorder, hypervisor, MaintenanceConfig(save_dir=str(tmp_path)))
    recorder.advance("rebooting")
    recorder.advance("restoring")
    recorder.guest("a", "restoring", attempts=1)  # as restore_phase records it before the restore call
    hypervisor.restore("a", "managed")  # the agent restored a, then died before writing it down
    recorder.guest("b", "restoring", attempts=1)
    resumed = Recorder(store.load(recorder.journal.id), store)  # a new agent process reads the journal
    restore_phase(resumed, hypervisor, MaintenanceConfig())
    assert states(store, resumed) == {"a": "running", "b": "running", "c": "running"}
    a = resumed.journal.guests["a"]  # found running: not restored again, and restored by us
    assert (a.attempts, a.outcome, a.restored_by) == (1, "restored", "hostagent")
    assert resumed.journal.guests["b"].attempts == 2  # b's image was still there: restored from it
    assert resumed.journal.phase == "done"


def file_images(tmp_path: Path, fail: dict[tuple[str, str], int] | None = None) -> tuple[
        Faulty, JournalStore, Recorder, MaintenanceConfig]:
    """Images as files in save_dir, as with xl and libvirt's libxl driver; the test driver writes and
    restores such files for real."""
    hypervisor, store, recorder = setup(tmp_path, fail)
    hypervisor.xen = True  # the backend's file-image path (libvirt's xen:/// URIs)
    return hypervisor, store, recorder, MaintenanceConfig(save_dir=str(tmp_path / "save"), shutdown_timeout=5)


def test_an_image_is_deleted_once_its_guest_is_restored_from_it(tmp_path: Path) -> None:
    hypervisor, store, recorder, config = file_images(tmp_path)
    save_phase(recorder, hypervisor, config)
    images = [recorder.journal.guests[n].image for n in "abc"]
    assert all(image and Path(image).is_file() for image in images)
    recorder.advance("rebooting")
    restore_phase(recorder, hypervisor, config)
    assert states(store, recorder) == {"a": "running", "b": "running", "c": "running"}
    assert {g.outcome for g in recorder.journal.guests.values()} == {"restored"}
    assert not list((tmp_path / "save").iterdir())  # none can be restored a second time, over a newer disk


def test_an_image_that_cannot_be_deleted_is_recorded_and_the_guest_runs_on(tmp_path: Path) -> None:
    hypervisor, store, recorder, config = file_images(tmp_path, {("discard", "a"): 1})
    save_phase(recorder, hypervisor, config)
    recorder.advance("rebooting")
    restore_phase(recorder, hypervisor, config)
    assert states(store, recorder) == {"a": "running", "b": "running", "c": "running"}
    a = recorder.journal.guests["a"]
    assert a.outcome == "restored" and "its used image stays" in (a.error or "") and "injected" in (a.error or "")
    assert recorder.journal.phase == "done"
    assert [p.name for p in (tmp_path / "save").iterdir()] == ["a.save"]  # only a's, which could not be deleted


def test_an_image_older_than_the_maintenance_is_never_restored(tmp_path: Path) -> None:
    """b's save fails; the image at its path is from an earlier maintenance, so b is booted afresh."""
    hypervisor, store, recorder, config = file_images(tmp_path, {("save", "b"): 1})
    stale = hypervisor.image_for("b", config.save_dir)
    LibvirtHypervisor.save(hypervisor, "b", stale)  # a real image of b ...
    hypervisor.start("b")  # ... left behind when b ran on
    earlier = recorder.journal.created - 86400
    os.utime(stale, (earlier, earlier))
    save_phase(recorder, hypervisor, config)
    assert recorder.journal.guests["b"].state == "shut_down"
    recorder.advance("rebooting")
    restore_phase(recorder, hypervisor, config)
    assert states(store, recorder) == {"a": "running", "b": "running", "c": "running"}
    b = recorder.journal.guests["b"]
    assert (b.state, b.outcome) == ("running", "restarted")
    assert f"the image {stale} was written before its last save began" in (b.error or "")
    assert Path(stale).is_file() and os.stat(stale).st_mtime == earlier  # not restored, not touched


class Slow(Faulty):
    """Saves that take ``seconds``; an abort ends them like libvirt's abortJob, unless ``deaf``."""

    def __init__(self, uri: str, seconds: float, deaf: bool = False) -> None:
        super().__init__(uri, {})
        self.seconds, self.deaf = seconds, deaf
        self.aborts: list[str] = []
        self._abort = threading.Event()

    def save(self, name: str, image: str) -> str:
        if name == "b" and self.deaf:  # a hung save: the abort changes nothing
            time.sleep(self.seconds)
            raise HostagentError(f"guest {name}: managedSave failed: I/O error")
        if name == "b" and self._abort.wait(self.seconds):
            raise HostagentError(f"guest {name}: managedSave failed: operation aborted: job canceled by client")
        return super().save(name, image)

    def abort(self, name: str) -> None:
        self.aborts.append(name)
        self._abort.set()


def slow_setup(tmp_path: Path, deaf: bool = False) -> tuple[Slow, JournalStore, Recorder]:
    _, store, recorder = setup(tmp_path)
    return Slow(f"test://{tmp_path / 'node.xml'}", seconds=4 if deaf else 60, deaf=deaf), store, recorder


def test_a_save_past_its_timeout_is_aborted_and_follows_the_policy(tmp_path: Path) -> None:
    hypervisor, store, recorder = slow_setup(tmp_path)
    config = MaintenanceConfig(save_dir=str(tmp_path), save_timeout=1.5, on_save_failure="skip")
    assert save_phase(recorder, hypervisor, config) is None
    assert hypervisor.aborts == ["b"]
    assert states(store, recorder) == {"a": "saved", "b": "skipped", "c": "saved"}
    assert "timed out after 1.5 s, job aborted" in (recorder.journal.guests["b"].error or "")
    assert hypervisor.is_running("b")  # the aborted save left it running; skip lets it go down with the host


def test_a_save_that_ignores_the_abort_stops_the_maintenance_whatever_the_policy(tmp_path: Path) -> None:
    hypervisor, store, recorder = slow_setup(tmp_path, deaf=True)
    config = MaintenanceConfig(save_dir=str(tmp_path), save_timeout=1.0, abort_grace=1.0, on_save_failure="skip")
    stop = save_phase(recorder, hypervisor, config)  # a guest in an unknown state: no reboot
    assert stop is not None and "b stuck" in stop
    recorder.advance("restoring", error=stop)
    assert "state unknown" in (recorder.journal.guests["b"].error or "")
    restore_phase(recorder, hypervisor, config, aborted=True)
    assert recorder.journal.phase == "failed" and "rebooting" not in [p for p, _ in recorder.journal.history]
    assert states(store, recorder)["a"] == "running"


def test_progress_is_shown_per_guest_while_saving(tmp_path: Path) -> None:
    hypervisor, _, recorder = slow_setup(tmp_path)
    out = io.StringIO()
    board = ProgressBoard(out, every=0.5, tty=False)
    save_phase(recorder, hypervisor, MaintenanceConfig(save_dir=str(tmp_path), save_timeout=2.5), progress=board)
    lines = out.getvalue().splitlines()
    assert any(line.startswith("b: saving ") and line.endswith(" s") for line in lines)  # alive, with elapsed time
    assert "a: saved" in lines and any(line.startswith("b: shut_down: timed out") for line in lines)
