"""`make test`'s runner: the Xen module beside the rest of the suite, then the wall time of each part.

Two cores (docs/testing.md, "Suite time"): the Xen module (a dom0 under TCG, the longest chain)
starts first, in its own pytest process with its own ``--basetemp``; the linters, ``make fuzz``
and then the rest of the suite run beside it.  A lint or fuzz failure stops both.  At the end it
prints the Xen module's output, a table of each part's wall time (also kept in
``.cache/suite-times.json``), and one closing line with the tests of every process:
``N passed, N failed``.

It exits non-zero if any part failed.  SIGINT, SIGTERM and SIGHUP stop every part, each in its own
process group (and with it the part's QEMU, which dies with its test process).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
XEN_MODULES = ("tests/vm/test_xen.py",)
GATES = ("lint", "fuzz")  # before the rest, beside the Xen module; either one failing stops every part
REST = "the rest"
ORDER = ("deps (apt, venv)", *GATES, REST)
COUNTS = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)\b")
# pytest's closing line, with or without its rule (-q drops the rule): "== 1 failed, 2 passed in 3.45s =="
CLOSING = re.compile(r"^(=+ )?(\d+ \w+(, )?)+ in [\d.]+s\b")
COLOUR = re.compile(r"\x1b\[[0-9;]*m")
SECTION = re.compile(r"^_+ (?:ERROR at \w+ of )?(\S+) _+$")
# CI stops at 90 minutes: at this many seconds from the Makefile's start every part still running is
# stopped, and the report (each part's output, its time, what failed and why) is printed all the same
LIMIT = float(os.environ.get("HOSTAGENT_SUITE_LIMIT", 85 * 60))
# each checkout's own: two runs on one machine (back-to-back clones, CI beside a local run) never share
# their VMs' directories
BASETEMP = f"/tmp/hostagent-pytest-{hashlib.sha256(str(REPO).encode()).hexdigest()[:8]}"


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def counts(output: str) -> dict[str, int]:
    """pytest's closing line (``== 3 failed, 820 passed in 1.2s ==``) as numbers: the output's last
    non-empty line, which pytest always ends with; {} if that line is not one (a crash, a usage error)."""
    lines = [line for line in COLOUR.sub("", output).splitlines() if line.strip()]
    if not lines or not CLOSING.match(lines[-1]):
        return {}
    found: dict[str, int] = {}
    for number, word in COUNTS.findall(lines[-1]):
        key = "errors" if word.startswith("error") else word
        found[key] = found.get(key, 0) + int(number)
    return found


def reasons(output: str) -> list[str]:
    """pytest's short summary (``FAILED tests/x.py::test_y - AssertionError: timed out ...``): each failed
    test and the first line of why, so that the end of the output, which CI shows, says it."""
    lines = COLOUR.sub("", output).splitlines()
    start = next((i for i in range(len(lines) - 1, -1, -1) if "short test summary info" in lines[i]), None)
    if start is None:
        return []
    # each failure's first "E " line, by the test's name in its section's rule ("____ test_x[a] ____"): off
    # CI pytest drops the message from a summary line that a long test id fills to the terminal's width
    first_error: dict[str, str] = {}
    section = None
    for line in lines[:start]:
        ruled = SECTION.match(line)
        if ruled:
            section = ruled.group(1)
        elif section and line.startswith("E ") and section not in first_error:
            first_error[section] = line[1:].strip()
    said = []
    # on CI pytest gives the whole message, lines and all: the line that names the test is enough here
    for line in lines[start + 1:]:
        if not line.startswith(("FAILED ", "ERROR ")):
            continue
        if " - " not in line:
            name = line.split(" ", 1)[1].split("::")[-1]
            if name in first_error:
                line = f"{line} - {first_error[name]}"
        said.append(line[:400])
    return said


def closing_line(parts: dict[str, dict[str, object]], ok: bool) -> str:
    """One line for every process's tests: ``N passed, N failed[, N skipped]``; never "0 failed" when
    anything failed (a linter, or a pytest that ended without its closing line)."""
    total: dict[str, int] = {}
    for part in parts.values():
        for key, number in (part.get("tests") or {}).items():  # type: ignore[union-attr]
            total[key] = total.get(key, 0) + number
    failed = total.get("failed", 0) + total.get("errors", 0)
    if not ok and not failed:
        failed = 1
    said = f"{total.get('passed', 0)} passed, {failed} failed"
    if total.get("skipped"):
        said += f", {total['skipped']} skipped"
    return said


class Interrupted(Exception):
    """SIGINT, SIGTERM or SIGHUP: every part is stopped."""


def stop_group(process: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 30) -> None:
    """SIGTERM to the part's process group (pytest unwinds its fixtures and stops its VMs), then SIGKILL."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the group
    process.wait()


FOREGROUND: list[subprocess.Popen[str]] = []  # the part running in the foreground, for the watchdog


def run(argv: list[str], log: list[str], env: dict[str, str] | None = None) -> int:
    """Run a part in the foreground, in its own process group, its output passed through and kept."""
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1, start_new_session=True, env=env)
    FOREGROUND[:] = [process]
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            sys.stdout.write(line)
            sys.stdout.flush()
            log.append(line)
        return process.wait()
    except BaseException:
        stop_group(process)
        raise


def selections(bin_dir: Path, cache: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each part's command line and environment, by the part's name: the Xen modules, the linters,
    ``make fuzz`` and the rest.  The pytest parts select every test under ``tests/`` but ``tests/fuzz``
    (``make fuzz``'s) once: ``tests/unit/test_suite_runner.py`` checks it file by file."""
    pytest = str(bin_dir / "pytest")
    parts: dict[str, tuple[list[str], dict[str, str]]] = {}
    for number, module in enumerate(XEN_MODULES):
        parts[f"{module} (beside the rest)"] = (
            [pytest, "--durations=15", f"--basetemp={BASETEMP}-xen{number}", "-p", "no:cacheprovider", module],
            {"HOSTAGENT_CPU_LOG": str(cache / f"cpu-xen-{number}.json")})
    for name in GATES:
        parts[name] = (["make", "--no-print-directory", name], {})
    parts[REST] = ([pytest, "--durations=40", f"--basetemp={BASETEMP}", "tests",
                    *[f"--ignore={m}" for m in XEN_MODULES], "--ignore=tests/fuzz"],
                   {"HOSTAGENT_CPU_LOG": str(cache / "cpu-rest.json")})
    return parts


def main() -> int:
    started = float(os.environ.get("SUITE_STARTED") or time.time())  # the Makefile's start, before `make deps`
    bin_dir = Path(sys.executable).parent
    cache = REPO / ".cache"
    cache.mkdir(exist_ok=True)
    parts: dict[str, dict[str, object]] = {"deps (apt, venv)": {"seconds": time.time() - started, "ok": True}}
    argvs = selections(bin_dir, cache)

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(f"signal {signum}")
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)

    behind: dict[str, subprocess.Popen[bytes]] = {}  # the parts in the background, by name
    began: dict[str, float] = {}
    ended: dict[str, float] = {}  # when each background part ended, by a thread waiting on it
    texts: list[str] = []  # each pytest part's output, for the reasons at the end
    stopped: list[str] = []  # why the suite stopped its parts early (the limit, a signal, a gate)
    ok = True

    def stop_everything(why: str) -> None:
        stopped.append(why)
        print(f"suite: {why}: stopping every part", file=sys.stderr, flush=True)
        for process in [*behind.values(), *FOREGROUND]:
            stop_group(process, grace=60)

    def waiter(name: str, process: subprocess.Popen[bytes]) -> None:
        process.wait()
        ended.setdefault(name, time.monotonic())

    def background(name: str) -> None:
        argv, env = argvs[name]
        with (cache / logname(name)).open("w") as out:
            began[name] = time.monotonic()
            behind[name] = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True, env={**os.environ, **env})
        threading.Thread(target=waiter, args=(name, behind[name]), daemon=True).start()

    def watchdog() -> None:
        if not limit_passed.wait(max(0.0, started + LIMIT - time.time())):
            stop_everything(f"the suite's limit of {minutes(LIMIT)} from its start passed")
    limit_passed = threading.Event()  # set when every part has ended: the watchdog stands down
    threading.Thread(target=watchdog, daemon=True).start()
    try:
        for name in argvs:
            if name not in (REST, *GATES):
                background(name)
        for name in GATES:  # in front of the rest: beside it they only moved CPU (docs/testing.md, run G)
            start, output = time.monotonic(), []
            rc = run(argvs[name][0], output)
            parts[name] = {"seconds": time.monotonic() - start, "ok": rc == 0, "tests": counts("".join(output))}
            if rc != 0:
                ok = False
                stop_everything(f"{name} failed")
                break
        if ok:
            argv, env = argvs[REST]
            start, output = time.monotonic(), []
            rc = run(argv, output, {**os.environ, **env})
            parts[REST] = {"seconds": time.monotonic() - start, "ok": rc == 0, "tests": counts("".join(output))}
            texts.append("".join(output))
            ok = rc == 0
        while len(ended) < len(behind):
            time.sleep(1)
    except Interrupted as why:
        stopped.append(str(why))
        print(f"suite: {why}: stopping every part", file=sys.stderr, flush=True)
        for process in behind.values():
            stop_group(process)
        ok = False
    limit_passed.set()
    for name, process in behind.items():  # each has ended, or been stopped just now
        process.wait()
        ended.setdefault(name, time.monotonic())

    for name, process in behind.items():  # Xen's
        text = (cache / logname(name)).read_text(errors="replace")
        if stopped:
            text += f"\n(stopped: {stopped[0]})\n"
        print(f"=== {name} ===")
        print(text, end="" if text.endswith("\n") else "\n")
        if name not in GATES:
            texts.append(text)
        parts[name] = {"seconds": ended[name] - began[name], "ok": process.returncode == 0, "tests": counts(text)}
        ok = ok and process.returncode == 0
    parts = {name: parts[name] for name in [*ORDER, *parts] if name in parts}  # the table's order, whatever ran
    parts["make test"] = {"seconds": time.time() - started, "ok": ok}
    (cache / "suite-times.json").write_text(json.dumps(
        {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parts": parts}, indent=2) + "\n")
    print("=== suite time (docs/testing.md keeps the last fresh-clone figures) ===")
    for name, part in parts.items():
        tests = part.get("tests") or {}
        said = ", ".join(f"{n} {k}" for k, n in tests.items()) if isinstance(tests, dict) else ""
        status = "ok" if part["ok"] else "FAILED"
        print(f"{name:<48} {minutes(float(part['seconds'])):>13}  {status}{'  (' + said + ')' if said else ''}")
    why = [line for part in texts for line in reasons(part)]
    if why:
        print("=== what failed, and the first line of why (each part's output above has the rest) ===")
        print("\n".join(why))
    for why in stopped:
        print(f"suite: stopped early: {why}")
    print(closing_line(parts, ok and not stopped))
    if stopped and not any("limit" in why or "failed" in why for why in stopped):
        return 130
    return 0 if ok and not stopped else 1


def logname(part: str) -> str:
    """A background part's log under .cache: ``test-xen-0.log``."""
    return f"test-xen-{XEN_MODULES.index(part.split(' ', 1)[0])}.log"


if __name__ == "__main__":
    sys.exit(main())
