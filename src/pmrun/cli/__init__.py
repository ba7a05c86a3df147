"""The ``pmrun`` command: a thin shell over the library.

``pmrun [OPTIONS] -- COMMAND`` (the launcher) takes a fast path that imports neither
click nor psutil, because every agent start pays for it; every other subcommand is a
click command loaded only when named.
"""

from __future__ import annotations

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
}


def _is_launch(argv: list[str]) -> bool:
    """True for ``pmrun [run-options] -- cmd`` and ``pmrun [run-options] cmd``."""
    if not argv:
        return False
    first = argv[0]
    if first in COMMANDS or first in ("-h", "--help", "--version"):
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if _is_launch(args) or (args[:1] == ["run"] and len(args) > 1):
        from .run import launch_main

        sys.exit(launch_main(args[1:] if args[0] == "run" else args))
    from ._group import cli

    cli.main(args=args, prog_name="pmrun")
