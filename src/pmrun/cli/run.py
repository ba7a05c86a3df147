"""``pmrun [OPTIONS] -- COMMAND [ARGS]...``: the launcher's command line.

Every agent start pays for this module, so it parses its few options by hand from
one table (:data:`OPTIONS`) instead of importing click; ``pmrun run --help`` builds
click's help from the same table.
"""

from __future__ import annotations

import os

from ..errors import CommandNotExecutable, CommandNotFound, ExitCode, PmrunError


class Option:
    """One launcher option, as the fast parser and `pmrun run --help` both see it."""

    __slots__ = ("flag", "setting", "metavar", "help", "value")

    def __init__(
        self,
        flag: str,  # "--max-rss"
        setting: str | None,  # config setting it sets ("agent.max-rss"), None for launcher-only
        metavar: str | None,  # None for a boolean flag
        help: str,
        value: object = True,  # what a boolean flag stores
    ) -> None:
        self.flag = flag
        self.setting = setting
        self.metavar = metavar
        self.help = help
        self.value = value


OPTIONS: tuple[Option, ...] = (
    Option("--max-rss", "agent.max-rss", "SIZE", "hard limit on the tree's RSS (default 1G)"),
    Option(
        "--warn-rss", "agent.warn-rss", "SIZE", "warn once when the tree passes this (default 500M)"
    ),
    Option("--max-as", "agent.max-as", "SIZE", "RLIMIT_AS on the command, or 'off' (default 256G)"),
    Option(
        "--grace",
        "agent.grace",
        "SECONDS",
        "SIGTERM to SIGKILL delay when stopping (default 5; 0 = SIGKILL)",
    ),
    Option(
        "--backend",
        "agent.backend",
        "auto|cgroup|sampling",
        "how the limit is enforced (default auto)",
    ),
    Option(
        "--priority",
        "agent.priority",
        "N",
        "higher is spared longer by the coordinator (default 0)",
    ),
    Option(
        "--name", None, "NAME", "the agent's name in status and events (default: command basename)"
    ),
    Option("--socket", "coordinator.socket", "PATH", "the coordinator's socket"),
    Option("--no-coordinator", "agent.coordinator", None, "run standalone: no coordinator", False),
    Option(
        "--no-pause",
        "agent.pause",
        None,
        "never pause this agent under pressure (e.g. an interactive session)",
        False,
    ),
    Option(
        "--expect",
        "agent.expect",
        "SIZE",
        "expected peak, for waiting before start (default: learned, else --warn-rss)",
    ),
    Option("--no-wait", "agent.wait", None, "start at once even if memory is short", False),
    Option(
        "--wait-timeout",
        "agent.wait-timeout",
        "SECONDS",
        "longest wait for memory before starting (default: no bound)",
    ),
    Option(
        "--wait-expired",
        "agent.wait-expired",
        "start|exit",
        "after --wait-timeout: start anyway (default) or exit 75",
    ),
    Option("--report", None, "FILE", "write a JSON exit report to FILE ('-' = stderr)"),
    Option("--record", None, "FILE", "record the tree's RSS over time to FILE (for `pmrun plot`)"),
    Option("--trace-heap", None, None, "start tracemalloc in Python services (for `pmrun heap`)"),
    Option("--quiet", None, None, "no warning line on stderr (the report still has it)"),
)
BY_FLAG = {o.flag: o for o in OPTIONS}


class Parsed:
    """What the command line said: the command, settings given as flags, launcher-only options."""

    __slots__ = ("command", "flags", "extra", "help")

    def __init__(
        self,
        command: list[str],
        flags: dict[str, object],  # config setting -> raw value
        extra: dict[str, object],  # launcher-only options, keyed by flag without dashes
        help: bool = False,
    ) -> None:
        self.command = command
        self.flags = flags
        self.extra = extra
        self.help = help


def parse(args: list[str]) -> Parsed:
    """Split ``[OPTIONS] [--] COMMAND [ARGS]`` like env(1) and prlimit(1) do."""
    from ..errors import UsageError

    flags: dict[str, object] = {}
    extra: dict[str, object] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return Parsed(args[i + 1 :], flags, extra)
        if arg in ("-h", "--help"):
            return Parsed([], flags, extra, help=True)
        if not arg.startswith("-") or arg == "-":
            return Parsed(args[i:], flags, extra)
        name, eq, value = arg.partition("=")
        opt = BY_FLAG.get(name)
        if opt is None:
            raise UsageError(f"unknown option {name} (see pmrun run --help)")
        if opt.metavar is None:
            if eq:
                raise UsageError(f"{name} takes no value")
            raw: object = opt.value
        elif eq:
            raw = value
        else:
            i += 1
            if i >= len(args):
                raise UsageError(f"{name} needs a value ({opt.metavar})")
            raw = args[i]
        if opt.setting is not None:
            flags[opt.setting] = raw
        else:
            extra[name[2:]] = raw
        i += 1
    return Parsed([], flags, extra)


def build_settings(parsed: Parsed):
    """Resolve flags against environment and config files into launcher settings."""
    from .. import config
    from ..launcher import LaunchSettings
    from ..report import Limits

    cfg = config.load(parsed.flags)
    max_rss, warn_rss = cfg["agent.max-rss"], cfg["agent.warn-rss"]
    if cfg.source("agent.warn-rss") == "default" and warn_rss > max_rss:
        # Only an explicit --warn-rss above --max-rss is an error; the default
        # warning follows a smaller limit down, keeping the defaults' ratio (1/2).
        warn_rss = max_rss // 2
    limits = Limits(
        max_rss=max_rss,
        warn_rss=warn_rss,
        max_as=cfg["agent.max-as"],
        grace_s=cfg["agent.grace"],
    )
    x = parsed.extra
    return LaunchSettings(
        limits=limits,
        name=str(x.get("name", "")),
        backend=cfg["agent.backend"],
        priority=cfg["agent.priority"],
        coordinator=cfg["agent.coordinator"],
        socket=cfg["coordinator.socket"],
        report_path=str(x["report"]) if "report" in x else None,
        record_path=str(x["record"]) if "record" in x else None,
        trace_heap=bool(x.get("trace-heap", False)),
        quiet=bool(x.get("quiet", False)),
        pause=cfg["agent.pause"],
        admission=_admission(cfg),
    )


def _admission(cfg):
    """Wait-before-start settings; None with --no-wait."""
    if not cfg["agent.wait"]:
        return None
    from .._admit import AdmitSettings

    return AdmitSettings(
        expect=cfg["agent.expect"],
        timeout_s=cfg["agent.wait-timeout"],
        on_timeout=cfg["agent.wait-expired"],
    )


def _fail(message: str, code: int) -> int:
    os.write(2, f"pmrun: {message}\n".encode(errors="replace"))
    return code


def launch_main(args: list[str]) -> int:
    """Entry point of ``pmrun [OPTIONS] -- COMMAND``; returns the exit status."""
    from ..launcher import Launcher

    try:
        parsed = parse(args)
        if parsed.help:
            from ._group import cli

            cli.main(args=["run", "--help"], prog_name="pmrun")
            return 0
        if not parsed.command:
            return _fail(
                "no command given: use pmrun [OPTIONS] -- COMMAND [ARGS]...", ExitCode.LAUNCH_ERROR
            )
        return Launcher(parsed.command, build_settings(parsed)).run()
    except (CommandNotFound, CommandNotExecutable) as e:
        return _fail(str(e), e.exit_code)
    except PmrunError as e:
        return _fail(str(e), ExitCode.LAUNCH_ERROR)
    except KeyboardInterrupt:  # before the command started
        return 130
