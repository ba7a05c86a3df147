"""``pmrun [OPTIONS] -- COMMAND [ARGS]...``: the launcher's command line.

Every agent start pays for this module, so it parses its few options by hand from
one table (:data:`OPTIONS`) instead of importing click; ``pmrun run --help`` builds
click's help from the same table. The options that set a config setting are made from
:data:`pmrun.config.SETTINGS`, which holds their flags, help and defaults.
"""

from __future__ import annotations

import os

from .. import config
from ..errors import CommandNotExecutable, CommandNotFound, ExitCode, PmrunError


class Option:
    """One launcher option, as the fast parser and `pmrun run --help` both see it.

    An option that sets a config setting takes its flag, help and default from that
    :class:`~pmrun.config.Setting`; the launcher's own options are written here.
    """

    __slots__ = ("flag", "metavar", "_help", "setting", "value")

    def __init__(
        self, flag: str, metavar: str | None, help: str, setting: config.Setting | None = None
    ) -> None:
        self.flag = flag  # "--report"
        self.metavar = metavar  # None for a boolean flag
        self._help = help
        self.setting = setting  # the config.Setting it sets; None for a launcher-only option
        # What a boolean flag stores: True, or a switch's opposite of its default.
        self.value = True if setting is None else setting.flag_value

    @classmethod
    def of(cls, setting: config.Setting) -> Option:
        metavar = None if setting.flag_value is not None else setting.kind.metavar
        return cls(setting.flag, metavar, "", setting)

    @property
    def help(self) -> str:
        """Its --help line; a setting's is made only when asked (a launch never needs it)."""
        return self._help if self.setting is None else self.setting.option_help()


# Every agent setting is a launcher flag, and so is the socket it registers on.
LAUNCH_SETTINGS = (
    *(s for s in config.SETTINGS if s.section == "agent"),
    config.BY_NAME["coordinator.socket"],
)
OPTIONS: tuple[Option, ...] = (
    *(Option.of(s) for s in LAUNCH_SETTINGS),
    Option("--name", "NAME", "the agent's name in status and events (default: command basename)"),
    Option("--report", "FILE", "write a JSON exit report to FILE ('-' = stderr)"),
    Option("--record", "FILE", "record the tree's RSS over time to FILE (for `pmrun plot`)"),
    Option("--trace-heap", None, "start tracemalloc in Python services (for `pmrun heap`)"),
    Option("--quiet", None, "no warning line on stderr (the report still has it)"),
)
# Not in --help: for pmrun.launch, which reads the command's pid from the fd it passes.
HIDDEN = (Option("--pid-fd", "N", "write the command's pid to fd N once it runs"),)
BY_FLAG = {o.flag: o for o in (*OPTIONS, *HIDDEN)}


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
            flags[opt.setting.name] = raw
        else:
            extra[name[2:]] = raw
        i += 1
    return Parsed([], flags, extra)


def build_settings(parsed: Parsed):
    """Resolve flags against environment and config files into launcher settings."""
    from ..launcher import LaunchSettings
    from ..report import Limits, private_fd

    cfg = config.load(parsed.flags, cwd=_cwd())
    max_rss, warn_rss = cfg["agent.max-rss"], cfg["agent.warn-rss"]
    if cfg.source("agent.warn-rss") == "default" and warn_rss >= max_rss:
        # Only an explicit --warn-rss above --max-rss is an error; the default
        # warning follows a limit at or below it down, keeping the defaults' ratio (1/2):
        # a warning at the limit itself would never come before the stop.
        warn_rss = max_rss // 2
    limits = Limits(
        max_rss=max_rss,
        warn_rss=warn_rss,
        max_as=cfg["agent.max-as"],
        grace_s=cfg["agent.grace"],
    )
    x = parsed.extra
    private_fd(str(x["report"]) if "report" in x else None)
    name = str(x.get("name", ""))
    if name:  # the coordinator shows at most MAX_AGENT_NAME characters of it
        from ..coordinator.protocol import MAX_AGENT_NAME
        from ..errors import UsageError

        if len(name) > MAX_AGENT_NAME:
            raise UsageError(f"--name is {len(name)} characters long; at most {MAX_AGENT_NAME}")
    return LaunchSettings(
        limits=limits,
        name=name,
        backend=cfg["agent.backend"],
        priority=cfg["agent.priority"],
        coordinator=cfg["agent.coordinator"],
        socket=cfg["coordinator.socket"],
        report_path=str(x["report"]) if "report" in x else None,
        record_path=str(x["record"]) if "record" in x else None,
        trace_heap=bool(x.get("trace-heap", False)),
        quiet=bool(x.get("quiet", False)),
        pid_fd=_pid_fd(x.get("pid-fd")),
        pause=cfg["agent.pause"],
        admission=_admission(cfg),
    )


def _admission(cfg):
    """Wait-before-start settings; None with --no-wait, or with no coordinator to wait for
    (its protocol then stays off the path to exec)."""
    if not cfg["agent.wait"] or not cfg["agent.coordinator"]:
        return None
    from .._admit import AdmitSettings

    return AdmitSettings(
        expect=cfg["agent.expect"],
        timeout_s=cfg["agent.wait-timeout"],
        on_timeout=cfg["agent.wait-expired"],
    )


def _pid_fd(raw: object) -> int | None:
    """``--pid-fd N``: an fd of pmrun's alone, so the command does not inherit it."""
    from ..errors import UsageError

    if raw is None:
        return None
    if not str(raw).isdigit():
        raise UsageError(f"--pid-fd needs an open file descriptor number, not {raw!r}")
    fd = int(str(raw))
    try:
        os.set_inheritable(fd, False)
    except OSError as e:
        raise UsageError(f"--pid-fd {fd}: {e.strerror}") from None
    return fd


def _cwd():  # -> Path | None (the launch path does not import typing)
    """Where to look for the project config from: the cwd, or where a deleted one was.

    A deleted working directory is no error for the command (it runs there as bare), so
    the project config is looked for from its former place upwards.
    """
    try:
        os.getcwd()
        return None
    except OSError:
        pass
    from pathlib import Path  # only here: importing it costs every agent start ~9 ms

    try:
        former = os.readlink("/proc/self/cwd").removesuffix(" (deleted)")
    except OSError:
        return Path("/")
    return Path(former)


def reserve_std_fds() -> None:
    """Hold closed fds 0-2 with /dev/null, close-on-exec, until the command starts.

    Started with ``>&-`` or ``2>&-``, pmrun would otherwise hand those numbers to its own
    pipes and files (and write its messages into them); close-on-exec gives the command
    the same closed fd it would have had bare.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            held = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            if held != fd:
                os.dup2(held, fd, inheritable=False)
                os.close(held)


def _fail(message: str, code: int) -> int:
    try:
        os.write(2, f"pmrun: {message}\n".encode(errors="replace"))
    except OSError:  # stderr's reader is gone: the exit code still says it
        pass
    return code


def launch_main(args: list[str]) -> int:
    """Entry point of ``pmrun [OPTIONS] -- COMMAND``; returns the exit status."""
    from ..launcher import Launcher

    reserve_std_fds()
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
        launcher = Launcher(parsed.command, build_settings(parsed))
        code = launcher.run()
        report = launcher.report  # None when the command never started (--wait-expired exit)
        if report is not None and report.reason == "signal" and report.signal:
            from .._signals import die_by

            die_by(report.signal)  # as the command died: a shell loop stops on ^C
        return code
    except (CommandNotFound, CommandNotExecutable) as e:
        return _fail(str(e), e.exit_code)
    except PmrunError as e:
        return _fail(str(e), ExitCode.LAUNCH_ERROR)
    except KeyboardInterrupt:  # before the command started
        return 130
