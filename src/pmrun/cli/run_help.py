"""``pmrun run --help``: click's view of the launcher's options (never on the launch path)."""

from __future__ import annotations

from .run import OPTIONS


def _click_command():
    import click

    def run(**_: object) -> None:  # pragma: no cover - main() routes `run` to launch_main
        raise click.UsageError("use pmrun [OPTIONS] -- COMMAND")

    params: list[click.Parameter] = []
    for o in OPTIONS:
        if o.metavar is None:
            params.append(click.Option([o.flag], is_flag=True, help=o.help))
        else:
            params.append(click.Option([o.flag], metavar=o.metavar, help=o.help))
    params.append(click.Argument(["command"], nargs=-1, required=True))
    return click.Command(
        "run",
        callback=run,
        params=params,
        help=(
            "Run COMMAND under per-agent memory limits (also: pmrun [OPTIONS] -- COMMAND).\n\n"
            "Exit status: the command's own; 128+N if a signal N ended it; 137 if pmrun stopped it"
            " for a memory limit; 125 for pmrun's own errors; 126 not executable; 127 not found."
            " Options also come from PMRUN_* variables and pmrun.toml (see `pmrun config`)."
        ),
        context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": True},
    )


run_command = _click_command()
