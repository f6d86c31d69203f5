"""`make test`'s runner: the Xen modules beside the rest of the suite, then the wall time of each part.

Two cores (docs/testing.md, "Suite time"): the Xen modules (a dom0 under TCG, the longest chain)
start first, each in its own pytest process with its own ``--basetemp``: ``test_xen.py`` boots the
dom0 and installs it with Ansible, then snapshots it for ``test_xen_maintenance.py``, whose
maintenances run on a copy of it beside the second and check-mode Ansible runs
(``HOSTAGENT_XEN_SNAPSHOT``, tests/vm/xen_dom0.py).  The linters, ``make fuzz`` and then the rest
of the suite run beside them.  A lint or fuzz failure stops all.  At the end it prints the Xen
modules' output, a table of each part's wall time (also kept in ``.cache/suite-times.json``),
and one closing line with the tests of every process: ``N passed, N failed``.

It exits non-zero if any part failed.  SIGINT and SIGTERM stop every part.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
XEN_MODULES = ("tests/vm/test_xen.py", "tests/vm/test_xen_maintenance.py")
COUNTS = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)\b")
# pytest's closing line, with or without its rule (-q drops the rule): "== 1 failed, 2 passed in 3.45s =="
CLOSING = re.compile(r"^=*\s*\d+ \w+.* in [\d.]+s\b")


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def counts(output: str) -> dict[str, int]:
    """pytest's closing line (``== 3 failed, 820 passed in 1.2s ==``) as numbers; {} if there is none."""
    for line in reversed(output.splitlines()):
        if CLOSING.match(line) and COUNTS.search(line):
            found: dict[str, int] = {}
            for number, word in COUNTS.findall(line):
                key = "errors" if word.startswith("error") else word
                found[key] = found.get(key, 0) + int(number)
            return found
    return {}


def run(argv: list[str], log: list[str] | None = None) -> int:
    """Run a part in the foreground, its output passed through (and kept in ``log``)."""
    with subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1) as process:
        for line in process.stdout:  # type: ignore[union-attr]
            sys.stdout.write(line)
            sys.stdout.flush()
            if log is not None:
                log.append(line)
    return process.returncode


def main() -> int:
    started = float(os.environ.get("SUITE_STARTED") or time.time())  # the Makefile's start, before `make deps`
    bin_dir = Path(sys.executable).parent
    cache = REPO / ".cache"
    cache.mkdir(exist_ok=True)
    parts: dict[str, dict[str, object]] = {}
    deps = time.time() - started
    parts["deps (apt, venv)"] = {"seconds": deps, "ok": True}

    snapshot = Path(f"/tmp/hostagent-xen-snapshot-{os.getpid()}")  # the installed dom0, shared: large files
    shutil.rmtree(snapshot, ignore_errors=True)
    xen_started = time.monotonic()
    xen: dict[str, subprocess.Popen[bytes]] = {}
    for number, module in enumerate(XEN_MODULES):
        with (cache / f"test-xen-{number}.log").open("w") as out:
            xen[module] = subprocess.Popen(
                [str(bin_dir / "pytest"), "--durations=15", f"--basetemp=/tmp/hostagent-pytest-xen{number}",
                 "-p", "no:cacheprovider", module], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, "HOSTAGENT_XEN_SNAPSHOT": str(snapshot)})
    ended: dict[str, float] = {}

    def stop_xen() -> None:
        for process in xen.values():
            with_group(process, signal.SIGTERM)

    def stop(signum: int, frame: object) -> None:
        stop_xen()
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, stop)

    rest_output: list[str] = []
    ok = True
    try:
        for name, argv in (("lint", ["make", "--no-print-directory", "lint"]),
                           ("fuzz", ["make", "--no-print-directory", "fuzz"])):
            began = time.monotonic()
            output: list[str] = []
            rc = run(argv, output)
            parts[name] = {"seconds": time.monotonic() - began, "ok": rc == 0, "tests": counts("".join(output))}
            if rc != 0:
                ok = False
                break
        if ok:
            began = time.monotonic()
            rc = run([str(bin_dir / "pytest"), "--durations=40", "--basetemp=/tmp/hostagent-pytest",
                      *[f"--ignore={module}" for module in XEN_MODULES], "--ignore=tests/fuzz"], rest_output)
            parts["the rest"] = {"seconds": time.monotonic() - began, "ok": rc == 0,
                                 "tests": counts("".join(rest_output))}
            ok = rc == 0
        else:
            stop_xen()
        while len(ended) < len(xen):
            for module, process in xen.items():
                if module not in ended and process.poll() is not None:
                    ended[module] = time.monotonic()
            time.sleep(1)
    except KeyboardInterrupt:
        stop_xen()
        for process in xen.values():
            process.wait()
        raise
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)
    for number, (module, process) in enumerate(xen.items()):
        text = (cache / f"test-xen-{number}.log").read_text(errors="replace")
        print(f"=== {module} (ran beside the rest) ===")
        print(text, end="" if text.endswith("\n") else "\n")
        parts[f"{module} (beside the rest)"] = {"seconds": ended[module] - xen_started,
                                                "ok": process.returncode == 0, "tests": counts(text)}
        ok = ok and process.returncode == 0

    whole = time.time() - started
    parts["make test"] = {"seconds": whole, "ok": ok}
    (cache / "suite-times.json").write_text(json.dumps(
        {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parts": parts}, indent=2) + "\n")
    print("=== suite time (docs/testing.md keeps the last fresh-clone figures) ===")
    for name, part in parts.items():
        tests = part.get("tests") or {}
        said = ", ".join(f"{n} {k}" for k, n in tests.items()) if isinstance(tests, dict) else ""
        status = "ok" if part["ok"] else "FAILED"
        print(f"{name:<42} {minutes(float(part['seconds'])):>13}  {status}{'  (' + said + ')' if said else ''}")
    total: dict[str, int] = {}
    for part in parts.values():
        for key, number in (part.get("tests") or {}).items():  # type: ignore[union-attr]
            total[key] = total.get(key, 0) + number
    failed = total.get("failed", 0) + total.get("errors", 0)
    if not ok and not failed:
        failed = 1  # a part that is not a test failed (the linters): say so in the count too
    closing = f"{total.get('passed', 0)} passed, {failed} failed"
    if total.get("skipped"):
        closing += f", {total['skipped']} skipped"
    print(closing)
    return 0 if ok else 1


def with_group(process: subprocess.Popen[bytes], signum: int) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)


if __name__ == "__main__":
    sys.exit(main())
