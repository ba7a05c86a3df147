"""The ``pmrun`` command: a thin shell over the library.

``pmrun [OPTIONS] -- COMMAND`` (the launcher) takes a fast path that imports neither
click nor psutil, because every agent start pays for it; every other subcommand is a
click command loaded only when named.
"""

from __future__ import annotations

import os
import sys

# Subcommand name -> "module:attribute"; loaded on demand so `pmrun status` does not
# import matplotlib and `pmrun -- cmd` imports none of them.
COMMANDS: dict[str, str] = {
    "run": "pmrun.cli.run_help:run_command",
    "coordinator": "pmrun.cli.lifecycle:coordinator_group",
    "cleanup": "pmrun.cli.coordinator:cleanup_command",
    "status": "pmrun.cli.diag:status_command",
    "top": "pmrun.cli.diag:top_command",
    "events": "pmrun.cli.diag:events_command",
    "heap": "pmrun.cli.diag:heap_command",
    "plot": "pmrun.cli.diag:plot_command",
    "init": "pmrun.cli.project:init_command",
    "config": "pmrun.cli.project:config_command",
    "gc": "pmrun.cli.cgroup:gc_command",
    "completion": "pmrun.cli.completion:completion_command",
    "shim": "pmrun.cli.shim:shim_command",
    "claude-pm": "pmrun.cli.claude_pm:claude_pm_command",
}

# Click's completion scripts call `pmrun` with this variable set (and no arguments).
COMPLETE_VAR = "_PMRUN_COMPLETE"


def _is_launch(argv: list[str]) -> bool:
    """True for ``pmrun [run-options] -- cmd`` and ``pmrun [run-options] cmd``."""
    if not argv or COMPLETE_VAR in os.environ:
        return False
    first = argv[0]
    return first not in COMMANDS and first not in ("-h", "--help", "-V", "--version")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    completing = COMPLETE_VAR in os.environ
    if _is_launch(args) or (not completing and (args[:1] == ["run"] or not args)):
        # `pmrun` and `pmrun run` alone are a launch without a command: pmrun's error, 125.
        from .run import launch_main

        sys.exit(launch_main(args[1:] if args[:1] == ["run"] else args))
    from ._group import cli

    cli.main(args=args, prog_name="pmrun")
