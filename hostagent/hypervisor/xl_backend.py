"""The ``xl`` backend: Xen's own toolstack, with no libvirtd.

- Guests come from ``xl list -l`` (their configuration) and ``xl list`` (their state); Domain-0 is
  never a guest.  xl keeps no definitions of stopped domains, so only live domains are listed.
  ``xl list -l`` silently skips a domain whose stored configuration libxl cannot read; ``xl list``
  still shows it, and so does ``guests``: it is saved with its configuration file as ``xl save``'s
  third argument, or, with none, listed as one that cannot be saved (never invisible).
- ``xl save`` runs in the worker's process group (a killed worker takes it along); ``abort`` kills
  it and the processes under it.  ``start`` refuses a name held by a domain that does not run (a
  suspended one an interrupted save left): ``xl create`` would fail, and silence would lie.
- ``xl save`` writes the image and destroys the domain; when it fails, xl resumes the domain
  itself.  Saves run in parallel, one ``xl`` process each; ``abort`` kills that process.
- ``xl restore`` takes the configuration from the image.  A cold boot (``xl create``) needs the
  guest's configuration file: the copy taken when it was saved (``<save_dir>/<name>.cfg``), else
  the file in ``config_dirs`` whose ``name =`` is the guest's, as Debian's xendomains finds them.
- PV and PVH guests keep Xen's clock across a save; HVM guests have no guest agent channel here.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

from hostagent.durable import write_durable
from hostagent.errors import CommandTimeout, HostagentError, ProbeUnavailable
from hostagent.host import run_command
from hostagent.hypervisor import GuestInfo, Hypervisor, remove_file
from hostagent.sources import xl as parse

PAGE = 4096
OUTPUT_LIMIT = 16 * 2**20  # xl's answers are a few KiB per domain
CONFIG_LIMIT = 256 * 1024
_NAME_LINE = re.compile(r"""^\s*name\s*=\s*["']([^"']+)["']""", re.MULTILINE)


class XlHypervisor(Hypervisor):
    def __init__(self, save_dir: str, config_dirs: tuple[str, ...] = ("/etc/xen/auto", "/etc/xen"),
                 timeout: float = 60.0, restore_timeout: float = 300.0) -> None:
        if shutil.which("xl") is None:
            raise ProbeUnavailable("xl: command not found (install xen-utils, or set maintenance.hypervisor)")
        self.save_dir, self.config_dirs, self.timeout = save_dir, config_dirs, timeout
        self.restore_timeout = restore_timeout
        self._jobs: dict[str, subprocess.Popen[bytes]] = {}
        self._progress: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def _xl(self, *args: str, timeout: float | None = None, name: str | None = None) -> str:
        what = f"guest {name}: " if name else ""
        try:
            result = run_command(("xl", *args), timeout=timeout or self.timeout)
        except CommandTimeout as err:
            raise HostagentError(f"{what}{err}") from None
        if result.returncode != 0:
            raise HostagentError(f"{what}xl {args[0]} failed: {_last_lines(result.stderr or result.stdout)}")
        if len(result.stdout) > OUTPUT_LIMIT:
            raise HostagentError(f"xl {' '.join(args)}: more than {OUTPUT_LIMIT} bytes of output")
        return result.stdout

    def _states(self) -> list[parse.XlState]:
        """``xl list``'s domains but Domain-0, a line each: two names that differ only in trailing spaces
        (``web`` and ``web ``) look the same there, so nothing is keyed by these names."""
        return [s for s in parse.parse_list(self._xl("list")) if s.domid != parse.DOM0]

    def _domname(self, state: parse.XlState) -> str:
        """The domain's exact name (``xl domname``, from xenstore: its trailing spaces included, and for a
        domain ``xl list -l`` omits too); ``xl list``'s when xl cannot say."""
        try:
            return self._xl("domname", str(state.domid)).removesuffix("\n") or state.name
        except HostagentError:
            return state.name

    def _state_of(self, name: str) -> parse.XlState | None:
        """``name``'s line in ``xl list``, matched by its exact name: a name's trailing spaces are lost in the
        column's padding there, so each line that could be it is asked for its own (``xl domname``)."""
        candidates = [s for s in self._states() if s.name == name.rstrip()]
        return next((s for s in candidates if self._domname(s) == name), None)

    def guests(self) -> list[GuestInfo]:
        try:
            domains = [d for d in parse.parse_list_long(self._xl("list", "-l")) if d.domid != parse.DOM0]
            states = self._states()
        except HostagentError as err:
            raise ProbeUnavailable(f"hypervisor xl not usable: {err}") from None
        found = []
        described = {domain.domid for domain in domains}
        by_domid = {seen.domid: seen for seen in states}  # xl list -l's names are exact; xl list's padded
        for seen in states:  # xl list -l skips a domain whose stored configuration libxl cannot read: xl list
            if seen.domid not in described:  # still shows it, and it is never invisible
                name = self._domname(seen)
                saveable = self._kept_config(name).is_file() or bool(self._configs(name))
                found.append(GuestInfo(
                    name=name, running=seen.alive, persistent=True, memory_kib=seen.mem_mib * 1024,
                    unsaveable=_unfileable(name) or (None if saveable else "xl list -l omits it (libxl cannot "
                    "read its stored configuration) and no configuration file names it, so xl cannot save it"),
                    autostart=any(Path(d).name == "auto" for d in self._config_owners(name))))
        for domain in domains:
            state = by_domid.get(domain.domid)
            pci = list(domain.pci) or parse.parse_pci_list(self._xl("pci-list", domain.name, name=domain.name))
            found.append(GuestInfo(
                name=domain.name, running=state is not None and state.alive, persistent=True,
                memory_kib=domain.max_memkb,
                unsaveable=_unfileable(domain.name) or (f"PCI passthrough ({', '.join(pci)})" if pci else None),
                autostart=any(Path(d).name == "auto" for d in self._config_owners(domain.name))))
        return sorted(found, key=lambda g: g.name)

    def image_for(self, name: str, save_dir: str) -> str:
        return os.path.join(save_dir, f"{_file_name(name)}.save")

    def _kept_config(self, name: str) -> Path:
        return Path(self.save_dir) / f"{_file_name(name)}.cfg"

    def _config_owners(self, name: str) -> list[str]:
        """The directories of ``config_dirs`` holding a configuration file for this guest."""
        return [str(path.parent) for path in self._configs(name)]

    def _configs(self, name: str) -> list[Path]:
        found = []
        for directory in self.config_dirs:
            with contextlib.suppress(OSError):
                for path in sorted(Path(directory).iterdir()):
                    if _config_name(path) == name:
                        found.append(path)
        return found

    def config_for(self, name: str) -> Path:
        """The configuration a cold boot uses: the copy kept at the save, else the guest's file."""
        kept = self._kept_config(name)
        if _config_name(kept) == name:
            return kept
        found = self._configs(name)
        if not found:
            raise HostagentError(f"guest {name}: no configuration file to boot it from ({kept}, or one with "
                                 f"name = \"{name}\" in {', '.join(self.config_dirs)})")
        return found[0]

    def save(self, name: str, image: str) -> str:
        """``xl save``; the guest's configuration file, when it has one, is kept beside the image."""
        try:
            os.makedirs(os.path.dirname(image), mode=0o700, exist_ok=True)
        except OSError as err:
            raise HostagentError(f"guest {name}: cannot save to {image}: {err.strerror or err}") from None
        with contextlib.suppress(OSError):  # the file as it is now: a copy kept by an earlier save may be stale
            found = self._configs(name)
            if found:
                write_durable(self._kept_config(name), found[0].read_bytes()[:CONFIG_LIMIT])
        argv = ["xl", "save", name, image]
        if not self._described(name):  # libxl lost its stored configuration: xl save takes the file instead
            argv.append(str(self.config_for(name)))
        started = time.time()
        try:
            # in the worker's process group: whoever kills the worker's group stops the save too
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       env={**os.environ, "LC_ALL": "C"})
        except OSError as err:
            raise HostagentError(f"guest {name}: cannot save to {image}: {err.strerror or err}") from None
        with self._lock:
            self._jobs[name] = process
        tail = b""
        try:
            for chunk in iter(lambda: os.read(process.stdout.fileno(), 65536), b""):  # type: ignore[union-attr]
                tail = (tail + chunk)[-8192:]
                progress = parse.parse_progress(tail.decode("utf-8", "replace"))
                if progress:
                    self._progress[name] = progress
            returncode = process.wait()
        finally:
            with self._lock:
                self._jobs.pop(name, None)
                self._progress.pop(name, None)
        if returncode != 0:
            with contextlib.suppress(OSError):  # xl resumed the guest; its partial image must not be restored
                if os.stat(image).st_mtime >= started - 1:
                    os.unlink(image)
            killed = " (aborted)" if returncode < 0 else ""
            message = _last_lines(tail.decode("utf-8", "replace"))
            raise HostagentError(f"guest {name}: xl save failed{killed}: {message}")
        _fsync(image)
        return image

    def _described(self, name: str) -> bool:
        """Whether ``xl list -l`` shows the domain (libxl can read its stored configuration)."""
        try:
            return any(d.name == name for d in parse.parse_list_long(self._xl("list", "-l", name, name=name)))
        except HostagentError:
            return False

    def restore(self, name: str, image: str) -> None:
        """``xl restore``, bounded by ``restore_timeout``.  xl builds the domain paused and unpauses it last:
        a restore that fails or times out (its process group killed) can leave it paused, half loaded, and
        such a domain is destroyed here, before anyone can take it for the restored guest (I5)."""
        if self._state_of(name) is not None:
            raise HostagentError(f"guest {name}: a domain of that name already exists; not restoring {image}")
        try:
            self._xl("restore", image, timeout=self.restore_timeout, name=name)
        except HostagentError as err:
            try:
                cleared = self.clear_interrupted_restore(name)
            except HostagentError as destroy:
                raise HostagentError(f"{err}; the half-restored domain it left paused could not be destroyed: "
                                     f"{destroy}") from None
            if cleared:
                raise HostagentError(f"{err}; the half-restored domain it left paused was destroyed") from None
            raise

    def has_image(self, name: str, image: str) -> bool:
        return os.path.isfile(image)

    def discard_image(self, name: str, image: str) -> None:
        """The image and the configuration kept beside it at the save, like xendomains after its restore."""
        for path in (image, str(self._kept_config(name))):
            remove_file(name, path)

    def start(self, name: str) -> None:
        state = self._state_of(name)
        if state is not None and state.alive:
            return
        if state is not None:  # xl create would refuse the name, and xl start would return as if it worked
            raise HostagentError(f"guest {name}: a domain of that name exists in state {_state_words(state)}, "
                                 "not running: it cannot be started until it is destroyed")
        self._xl("create", str(self.config_for(name)), timeout=max(self.timeout, 120.0), name=name)

    def cold_boot(self, name: str, image: str | None, keep_as: str) -> str | None:
        """The image stays where it is (``xl create`` never touches it)."""
        self.start(name)
        return image

    def shutdown(self, name: str) -> None:
        self._xl("shutdown", name, name=name)

    def is_running(self, name: str) -> bool:
        state = self._state_of(name)
        return state is not None and state.alive

    def present(self, name: str) -> str | None:
        state = self._state_of(name)
        return None if state is None else _state_words(state)

    def clear_interrupted_restore(self, name: str) -> bool:
        """``xl restore`` builds the domain paused and unpauses it last: a killed restore leaves it paused
        with part of its memory loaded, and unpausing that would run a half-loaded guest."""
        state = self._state_of(name)
        if state is None or not state.paused or not state.alive:
            return False
        self._xl("destroy", name, name=name)
        return True

    def resume_paused(self, name: str) -> bool:
        state = self._state_of(name)
        if state is None or not state.paused or not state.alive:
            return False
        self._xl("unpause", name, name=name)
        return True

    def sync_clock(self, name: str) -> str:
        """PV and PVH guests read Xen's clock, which a save does not stop; an HVM guest's is behind."""
        kind = next((d.type for d in parse.parse_list_long(self._xl("list", "-l", name, name=name))), "pv")
        if kind == "hvm":
            raise HostagentError(f"guest {name}: an HVM guest's clock is behind by its downtime and xl has no "
                                 "guest agent channel: let NTP in the guest set it")
        return f"kept by Xen ({kind} guest)"

    def abort(self, name: str) -> None:
        with self._lock:
            process = self._jobs.get(name)
        if process is None:
            raise HostagentError(f"guest {name}: no save running")
        _kill_tree(process.pid)

    def job_progress(self, name: str) -> tuple[int, int] | None:
        progress = self._progress.get(name)
        return (progress[0] * PAGE, progress[1] * PAGE) if progress else None


def _unfileable(name: str) -> str | None:
    """Why the name cannot be a file name in ``save_dir`` as it is, if it cannot (its image would be written
    elsewhere): such a guest is not saved, and ``on_save_failure`` decides."""
    if "/" in name or "\0" in name or name in (".", ".."):
        return "its name cannot be a file name in the save directory (a slash, a NUL, or . or ..)"
    return None


def _file_name(name: str) -> str:
    """The guest's file name in ``save_dir``: the name itself, or, for one ``_unfileable`` refuses, a quoted
    form that stays inside the directory (never reached through a save, which such a guest never gets)."""
    return name if _unfileable(name) is None else "%" + urllib.parse.quote(name, safe="")


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every process under it (xl save and the libxl save helper it forks), the
    children first, found through /proc/PID/task/PID/children."""
    family, stack = [], [pid]
    while stack:
        current = stack.pop()
        family.append(current)
        with contextlib.suppress(OSError, ValueError):
            stack += [int(child) for child in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
    for member in reversed(family):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def _state_words(state: parse.XlState) -> str:
    words = {"r": "running", "b": "blocked", "p": "paused", "s": "shut down or suspended", "c": "crashed",
             "d": "dying"}
    return ", ".join(words[f] for f in state.flags if f in words) or "no state"


def _config_name(path: Path) -> str | None:
    """The ``name =`` of an xl configuration file, or None for anything else."""
    try:
        if not path.is_file() or path.stat().st_size > CONFIG_LIMIT:
            return None
        match = _NAME_LINE.search(path.read_text(errors="replace"))
    except OSError:
        return None
    return match.group(1) if match else None


def _last_lines(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.replace("\r", "\n").splitlines()
            if line.strip() and "xc: progress" not in line]
    return "; ".join(kept[-lines:]) or "no message"


def _fsync(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
