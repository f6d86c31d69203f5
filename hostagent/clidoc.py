"""What the argument parser knows, written out for people and shells: ``--help`` epilogs with exit
codes and examples, the man page hostagent(8), and bash completion.  All are generated from
:func:`hostagent.cli.build_parser`, so none can drift from the options that exist; the generated
files in ``hostagent/data`` are checked against a fresh generation by the tests.

    python -m hostagent.clidoc man > hostagent/data/hostagent.8
    python -m hostagent.clidoc bash > hostagent/data/hostagent.bash
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

EXIT_CODES = """exit codes (Nagios plugin codes):
  0  OK, or the command did what was asked
  1  WARNING: the worst open problem is a warning (or a command partly failed)
  2  CRITICAL: the worst open problem is critical
  3  UNKNOWN: a usage or configuration error, or the state could not be read"""

EXAMPLES = {
    "hostagent": ["hostagent check", "hostagent check --json", "hostagent disk status",
                  "hostagent boot repair", "hostagent status"],
    "hostagent check": ["hostagent check                      # plugin line first, then the long output",
                        "hostagent check --only md,smart --json",
                        "hostagent check --root /srv/snapshots/hv3   # a snapshot, offline"],
    "hostagent status": ["hostagent status    # a passive check of the daemon: exits with the worst open problem"],
    "hostagent disk replace": ["hostagent disk replace --old sdb --new sdc           # dry run: the plan",
                               "hostagent disk replace --old sdb --new sdc --apply"],
    "hostagent disk locate": ["hostagent disk locate sdb --apply", "hostagent disk locate sdb --off --apply"],
    "hostagent disk fail": ["hostagent disk fail sdb1 --array md0   # dry run: the ladder and the interlocks"],
    "hostagent boot repair": ["hostagent boot repair            # what would be installed where",
                              "hostagent boot repair --apply"],
    "hostagent alert ack": ["hostagent alert ack md.degraded md0 --until 3d --comment 'disk ordered, T-42'"],
    "hostagent fleet ack": ["hostagent fleet ack md.degraded hv2/md0 --until 8h"],
    "hostagent maintenance": ["hostagent maintenance schedule --reboot-at '2026-12-06 03:00' --reason kernel "
                              "--dry-run", "hostagent maintenance list"],
    "hostagent fleet status": ["hostagent fleet poll && hostagent fleet status"],
    "hostagent md-event": ["mdadm --monitor --scan --oneshot --test   # each array's TestMessage reaches the audit "
                           "log", "hostagent log --last 5"],
}


def subcommands(parser: argparse.ArgumentParser, path: str = "hostagent"
                ) -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    """Every (sub)command: its full name, its parser, and the help line its parent gives it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, child in action.choices.items():
                yield f"{path} {name}", child, helps.get(name, "")
                yield from subcommands(child, f"{path} {name}")


def add_epilogs(parser: argparse.ArgumentParser) -> None:
    """Examples (where there are some) and the exit codes under every --help."""
    for path, child in [("hostagent", parser), *((p, c) for p, c, _ in subcommands(parser))]:
        examples = EXAMPLES.get(path)
        child.formatter_class = argparse.RawDescriptionHelpFormatter
        child.epilog = ("examples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\n" if examples else "") + EXIT_CODES


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines())


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        if action.option_strings:
            names = ", ".join(action.option_strings)
            if action.nargs != 0:
                names += " " + str(action.metavar or action.dest.upper())
        else:
            names = str(action.metavar or action.dest)
        lines += [".TP", f"\\fB{_roff(names)}\\fR", _roff(action.help or "")]
    return lines


def man_page(parser: argparse.ArgumentParser) -> str:
    """hostagent(8) in roff: every command with its options, then exit codes, files and examples."""
    from hostagent import __version__

    date = "2026-12-04"  # fixed, so the generated page is reproducible
    lines = [f'.TH HOSTAGENT 8 "{date}" "hostagent {__version__}" "System Administration"',
             ".SH NAME", "hostagent \\- host\\-health and maintenance agent for Xen/KVM hypervisors on md RAID1",
             ".SH SYNOPSIS", "\\fBhostagent\\fR [\\fB\\-\\-config\\fR \\fIFILE\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
             ".SH DESCRIPTION", _roff(parser.description or ""),
             "It checks md arrays, SMART, ERC and timeouts, the bootloader on every mirror member, hung disks, "
             "guests and the network; it alerts, and it runs maintenance reboots with guest save and restore.",
             ".SH GLOBAL OPTIONS", *_options(parser), ".SH COMMANDS"]
    for path, child, help_text in subcommands(parser):
        if any(isinstance(a, argparse._SubParsersAction) for a in child._actions):
            lines += [".SS " + _roff(path), _roff(help_text)]
            continue
        lines += [".SS " + _roff(path), _roff(help_text), *_options(child)]
        if path in EXAMPLES:
            lines += [".PP", "Examples:", ".nf", *(_roff(e) for e in EXAMPLES[path]), ".fi"]
    lines += [".SH EXIT STATUS", ".nf", _roff(EXIT_CODES.split("\n", 1)[1]), ".fi",
              ".SH ENVIRONMENT", ".TP", "\\fBHOSTAGENT_CONFIG\\fR", "the configuration file, when \\-\\-config "
              "is not given", ".TP", "\\fBNO_COLOR\\fR", "when set (to anything), no colour on a terminal",
              ".SH FILES", ".TP", "/etc/hostagent/hostagent.toml", "the configuration", ".TP",
              "/var/lib/hostagent", "state, alert spool, status file and audit log (agent.state_dir)",
              ".SH SEE ALSO", "\\fBmdadm\\fR(8), \\fBsmartctl\\fR(8), \\fBgrub\\-install\\fR(8), \\fBxl\\fR(1), "
              "\\fBvirsh\\fR(1); the documentation in /usr/share/doc/hostagent or docs/ in the source"]
    return "\n".join(lines) + "\n"


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion function: subcommands, then each command's options."""
    table: dict[str, list[str]] = {"hostagent": []}
    for path, child, _ in [("hostagent", parser, ""), *subcommands(parser)]:
        words = [o for a in child._actions for o in a.option_strings]
        for action in child._actions:
            if isinstance(action, argparse._SubParsersAction):
                words = list(action.choices) + words
        table[path] = words
    cases = "\n".join(f'        "{path}") words="{" ".join(words)}" ;;' for path, words in sorted(table.items()))
    return f"""# bash completion for hostagent; generated by hostagent.clidoc from the argument parser
_hostagent() {{
    local cur path word i words
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    path="hostagent"
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in -*) continue ;; esac
        case " $(_hostagent_words "$path") " in *" $word "*) path="$path $word" ;; esac
    done
    COMPREPLY=($(compgen -W "$(_hostagent_words "$path")" -- "$cur"))
}}
_hostagent_words() {{
    local words=""
    case "$1" in
{cases}
    esac
    printf '%s' "$words"
}}
complete -o default -F _hostagent hostagent
"""


def main(argv: list[str]) -> int:
    from hostagent.cli import build_parser

    if argv[1:] == ["man"]:
        sys.stdout.write(man_page(build_parser()))
    elif argv[1:] == ["bash"]:
        sys.stdout.write(bash_completion(build_parser()))
    else:
        print("usage: python -m hostagent.clidoc man|bash", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
