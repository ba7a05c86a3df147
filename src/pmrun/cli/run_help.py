"""Click's view of the launcher's options, for help and shell completion (never on the launch path).

The launcher parses its options by hand from :data:`pmrun.cli.run.OPTIONS`; this module turns
the same table into click parameters so that ``pmrun --help``, ``pmrun run --help`` and
completion of ``pmrun --<TAB>`` all show exactly what the launcher accepts.
"""

from __future__ import annotations

import click

from ._types import setting_option
from .run import OPTIONS

LAUNCH_SYNOPSIS = "[OPTIONS] [--] COMMAND [ARGS]..."

EXIT_STATUS = (
    "Exit status: the command's own; 128+N if a signal N ended it; 137 if pmrun stopped it"
    " for a memory limit; 125 for pmrun's own errors; 126 not executable; 127 not found."
    " Options also come from PMRUN_* variables and pmrun.toml (see `pmrun config`)."
)

LAUNCH_EXAMPLES = """\b
Examples:
  pmrun -- node agent.js                 # the defaults: --max-rss 1G, --warn-rss 500M
  pmrun --max-rss 2G --name planner -- python agent.py
  pmrun --max-rss 300M --report - -- python -c 'b"x" * (1 << 30)'   # stopped: exit 137
  pmrun --record run.jsonl -- node agent.js && pmrun plot run.jsonl"""


def launch_params() -> list[click.Parameter]:
    """One click option per launcher option, with the launcher's own help text."""
    params: list[click.Parameter] = []
    for o in OPTIONS:
        if o.setting is not None:
            params.append(setting_option(o.setting, expose_value=False))
        elif o.metavar is None:
            params.append(click.Option([o.flag], is_flag=True, expose_value=False, help=o.help))
        else:
            kind = click.Path() if o.metavar == "FILE" else None
            params.append(
                click.Option(
                    [o.flag], metavar=o.metavar, type=kind, expose_value=False, help=o.help
                )
            )
    return params


def _click_command() -> click.Command:
    def run(**_: object) -> None:  # pragma: no cover - main() routes `run` to launch_main
        raise click.UsageError("use pmrun [OPTIONS] -- COMMAND")

    return click.Command(
        "run",
        callback=run,
        params=[*launch_params(), click.Argument(["command"], nargs=-1, required=True)],
        help=(
            "Run COMMAND under per-agent memory limits (also: pmrun [OPTIONS] -- COMMAND).\n\n"
            + EXIT_STATUS
        ),
        epilog=LAUNCH_EXAMPLES,
        context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": True},
    )


run_command = _click_command()
