"""Settings: one registry, read from flags > environment > project > user > defaults.

:data:`SETTINGS` is the one place of each setting's default and help sentence; its
:class:`Kind` (size, fraction, seconds, ...) parses values and shows them. The launcher's
and the coordinator's options, ``CoordinatorSettings``, `pmrun config` and the docs are
made from it.

Project config is ``pmrun.toml`` or ``[tool.pmrun]`` in ``pyproject.toml``, found in the
current directory or the nearest parent that has one (as ruff and black look for theirs).
User config is ``$XDG_CONFIG_HOME/pmrun/config.toml`` (default ``~/.config/pmrun``).
Both use the same tables: ``[agent]``, ``[coordinator]``, ``[cache]``.

Every resolved value remembers where it came from, which is what ``pmrun config`` shows.
"""

from __future__ import annotations

import os
from _collections_abc import Mapping  # collections.abc without importing collections

from .errors import ConfigError, PmrunError
from .sizes import parse_fraction, parse_size

TYPE_CHECKING = False  # not `from typing import`: the launch path avoids importing typing

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path  # imported at run time only when a config file exists
    from typing import Any


MAX_SECONDS = 86400.0  # a day: longer waits are a typo, and overflow threading's timeouts
MAX_INT = (1 << 63) - 1  # what the coordinator protocol carries
MAX_PRIORITY = (1 << 31) - 1


def _parse_float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number")
    try:
        f = float(v)
    except ValueError as e:
        # "300s", the form `pmrun config` and --help show seconds in.
        if not (isinstance(v, str) and v.strip().endswith("s")):
            raise
        try:
            f = float(v.strip()[:-1])
        except ValueError:
            raise e from None
    if f != f or f < 0 or f == float("inf"):
        raise ValueError("expected a finite number, zero or more")
    return f


def _parse_int(v: Any, most: int = MAX_INT) -> int:
    if isinstance(v, bool):
        raise ValueError("expected a whole number")
    if isinstance(v, float) and not v.is_integer():  # 2.5 and NaN; inf is an OverflowError
        raise ValueError("expected a whole number")
    i = int(v)
    if not 0 <= i <= most:
        raise ValueError(f"expected a whole number from 0 to {most}")
    return i


def _parse_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _shortest(candidates: Iterator[str], parse: Callable[[str], Any], value: Any) -> str | None:
    """The first of ``candidates`` that parses back to ``value`` exactly."""
    for text in candidates:
        if parse(text) == value:
            return text
    return None


class Kind:
    """A type of setting: how a raw value (flag, environment, TOML) is parsed, and shown.

    ``display`` writes a value in the form a user would type it (500M, 80%, 300s), and
    ``parse`` reads that back to the same value: `pmrun config` and ``--help`` show what
    can be pasted into a flag or a config file.
    """

    metavar = "VALUE"  # what --help shows after the flag
    choices: tuple[str, ...] = ()  # the accepted words of a fixed set, for shell completion

    def parse(self, raw: Any) -> Any:
        """The typed value of ``raw``; raises ValueError (or a PmrunError) saying what is expected."""
        raise NotImplementedError

    def display(self, value: Any) -> str:
        return str(value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.metavar})"


_UNIT_BYTES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class Size(Kind):
    """Bytes, given with a binary unit (500M, 1.5G); shown exactly, in the largest unit that is."""

    metavar = "SIZE"

    def parse(self, raw: Any) -> int:
        return parse_size(raw)

    def display(self, value: int) -> str:
        for unit in "TGMK":
            scale = _UNIT_BYTES[unit]
            if value >= scale:
                texts = (f"{value / scale:.{d}f}{unit}" for d in range(3))
                shown = _shortest(texts, parse_size, value)
                if shown is not None:
                    return shown
        return str(value)


class Fraction(Kind):
    """A fraction in [0, 1], given as 80% or 0.8; shown as a percentage."""

    metavar = "FRACTION"

    def parse(self, raw: Any) -> float:
        return parse_fraction(raw)

    def display(self, value: float) -> str:
        texts = (f"{value * 100:.{d}f}%" for d in range(17))
        return _shortest(texts, parse_fraction, value) or repr(value)


class Seconds(Kind):
    """A finite number of seconds, zero or more and at most ``most``; shown as 300s."""

    metavar = "SECONDS"

    def __init__(self, most: float | None = MAX_SECONDS) -> None:
        self.most = most  # None: no bound but finiteness

    def parse(self, raw: Any) -> float:
        f = _parse_float(raw)
        if self.most is not None and f > self.most:
            raise ValueError(f"expected seconds, at most {self.most:g}")
        return f

    def display(self, value: float) -> str:
        return repr(value).removesuffix(".0") + "s"


class Int(Kind):
    """A whole number from 0 to ``most``."""

    def __init__(self, most: int = MAX_INT, metavar: str = "N") -> None:
        self.most = most
        self.metavar = metavar

    def parse(self, raw: Any) -> int:
        return _parse_int(raw, self.most)


class Count(Int):
    """A whole number, 1 or more."""

    def parse(self, raw: Any) -> int:
        i = super().parse(raw)
        if i == 0:
            raise ValueError("expected a whole number, 1 or more")
        return i


class Port(Int):
    """A TCP port number, 0 to 65535."""

    def __init__(self) -> None:
        super().__init__(metavar="PORT")

    def parse(self, raw: Any) -> int:
        i = super().parse(raw)
        if i > 65535:
            raise ValueError("expected a TCP port, 0 to 65535")
        return i


class Bool(Kind):
    """true or false (also 1/0, yes/no, on/off); on a command line, a flag."""

    metavar = "true|false"

    def parse(self, raw: Any) -> bool:
        return _parse_bool(raw)

    def display(self, value: bool) -> str:
        return "true" if value else "false"


class Choice(Kind):
    """One word of a fixed set, in any case."""

    def __init__(self, *options: str) -> None:
        self.choices = options
        self.metavar = "|".join(options)

    def parse(self, raw: Any) -> str:
        s = str(raw).strip().lower()
        if s not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}")
        return s


class Text(Kind):
    """Any string, e.g. a path; empty for the built-in default."""

    def __init__(self, metavar: str = "PATH") -> None:
        self.metavar = metavar

    def parse(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise ValueError("expected a string")
        return raw


OFF = ("off", "none", "never")  # the words for "no bound" of seconds


class Or(Kind):
    """A value of ``inner``, or one of ``words`` for ``value`` (``off``: no bound, ``auto``)."""

    def __init__(self, inner: Kind, words: tuple[str, ...], value: Any = None) -> None:
        self.inner = inner
        self.words = words  # the first is the one shown
        self.value = value
        self.metavar = f"{inner.metavar}|{words[0]}"

    def parse(self, raw: Any) -> Any:
        if isinstance(raw, str) and raw.strip().lower() in self.words:
            return self.value
        return self.inner.parse(raw)

    def display(self, value: Any) -> str:
        return self.words[0] if value == self.value else self.inner.display(value)


class Ttl(Or):
    """Seconds, more than 0, or ``off``: entries never expire."""

    def __init__(self) -> None:
        super().__init__(Seconds(most=None), OFF, float("inf"))

    def parse(self, raw: Any) -> float:
        f = super().parse(raw)
        if f == 0:
            raise ValueError("expected seconds, more than 0 (or off)")
        return f


class Setting:
    """One setting: its name in each place it can be given, its kind, default and help.

    This table is the one source of each default and help sentence: the launcher's and the
    coordinator's options, `pmrun config`, `pmrun init`'s template and the docs are made from it.
    """

    __slots__ = ("key", "section", "env", "default", "kind", "help", "flag_help")

    def __init__(
        self,
        key: str,  # the key inside its config table, e.g. "max-rss"; the flag is --KEY
        section: str,  # "agent" (the launcher's flags), "coordinator" (its flags) or "cache"
        env: str,  # environment variable, e.g. "PMRUN_MAX_RSS"
        default: Any,  # the raw default, parsed like any other value (and shown in TOML)
        kind: Kind,  # how values are parsed and shown
        help: str,  # one line for --help, `pmrun config` and the docs
        flag_help: str = "",  # a switch on by default: what its --no-KEY flag does
    ) -> None:
        self.key = key
        self.section = section
        self.env = env
        self.default = default
        self.kind = kind
        self.help = help
        self.flag_help = flag_help

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    def parse(self, raw: Any) -> Any:
        return self.kind.parse(raw)

    def display(self, value: Any) -> str:
        return self.kind.display(value)

    @property
    def default_value(self) -> Any:
        """The default, parsed."""
        return self.parse(self.default)

    @property
    def flag_value(self) -> bool | None:
        """What the flag of a switch stores: the opposite of its default. None: it takes a value."""
        return None if not isinstance(self.kind, Bool) else not self.default_value

    @property
    def flag(self) -> str:
        """``--KEY``; a switch that is on by default has ``--no-KEY`` instead."""
        return f"--no-{self.key}" if self.flag_value is False else f"--{self.key}"

    def option_help(self) -> str:
        """The flag's help line: what it means, its variable, and its default."""
        if self.flag_value is not None:
            switch = self.kind.display(self.flag_value)
            return f"{self.flag_help or self.help} [env {self.env}={switch}]"
        shown = self.display(self.default_value)
        where = f"env {self.env}; default {shown}" if shown else f"env {self.env}"
        return f"{self.help} [{where}]"

    def __repr__(self) -> str:
        return f"Setting({self.name!r})"


SETTINGS: tuple[Setting, ...] = (
    # The launcher's per-agent limits.
    Setting(
        "max-rss",
        "agent",
        "PMRUN_MAX_RSS",
        "1G",
        Size(),
        "hard limit on the RSS of the agent's whole process tree",
    ),
    Setting(
        "warn-rss",
        "agent",
        "PMRUN_WARN_RSS",
        "500M",
        Size(),
        "soft threshold: one warning line when the tree crosses it",
    ),
    Setting(
        "max-as",
        "agent",
        "PMRUN_MAX_AS",
        "off",
        Or(Size(), ("off", "none", "unlimited", "infinity")),
        "RLIMIT_AS on the command, or 'off' (the default: sanitizers, Bun and the JVM"
        " reserve more address space than any such limit allows)",
    ),
    Setting(
        "grace",
        "agent",
        "PMRUN_GRACE",
        5.0,
        Seconds(),
        "seconds between SIGTERM and SIGKILL when stopping the tree (0 = SIGKILL at once)",
    ),
    Setting(
        "backend",
        "agent",
        "PMRUN_BACKEND",
        "auto",
        Choice("auto", "cgroup", "sampling"),
        "how the limit is enforced: kernel cgroup, or RSS sampling",
    ),
    Setting(
        "priority",
        "agent",
        "PMRUN_PRIORITY",
        0,
        # 1e300 in TOML is a float that is_integer(): refused here, not by the coordinator.
        Int(MAX_PRIORITY),
        "higher is spared longer when the coordinator must stop an agent (0 to 2147483647)",
    ),
    Setting(
        "coordinator",
        "agent",
        "PMRUN_COORDINATOR",
        True,
        Bool(),
        "register with the host's coordinator (started on demand)",
        "run standalone: no coordinator",
    ),
    Setting(
        "pause",
        "agent",
        "PMRUN_PAUSE",
        True,
        Bool(),
        "the coordinator may pause (freeze) this agent under pressure instead of stopping it",
        "never pause this agent under pressure (e.g. an interactive session)",
    ),
    Setting(
        "wait",
        "agent",
        "PMRUN_WAIT",
        True,
        Bool(),
        "wait before starting while the agent's expected size does not fit",
        "start at once even if memory is short",
    ),
    Setting(
        "expect",
        "agent",
        "PMRUN_EXPECT",
        "auto",
        Or(Size(), ("auto",)),
        "the agent's expected peak, for admission ('auto': learned, else --warn-rss)",
    ),
    Setting(
        "wait-timeout",
        "agent",
        "PMRUN_WAIT_TIMEOUT",
        "off",
        Or(Seconds(most=None), OFF),
        "longest wait before starting ('off': no bound)",
    ),
    Setting(
        "wait-expired",
        "agent",
        "PMRUN_WAIT_EXPIRED",
        "start",
        Choice("start", "exit"),
        "after --wait-timeout: start anyway, or exit 75 (EX_TEMPFAIL)",
    ),
    # The coordinator.
    Setting(
        "socket",
        "coordinator",
        "PMRUN_SOCKET",
        "",
        Text(),
        "the coordinator's Unix socket (default: $XDG_RUNTIME_DIR/pmrun/coordinator.sock)",
    ),
    Setting(
        "pool",
        "coordinator",
        "PMRUN_POOL",
        "2G",
        Size(),
        "aggregate limit on the sum of all agents' trees",
    ),
    Setting(
        "system-threshold",
        "coordinator",
        "PMRUN_SYSTEM_THRESHOLD",
        "80%",
        Fraction(),
        "act when this fraction of system (or container) memory is used",
    ),
    Setting(
        "psi-threshold",
        "coordinator",
        "PMRUN_PSI_THRESHOLD",
        "10%",
        Or(Fraction(), ("off", "none")),
        "act when /proc/pressure/memory 'some avg10' passes this ('off' to ignore PSI)",
    ),
    Setting(
        "evict-fraction",
        "coordinator",
        "PMRUN_EVICT_FRACTION",
        0.75,
        Fraction(),
        "fraction of their caches services are asked to drop at the critical level"
        " (a third of it at the warning level)",
    ),
    Setting(
        "victim-policy",
        "coordinator",
        "PMRUN_VICTIM_POLICY",
        "largest",
        Choice("largest", "newest", "priority"),
        "which agent of the lowest priority is stopped first when shedding caches was not enough",
    ),
    Setting(
        "events",
        "coordinator",
        "PMRUN_EVENTS",
        "",
        Text(),
        "the event log (JSON lines; default: events.jsonl next to the socket)",
    ),
    Setting(
        "dry-run",
        "coordinator",
        "PMRUN_DRY_RUN",
        False,
        Bool(),
        "log what would be stopped; stop nothing",
    ),
    Setting(
        "cooldown",
        "coordinator",
        "PMRUN_COOLDOWN",
        5.0,
        Seconds(),
        "seconds after a stop before stopping more (unless a limit is crossed by 10%)",
    ),
    Setting(
        "settle",
        "coordinator",
        "PMRUN_SETTLE",
        0.5,
        Seconds(),
        "seconds an eviction broadcast waits for the services' answers",
    ),
    Setting(
        "metrics-port",
        "coordinator",
        "PMRUN_METRICS_PORT",
        0,
        Port(),
        "serve Prometheus metrics on http://127.0.0.1:PORT/metrics (0 = off)",
    ),
    Setting(
        "pause",
        "coordinator",
        "PMRUN_COORDINATOR_PAUSE",
        True,
        Bool(),
        "pause growing agents before stopping any (false: stop at once, as before)",
        "stop agents at once under pressure instead of pausing growing ones first",
    ),
    Setting(
        "max-pause",
        "coordinator",
        "PMRUN_MAX_PAUSE",
        120.0,
        Seconds(most=None),
        "seconds a paused agent may wait for memory before it may be stopped",
    ),
    Setting(
        "idle-exit",
        "coordinator",
        "PMRUN_IDLE_EXIT",
        "off",
        Or(Seconds(most=None), OFF),
        "exit after this many seconds with no agent ('off': never); on demand: 600",
    ),
    # The prompt cache.
    Setting(
        "max-bytes",
        "cache",
        "PMRUN_CACHE_MAX_BYTES",
        "50MB",
        Size(),
        "byte budget of SharedPromptCache",
    ),
    Setting(
        "max-entries",
        "cache",
        "PMRUN_CACHE_MAX_ENTRIES",
        500,
        Count(),
        "entry cap of SharedPromptCache",
    ),
    Setting(
        "ttl",
        "cache",
        "PMRUN_CACHE_TTL",
        300.0,
        Ttl(),
        "seconds an entry lives ('off': no expiry)",
    ),
    Setting(
        "pressure-fraction",
        "cache",
        "PMRUN_CACHE_PRESSURE_FRACTION",
        0.75,
        Fraction(),
        "fraction dropped on a coordinator eviction request that names none",
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


class Value:
    """A resolved setting: the typed value and where it came from."""

    __slots__ = ("value", "source")

    def __init__(self, value: Any, source: str) -> None:
        self.value = value
        self.source = (
            source  # "flag", "env PMRUN_X", "project /p/pmrun.toml", "user ...", "default"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Value) and (self.value, self.source) == (other.value, other.source)

    def __repr__(self) -> str:
        return f"Value({self.value!r}, {self.source!r})"


if TYPE_CHECKING:
    _ConfigBase = Mapping[str, Any]
else:
    _ConfigBase = Mapping


class Config(_ConfigBase):
    """Resolved settings, keyed by ``section.key`` (``config["agent.max-rss"]``)."""

    def __init__(self, values: dict[str, Value], files: list[Path]) -> None:
        self._values = values
        self.files = files  # config files that were read, project first

    def __getitem__(self, name: str) -> Any:
        return self._values[name].value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def source(self, name: str) -> str:
        return self._values[name].source


def _user_config_file(env: Mapping[str, str]) -> str:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME", "~"), ".config")
    return os.path.join(os.path.expanduser(base), "pmrun", "config.toml")


def user_config_path(env: Mapping[str, str] | None = None) -> Path:
    from pathlib import Path

    return Path(_user_config_file(os.environ if env is None else env))


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib  # only paid for when a config file exists

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:  # TOML is UTF-8
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None


def find_project_config(start: Path | str | None = None) -> tuple[Path, dict[str, Any]] | None:
    """Return the nearest project config (path, tables) from ``start`` upwards, if any.

    A deleted working directory has no project. A ``pyproject.toml`` that cannot be read is
    passed over: most do not configure pmrun, and pmrun must not fail a command over
    someone else's file; an unreadable ``pmrun.toml`` is an error (it is pmrun's own).
    """
    if start is None:
        try:
            start = os.getcwd()
        except OSError:  # the working directory was deleted (or cannot be reached)
            return None
    folder = os.path.realpath(start)
    while True:
        candidate = os.path.join(folder, "pmrun.toml")
        if os.path.isfile(candidate):
            return _path(candidate), _read_toml(_path(candidate))
        pyproject = os.path.join(folder, "pyproject.toml")
        if os.path.isfile(pyproject):
            # Only stop at a pyproject.toml that configures pmrun: a project may
            # keep pmrun.toml beside a pyproject that does not mention it.
            try:
                with open(pyproject, "rb") as f:
                    head = f.read()
            except OSError:
                head = b""
            if b"tool.pmrun" in head:
                tool = _read_toml(_path(pyproject)).get("tool", {})
                if isinstance(tool, dict) and isinstance(tool.get("pmrun"), dict):
                    return _path(pyproject), tool["pmrun"]
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _path(p: str) -> Path:
    from pathlib import Path

    return Path(p)


def _parse_value(setting: Setting, raw: Any, where: str) -> Any:
    try:
        return setting.parse(raw)
    except PmrunError as e:
        label = where if where.startswith("--") else f"{where}: {setting.name}"
        raise ConfigError(f"{label}: {e}") from None
    except (ValueError, TypeError, OverflowError) as e:  # Overflow: float(10**400)
        raise ConfigError(f"{where}: {setting.name} = {raw!r}: {e}") from None


def _file_values(path: Path, tables: Mapping[str, Any], label: str) -> dict[str, Value]:
    out: dict[str, Value] = {}
    for section, table in tables.items():
        if section == "shim":
            continue  # [shim.NAME]: per-program limits, read by pmrun.shim
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        for key, raw in table.items():
            setting = BY_NAME.get(f"{section}.{key}")
            if setting is None:
                known = ", ".join(sorted(BY_NAME))
                raise ConfigError(f"{path}: unknown setting {section}.{key} (known: {known})")
            out[setting.name] = Value(_parse_value(setting, raw, str(path)), f"{label} {path}")
    return out


def load(
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user_path: Path | None = None,
) -> Config:
    """Resolve every setting. ``flags`` maps ``section.key`` to raw values given on the command line."""
    env = os.environ if env is None else env
    values: dict[str, Value] = {}
    files: list[Path] = []
    for s in SETTINGS:
        values[s.name] = Value(_parse_value(s, s.default, "default"), "default")
    upath = str(user_path) if user_path is not None else _user_config_file(env)
    if os.path.isfile(upath):
        user_file = _path(upath)
        values.update(_file_values(user_file, _read_toml(user_file), "user"))
        files.append(user_file)
    project = find_project_config(cwd)
    if project is not None:
        values.update(_file_values(project[0], project[1], "project"))
        files.insert(0, project[0])
    for s in SETTINGS:
        raw = env.get(s.env)
        if raw is not None and raw != "":
            values[s.name] = Value(_parse_value(s, raw, f"environment {s.env}"), f"env {s.env}")
    for name, raw in (flags or {}).items():
        if raw is None:
            continue
        s = BY_NAME[name]
        values[name] = Value(_parse_value(s, raw, f"--{s.key}"), "flag")
    return Config(values, files)
