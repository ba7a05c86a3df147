"""The one error hierarchy and the exit codes pmrun documents.

Every error a user can cause is a :class:`PmrunError` whose message says what to
do; the CLI prints it as one line and exits with its ``exit_code``.
"""

from __future__ import annotations


class ExitCode:
    """Exit statuses pmrun itself produces (the command's own pass through).

    Plain int constants, not an IntEnum: importing enum costs every agent start ~2 ms.
    """

    OK: int = 0
    FAILURE: int = 1  # a subcommand failed (e.g. no coordinator answered)
    USAGE: int = 2  # bad arguments to a subcommand
    PROTECTED: int = 3  # `pmrun init` left a framework source tree's CLAUDE.md alone
    LAUNCH_ERROR: int = 125  # `pmrun -- cmd`: pmrun's own error (bad size, warn > max, ...)
    NOT_EXECUTABLE: int = 126  # the command exists but cannot be executed
    NOT_FOUND: int = 127  # the command was not found
    MEMORY_LIMIT: int = 137  # stopped for exceeding a memory limit (128 + SIGKILL)


class PmrunError(Exception):
    """Base of every error pmrun reports to a user."""

    exit_code: int = ExitCode.FAILURE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(PmrunError):
    """The user's arguments, environment or config are wrong."""

    exit_code = ExitCode.USAGE


class SizeError(UsageError):
    """A size string such as ``1.5GiB`` could not be parsed."""


class ConfigError(UsageError):
    """A config file is unreadable or holds a bad value."""


class CommandNotFound(PmrunError):
    exit_code = ExitCode.NOT_FOUND


class CommandNotExecutable(PmrunError):
    exit_code = ExitCode.NOT_EXECUTABLE


class CoordinatorUnavailable(PmrunError):
    """No coordinator answers on the socket."""


class SocketSecurityError(PmrunError):
    """The socket path or its directory is not safely ours (symlink, other owner)."""


class ProtocolError(PmrunError):
    """A frame on the coordinator socket is malformed; ``code`` is the protocol's error code."""

    def __init__(self, message: str, code: str = "bad-frame") -> None:
        super().__init__(message)
        self.code = code  # "bad-frame", "too-large", "bad-version" or "unknown-type"


class CgroupError(PmrunError):
    """A cgroup could not be created, joined or read."""
