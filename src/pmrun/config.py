"""Settings: one registry, read from flags > environment > project > user > defaults.

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
from .sizes import parse_fraction, parse_optional_size, parse_size

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
    f = float(v)
    if f != f or f < 0 or f == float("inf"):
        raise ValueError("expected a finite number, zero or more")
    return f


def _parse_seconds(v: Any) -> float:
    f = _parse_float(v)
    if f > MAX_SECONDS:
        raise ValueError(f"expected seconds, at most {MAX_SECONDS:g}")
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


def _parse_priority(v: Any) -> int:
    # 1e300 in TOML is a float that is_integer(): refused here, not by the coordinator later.
    return _parse_int(v, MAX_PRIORITY)


def _parse_positive_int(v: Any) -> int:
    i = _parse_int(v)
    if i == 0:
        raise ValueError("expected a whole number, 1 or more")
    return i


def _parse_ttl(v: Any) -> float:
    """Seconds, more than 0; ``off`` means entries never expire."""
    if isinstance(v, str) and v.strip().lower() in ("off", "none", "never"):
        return float("inf")
    f = _parse_float(v)
    if f == 0:
        raise ValueError("expected seconds, more than 0 (or off)")
    return f


def _parse_port(v: Any) -> int:
    i = _parse_int(v)
    if i > 65535:
        raise ValueError("expected a TCP port, 0 to 65535")
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


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        s = str(v).strip().lower()
        if s not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return s

    return parse


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a string")
    return v


def _parse_opt_seconds(v: Any) -> float | None:
    """Seconds, zero or more; ``off`` (or ``none``) for no bound."""
    if isinstance(v, str) and v.strip().lower() in ("off", "none", "never"):
        return None
    return _parse_float(v)


def _parse_expect(v: Any) -> int | None:
    """A size; ``auto`` (None): learned from the event log, else --warn-rss."""
    if isinstance(v, str) and v.strip().lower() == "auto":
        return None
    return parse_size(v)


def _opt_fraction(v: Any) -> float | None:
    if isinstance(v, str) and v.strip().lower() in ("off", "none"):
        return None
    return parse_fraction(v)


class Setting:
    """One setting: its name in each place it can be given, and how to parse it."""

    __slots__ = ("key", "section", "env", "default", "parse", "help")

    def __init__(
        self,
        key: str,  # the key inside its config table, e.g. "max-rss"
        section: str,  # "agent", "coordinator" or "cache"
        env: str,  # environment variable, e.g. "PMRUN_MAX_RSS"
        default: Any,  # the raw default, parsed like any other value
        parse: Callable[[Any], Any],  # raw value -> typed value; raises ValueError/PmrunError
        help: str,  # one line for --help and `pmrun config`
    ) -> None:
        self.key = key
        self.section = section
        self.env = env
        self.default = default
        self.parse = parse
        self.help = help

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    def __repr__(self) -> str:
        return f"Setting({self.name!r})"


SETTINGS: tuple[Setting, ...] = (
    # The launcher's per-agent limits.
    Setting(
        "max-rss",
        "agent",
        "PMRUN_MAX_RSS",
        "1G",
        parse_size,
        "hard limit on the RSS of the agent's whole process tree",
    ),
    Setting(
        "warn-rss",
        "agent",
        "PMRUN_WARN_RSS",
        "500M",
        parse_size,
        "soft threshold: one warning line when the tree crosses it",
    ),
    Setting(
        "max-as",
        "agent",
        "PMRUN_MAX_AS",
        "off",
        parse_optional_size,
        "RLIMIT_AS on the command, or 'off' (the default: sanitizers, Bun and the JVM"
        " reserve more address space than any such limit allows)",
    ),
    Setting(
        "grace",
        "agent",
        "PMRUN_GRACE",
        5.0,
        _parse_seconds,
        "seconds between SIGTERM and SIGKILL when stopping the tree (0 = SIGKILL at once)",
    ),
    Setting(
        "backend",
        "agent",
        "PMRUN_BACKEND",
        "auto",
        _choice("auto", "cgroup", "sampling"),
        "how the limit is enforced: kernel cgroup, or RSS sampling",
    ),
    Setting(
        "priority",
        "agent",
        "PMRUN_PRIORITY",
        0,
        _parse_priority,
        "higher is spared longer when the coordinator must stop an agent (0 to 2147483647)",
    ),
    Setting(
        "coordinator",
        "agent",
        "PMRUN_COORDINATOR",
        True,
        _parse_bool,
        "register with the host's coordinator (started on demand)",
    ),
    Setting(
        "pause",
        "agent",
        "PMRUN_PAUSE",
        True,
        _parse_bool,
        "the coordinator may pause (freeze) this agent under pressure instead of stopping it",
    ),
    Setting(
        "wait",
        "agent",
        "PMRUN_WAIT",
        True,
        _parse_bool,
        "wait before starting while the agent's expected size does not fit",
    ),
    Setting(
        "expect",
        "agent",
        "PMRUN_EXPECT",
        "auto",
        _parse_expect,
        "the agent's expected peak, for admission ('auto': learned, else --warn-rss)",
    ),
    Setting(
        "wait-timeout",
        "agent",
        "PMRUN_WAIT_TIMEOUT",
        "off",
        _parse_opt_seconds,
        "longest wait before starting ('off': no bound)",
    ),
    Setting(
        "wait-expired",
        "agent",
        "PMRUN_WAIT_EXPIRED",
        "start",
        _choice("start", "exit"),
        "after --wait-timeout: start anyway, or exit 75 (EX_TEMPFAIL)",
    ),
    # The coordinator.
    Setting(
        "socket",
        "coordinator",
        "PMRUN_SOCKET",
        "",
        _text,
        "the coordinator's Unix socket (default: $XDG_RUNTIME_DIR/pmrun/coordinator.sock)",
    ),
    Setting(
        "pool",
        "coordinator",
        "PMRUN_POOL",
        "2G",
        parse_size,
        "aggregate limit on the sum of all agents' trees",
    ),
    Setting(
        "system-threshold",
        "coordinator",
        "PMRUN_SYSTEM_THRESHOLD",
        "80%",
        parse_fraction,
        "act when this fraction of system (or container) memory is used",
    ),
    Setting(
        "psi-threshold",
        "coordinator",
        "PMRUN_PSI_THRESHOLD",
        "10%",
        _opt_fraction,
        "act when /proc/pressure/memory 'some avg10' passes this ('off' to ignore PSI)",
    ),
    Setting(
        "evict-fraction",
        "coordinator",
        "PMRUN_EVICT_FRACTION",
        0.75,
        parse_fraction,
        "fraction of their caches services are asked to drop at the critical level",
    ),
    Setting(
        "victim-policy",
        "coordinator",
        "PMRUN_VICTIM_POLICY",
        "largest",
        _choice("largest", "newest", "priority"),
        "which agent is stopped first when shedding caches was not enough",
    ),
    Setting(
        "events",
        "coordinator",
        "PMRUN_EVENTS",
        "",
        _text,
        "the event log (JSON lines; default: next to the socket)",
    ),
    Setting(
        "dry-run",
        "coordinator",
        "PMRUN_DRY_RUN",
        False,
        _parse_bool,
        "log what would be stopped; stop nothing",
    ),
    Setting(
        "cooldown",
        "coordinator",
        "PMRUN_COOLDOWN",
        5.0,
        _parse_seconds,
        "seconds after a stop before stopping more (unless a limit is crossed by 10%)",
    ),
    Setting(
        "settle",
        "coordinator",
        "PMRUN_SETTLE",
        0.5,
        _parse_seconds,
        "seconds an eviction broadcast waits for the services' answers",
    ),
    Setting(
        "metrics-port",
        "coordinator",
        "PMRUN_METRICS_PORT",
        0,
        _parse_port,
        "serve Prometheus metrics on 127.0.0.1:PORT (0 = off)",
    ),
    Setting(
        "pause",
        "coordinator",
        "PMRUN_COORDINATOR_PAUSE",
        True,
        _parse_bool,
        "pause growing agents before stopping any (false: stop at once, as before)",
    ),
    Setting(
        "max-pause",
        "coordinator",
        "PMRUN_MAX_PAUSE",
        120.0,
        _parse_float,
        "seconds a paused agent may wait for memory before it may be stopped",
    ),
    Setting(
        "idle-exit",
        "coordinator",
        "PMRUN_IDLE_EXIT",
        "off",
        _parse_opt_seconds,
        "exit after this many seconds with no agent ('off': never); on demand: 600",
    ),
    # The prompt cache.
    Setting(
        "max-bytes",
        "cache",
        "PMRUN_CACHE_MAX_BYTES",
        "50MB",
        parse_size,
        "byte budget of SharedPromptCache",
    ),
    Setting(
        "max-entries",
        "cache",
        "PMRUN_CACHE_MAX_ENTRIES",
        500,
        _parse_positive_int,
        "entry cap of SharedPromptCache",
    ),
    Setting(
        "ttl",
        "cache",
        "PMRUN_CACHE_TTL",
        300.0,
        _parse_ttl,
        "seconds an entry lives ('off': no expiry)",
    ),
    Setting(
        "pressure-fraction",
        "cache",
        "PMRUN_CACHE_PRESSURE_FRACTION",
        0.75,
        parse_fraction,
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
