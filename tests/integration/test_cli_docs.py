"""The CLI's own documentation: --help with exit codes and examples, help for every subcommand,
the man page and bash completion generated from the parser (and current), colour on a terminal
only and never with NO_COLOR, and the offline wheelhouse list read from pyproject.toml."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from hostagent.cli import build_parser
from hostagent.clidoc import bash_completion, man_page, subcommands
from tests.helpers import EXAMPLES, REPO
from tests.integration.test_cli import hostagent


def test_every_subcommand_has_help_and_every_help_has_exit_codes() -> None:
    parser = build_parser()
    commands = list(subcommands(parser))
    assert len(commands) >= 39
    assert [path for path, _, help_text in commands if not help_text.strip()] == []
    for path, child, _ in commands:
        assert child.epilog is not None and "3  UNKNOWN" in child.epilog, path
    assert "examples:\n  hostagent check" in hostagent("check", "--help").stdout


def test_the_shipped_man_page_and_completion_are_the_generated_ones() -> None:
    parser = build_parser()
    assert (REPO / "hostagent/data/hostagent.8").read_text() == man_page(parser), \
        "run: python -m hostagent.clidoc man > hostagent/data/hostagent.8"
    assert (REPO / "hostagent/data/hostagent.bash").read_text() == bash_completion(parser), \
        "run: python -m hostagent.clidoc bash > hostagent/data/hostagent.bash"


def test_the_man_page_renders_without_warnings() -> None:
    proc = subprocess.run(["man", "--warnings", "-l", str(REPO / "hostagent/data/hostagent.8")],
                          capture_output=True, text=True, env={**os.environ, "MANWIDTH": "100", "MANPAGER": "cat"})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "hostagent disk replace" in proc.stdout and "EXIT STATUS" in proc.stdout


def complete(line: str) -> list[str]:
    """What bash offers for the last word of ``line`` with the shipped completion loaded."""
    words = line.split(" ")
    script = (f"source {REPO / 'hostagent/data/hostagent.bash'}\n"
              f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
              "_hostagent; printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return proc.stdout.split()


def test_bash_completion_offers_commands_then_options() -> None:
    assert "check" in complete("hostagent ") and "fleet" in complete("hostagent ")
    assert complete("hostagent di") == ["disk"]
    assert sorted(complete("hostagent disk re")) == ["replace"]
    assert "--new" in complete("hostagent disk replace --old sdb --")
    assert complete("hostagent alert a") == ["ack", "acks"]


def on_terminal(*args: str, env: dict[str, str]) -> str:
    """hostagent's output when its stdout is a terminal (a pty)."""
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "hostagent", *args], stdout=child, stderr=subprocess.DEVNULL,
                            env={k: v for k, v in {**os.environ, **env}.items() if v is not None})
    os.close(child)
    chunks = []
    deadline = time.monotonic() + 60  # a hung child fails the test, never hangs it
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=60)
    os.close(main)
    return b"".join(chunks).decode()


def test_colour_on_a_terminal_and_never_with_no_color() -> None:
    failed = str(EXAMPLES / "failed-member")
    env = {"TERM": "xterm", "NO_COLOR": ""}
    assert "\033[1;31mCRITICAL\033[0m - md0 degraded" in on_terminal("check", "--root", failed, env=env)
    assert "\033[" not in on_terminal("check", "--root", failed, env={**env, "NO_COLOR": "1"})
    assert "\033[" not in hostagent("check", "--root", failed).stdout  # a pipe: no colour


def test_the_wheelhouse_list_is_pyprojects() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    listed = subprocess.run([sys.executable, str(REPO / "ansible/wheelhouse.py")], capture_output=True, text=True,
                            check=True).stdout.split()
    assert listed == extras["agent"] + extras["controller"]
    assert {"dnspython>=2.3", "publicsuffixlist>=0.10"} <= set(listed)
    assert "python3 wheelhouse.py | xargs python3 -m pip download" in (REPO / "README.md").read_text()
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def fenced(doc: str, language: str) -> str:
    text = (REPO / "docs" / doc).read_text()
    return text.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_the_documented_sudoers_line_parses(tmp_path: Path) -> None:
    sudoers = tmp_path / "hostagent-nagios"
    sudoers.write_text(fenced("monitoring.md", "sudoers"))
    sudoers.chmod(0o440)
    proc = subprocess.run(["visudo", "-c", "-f", str(sudoers)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "parsed OK" in proc.stdout


def test_the_documented_nrpe_commands_run(tmp_path: Path) -> None:
    """Each NRPE command, without its sudo and with a snapshot root, prints a plugin line."""
    nrpe = fenced("monitoring.md", "ini").splitlines()
    lines = [line.split("=", 1)[1] for line in nrpe if line.startswith("command[")]
    assert len(lines) == 2
    check = lines[0].split()
    assert check[:2] == ["/usr/bin/sudo", "/opt/hostagent/venv/bin/hostagent"]
    proc = hostagent(*check[2:], "--root", str(EXAMPLES / "failed-member"))
    assert proc.returncode == 2 and proc.stdout.startswith("CRITICAL - md0 degraded (1 of 2)")
