"""The small error hierarchy every boundary translates into (after psutil's)."""

from __future__ import annotations


class HostagentError(Exception):
    """Base of every error hostagent raises on purpose; its message is shown to the operator."""


class ParseError(HostagentError):
    """Input that does not follow the format we read, with the file and line that broke it."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        self.source = source
        self.line = line
        self.reason = message
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")


class ProbeUnavailable(HostagentError):
    """A file or command the probe needs cannot be read or run (permission, missing tool, timeout)."""


class CommandTimeout(ProbeUnavailable):
    """An external command did not finish within its timeout and was killed."""


class ConfigError(HostagentError):
    """The configuration file is invalid; the message names the file and key."""


class ActionRefused(HostagentError):
    """An interlock refused a change to a disk, array or guest."""
