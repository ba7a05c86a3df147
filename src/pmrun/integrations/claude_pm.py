"""claude-multiagent-pm 1.4.7 under pmrun, with no change to the framework's code.

After :func:`install` (or ``PMRUN_CLAUDE_PM=1`` with the ``.pth`` hook that
``pmrun claude-pm install-hook`` writes, or ``pmrun claude-pm -- ARGS``):

- ``claude_pm.services.shared_prompt_cache.SharedPromptCache`` (and ``get_shared_cache``,
  ``configure_shared_cache``, ``cache_result``) are pmrun's (:mod:`pmrun.cache`), which
  attach to the coordinator by themselves;
- ``SubprocessRunner.run_agent_subprocess`` and ``run_agent_subprocess_async`` start each
  agent as ``python -m pmrun [limits] --name <agent type> --report <file> -- <its command>``:
  the framework gets pmrun's exit status (137 when pmrun stopped the agent) and
  :func:`last_report` the exit report;
- every cleanup handler registered with the framework's ``MemoryPressureCoordinator`` is
  also a pmrun service ``claude-pm:<name>``, called with the framework's severity for the
  coordinator's fraction (:func:`severity_for`).

The framework's modules are patched when they are imported (an import hook), or at once if
they already are; names other modules copied from them are replaced too. Nothing here
imports the framework, click or psutil, and the ``.pth`` hook (:mod:`._hook`) loads this
module only once a framework module it patches is imported.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import UsageError
from ..sizes import parse_size
from . import _hook
from ._hook import CACHE_MODULE, ENV, HOOK_FILE, HOOK_LINE, PRESSURE_MODULE, RUNNER_MODULE

__all__ = [
    "ENV",
    "HOOK_FILE",
    "HOOK_LINE",
    "Limits",
    "Integration",
    "install",
    "install_from_env",
    "last_report",
    "reports",
    "severity_for",
]

log = logging.getLogger("pmrun.integrations.claude_pm")

SERVICE_PREFIX = "claude-pm:"  # pmrun's name for a framework cleanup handler
REPORTS_KEPT = 200  # exit report files kept in the report directory, newest first
_MIB = 1024 * 1024
_BACKENDS = ("auto", "cgroup", "sampling")


# -- pure policy ----------------------------------------------------------------------------


def severity_for(fraction: float) -> str:
    """The framework's severity for a pmrun eviction ``fraction``.

    The framework's handlers know two: ``"warning"`` (its cache drops half) and
    ``"critical"`` (three quarters). Above one half is critical: the coordinator's critical
    level (0.75 by default) and ``pmrun cleanup --fraction 100%``; its warning level (0.25)
    and ``pmrun cleanup`` (50%) are warnings.
    """
    return "critical" if fraction > 0.5 else "warning"


def freed_bytes(answer: object) -> int:
    """Bytes a framework cleanup handler says it freed, from the dict it returns.

    pmrun's own ``"bytes"``; else the framework's ``"memory_freed_mb"`` (MiB); else the sum of
    its ``"actions"[...]["freed_mb"]`` (``memory_diagnostics``); else 0. Never negative.
    """
    if not isinstance(answer, Mapping):
        return 0
    value: Any = answer.get("bytes")
    if not isinstance(value, int | float):
        mb = answer.get("memory_freed_mb")
        if isinstance(mb, int | float):
            value = mb * _MIB
        else:
            actions = answer.get("actions")
            value = 0
            if isinstance(actions, list):
                for a in actions:
                    got = a.get("freed_mb") if isinstance(a, Mapping) else None
                    if isinstance(got, int | float):
                        value += got * _MIB
    if isinstance(value, bool) or not math.isfinite(value):
        return 0
    return max(0, int(value))


@dataclass(frozen=True)
class Limits:
    """The launcher options of every agent; None leaves pmrun's own setting (flags > env >
    pmrun.toml > defaults, as for ``pmrun -- cmd``)."""

    max_rss: int | None = None  # bytes, --max-rss
    warn_rss: int | None = None  # bytes, --warn-rss
    max_as: int | str | None = None  # bytes or "off", --max-as
    grace: float | None = None  # seconds, --grace
    backend: str | None = None  # auto|cgroup|sampling, --backend
    priority: int | None = None  # --priority

    @classmethod
    def parse(cls, values: Mapping[str, Any], what: str = "install()") -> Limits:
        """Checked limits from keyword values (sizes as ``"1G"`` or bytes)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(
                f"{what}: unknown limit {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        out: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                continue
            if name in ("max_rss", "warn_rss"):
                out[name] = parse_size(value)
            elif name == "max_as":
                out[name] = "off" if str(value).lower() == "off" else parse_size(value)
            elif name == "grace":
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise UsageError(f"{what}: grace must be seconds, 0 or more, not {value!r}")
                out[name] = float(value)
            elif name == "backend":
                if value not in _BACKENDS:
                    raise UsageError(f"{what}: backend must be one of {_BACKENDS}, not {value!r}")
                out[name] = value
            elif name == "priority":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise UsageError(f"{what}: priority must be a whole number, not {value!r}")
                out[name] = value
        return cls(**out)

    def merged(self, other: Limits) -> Limits:
        """These limits with ``other``'s set values on top."""
        return replace(self, **{f.name: v for f in fields(other) if (v := getattr(other, f.name))
                                is not None})  # fmt: skip

    def options(self) -> list[str]:
        """The launcher flags for the limits that are set."""
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out += ["--" + f.name.replace("_", "-"), str(value)]
        return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:64] or "agent"


# -- the installed state --------------------------------------------------------------------


class Integration:
    """What :func:`install` set up: the limits, where reports go, the reports so far."""

    def __init__(
        self,
        limits: Limits,
        agents: Mapping[str, Limits],
        socket: str | None,
        coordinator: bool,
        report_dir: Path,
        nested: bool,
        python: str,
    ) -> None:
        self.limits = limits
        self.agents = dict(agents)  # agent type -> limits on top of ``limits``
        self.socket = socket
        self.coordinator = coordinator
        self.report_dir = report_dir
        self.nested = nested  # route spawns even from inside a pmrun agent
        self.python = python
        self._lock = threading.Lock()
        self._seq = 0
        self.reports: deque[tuple[str, Path, dict[str, Any] | None]] = deque(maxlen=REPORTS_KEPT)

    def limits_for(self, agent_type: str) -> Limits:
        extra = self.agents.get(agent_type)
        return self.limits if extra is None else self.limits.merged(extra)

    def argv_prefix(self, agent_type: str, report: Path) -> list[str]:
        """``python -m pmrun [options] --name TYPE --report FILE --``."""
        argv = [self.python, "-m", "pmrun", *self.limits_for(agent_type).options()]
        if self.socket is not None:
            argv += ["--socket", self.socket]
        if not self.coordinator:
            argv.append("--no-coordinator")
        return [*argv, "--name", agent_type, "--report", str(report), "--"]

    def routes(self) -> bool:
        """Inside an agent pmrun already runs, a spawn stays in that agent's tree and limit,
        unless ``nested``: a second launcher would count its memory twice in the pool."""
        return self.nested or not os.environ.get("PMRUN_AGENT_ID")

    def begin(self, agent_type: str) -> _Spawn:
        with self._lock:
            self._seq += 1
            seq = self._seq
        self.report_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        report = self.report_dir / f"{_safe(agent_type)}-{stamp}-{os.getpid()}-{seq}.json"
        return _Spawn(agent_type, self.argv_prefix(agent_type, report), report)

    def finish(self, spawn: _Spawn) -> dict[str, Any] | None:
        try:
            report: dict[str, Any] | None = json.loads(spawn.report.read_text())
        except (OSError, ValueError):
            report = None  # the launcher was killed (a timeout) or never started
        self.reports.append((spawn.agent_type, spawn.report, report))
        if report is not None and report.get("exit_status") == 137:
            log.warning(
                "pmrun stopped agent %s (%s): %s; report %s",
                spawn.agent_type,
                report.get("reason"),
                report.get("message"),
                spawn.report,
            )
        self._prune()
        return report

    def last_report(self, agent_type: str | None = None) -> dict[str, Any] | None:
        """The exit report of the last agent spawned (of ``agent_type`` if given)."""
        for kind, _, report in reversed(self.reports):
            if agent_type is None or kind == agent_type:
                return report
        return None

    def _prune(self) -> None:
        try:
            files = sorted(self.report_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
        except OSError:
            return
        for old in files[:-REPORTS_KEPT]:
            try:
                old.unlink()
            except OSError:
                pass


@dataclass(frozen=True)
class _Spawn:
    agent_type: str
    prefix: list[str]
    report: Path


_state: Integration | None = None
_spawn: contextvars.ContextVar[_Spawn | None] = contextvars.ContextVar("pmrun_spawn", default=None)


def install(
    *,
    agents: Mapping[str, Mapping[str, Any]] | None = None,
    socket: str | None = None,
    coordinator: bool = True,
    report_dir: str | os.PathLike[str] | None = None,
    nested: bool = False,
    **limits: Any,
) -> Integration:
    """Run claude-multiagent-pm's caches, agent spawns and cleanup handlers through pmrun.

    ``limits``: ``max_rss``, ``warn_rss``, ``max_as``, ``grace``, ``backend``, ``priority``
    for every agent; ``agents={"engineer": {"max_rss": "2G"}}`` per agent type. Limits not
    given come from pmrun's settings. ``socket``: the coordinator's (default: pmrun's);
    ``coordinator=False`` runs agents standalone. ``report_dir``: where exit reports are
    written (default ``claude-pm-reports`` next to the socket; the newest 200 are kept).
    Calling it again replaces the settings. Raises :class:`~pmrun.errors.UsageError` for a
    bad limit.
    """
    global _state
    from ..coordinator.paths import resolve_socket_path

    parsed = Limits.parse(limits)
    per_agent = {
        str(k): Limits.parse(v, f"install(agents={{{k!r}: ...}})")
        for k, v in (agents or {}).items()
    }
    path = resolve_socket_path(socket or os.environ.get("PMRUN_SOCKET"))
    if coordinator:
        # The cache attaches where PMRUN_SOCKET points, as under the launcher; so do the
        # framework's agents and anything else it starts.
        os.environ["PMRUN_SOCKET"] = path
    reports_at = Path(report_dir) if report_dir else Path(path).parent / "claude-pm-reports"
    _state = Integration(parsed, per_agent, socket, coordinator, reports_at, nested, sys.executable)
    _install_hooks()
    return _state


def install_from_env(*, force: bool = False) -> Integration | None:
    """:func:`install` with pmrun's settings if ``PMRUN_CLAUDE_PM`` is set (or ``force``),
    as the ``.pth`` hook does once the framework is imported. A failure is one line on
    stderr and None; the program still runs."""
    if not force and os.environ.get(ENV, "") in ("", "0"):
        return None
    try:
        return install()
    except Exception as e:
        print(f"pmrun: {ENV} is set but pmrun could not take over claude-pm: {e}", file=sys.stderr)
        return None


def last_report(agent_type: str | None = None) -> dict[str, Any] | None:
    """The exit report of the last agent spawned (of ``agent_type``), or None."""
    return None if _state is None else _state.last_report(agent_type)


def reports() -> list[tuple[str, Path, dict[str, Any] | None]]:
    """Every (agent type, report file, report) since :func:`install`, oldest first."""
    return [] if _state is None else list(_state.reports)


# -- patching the framework's modules -------------------------------------------------------

_patched: set[str] = set()
_given_up = False  # the hook's own install() failed: leave the framework alone
_bridged: dict[str, Any] = {}  # framework service name -> pmrun registration
_bridge_lock = threading.Lock()


def _install_hooks() -> None:
    _hook.arm()
    for name, patch in _PATCHES.items():
        module = sys.modules.get(name)
        if module is not None:
            _apply(name, patch, module)


def _imported(name: str, module: ModuleType) -> None:
    """The import hook's call once a framework module it patches has executed. Armed by
    the ``.pth`` line alone, pmrun installs itself now, with pmrun's settings."""
    global _given_up
    if _given_up:
        return
    if _state is None and install_from_env(force=True) is None:
        _given_up = True  # it said why on stderr, once; the framework runs as without pmrun
        return
    _apply(name, _PATCHES[name], module)


def _apply(name: str, patch: Callable[[ModuleType], None], module: ModuleType) -> None:
    if name in _patched:
        return
    _patched.add(name)
    patch(module)


def _replace_everywhere(original: object, new: object) -> None:
    """Rebind every loaded ``claude_pm`` module's copy of ``original`` (``from x import Y``)."""
    for modname, module in list(sys.modules.items()):
        if not (modname == "claude_pm" or modname.startswith("claude_pm.")) or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if value is original:
                setattr(module, attr, new)


def _patch_cache(module: ModuleType) -> None:
    from .. import cache

    for attr in ("SharedPromptCache", "get_shared_cache", "configure_shared_cache", "cache_result"):
        original = getattr(module, attr, None)
        new = getattr(cache, attr)
        setattr(module, attr, new)
        if original is not None:
            _replace_everywhere(original, new)


class _RoutedSubprocess:
    """The ``subprocess`` module as ``subprocess_runner`` sees it: ``run`` starts the agent
    of the spawn in progress (if any) through pmrun; everything else is the real module."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def run(self, args: Any, *rest: Any, **kw: Any) -> Any:
        spawn = _spawn.get()
        if spawn is not None and isinstance(args, list | tuple):
            _spawn.set(None)  # one launcher per agent, however the framework's code evolves
            args = [*spawn.prefix, *args]
        return self._real.run(args, *rest, **kw)


class _RoutedAsyncio:
    """``asyncio`` as ``subprocess_runner`` sees it: ``create_subprocess_exec`` routed."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def create_subprocess_exec(self, program: Any, *args: Any, **kw: Any) -> Any:
        spawn = _spawn.get()
        if spawn is not None:
            _spawn.set(None)
            return await self._real.create_subprocess_exec(*spawn.prefix, program, *args, **kw)
        return await self._real.create_subprocess_exec(program, *args, **kw)


def _agent_type(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    return str(kwargs["agent_type"] if "agent_type" in kwargs else args[0])


def _begin(args: Sequence[Any], kwargs: Mapping[str, Any]) -> _Spawn | None:
    state = _state
    if state is None or not state.routes():
        return None
    return state.begin(_agent_type(args, kwargs))


def _patch_runner(module: ModuleType) -> None:
    module.subprocess = _RoutedSubprocess(module.subprocess)  # type: ignore[attr-defined]
    module.asyncio = _RoutedAsyncio(module.asyncio)  # type: ignore[attr-defined]
    runner = module.SubprocessRunner
    run_sync = runner.run_agent_subprocess
    run_async = runner.run_agent_subprocess_async

    @functools.wraps(run_sync)
    def run_agent_subprocess(self: Any, *args: Any, **kwargs: Any) -> Any:
        spawn = _begin(args, kwargs)
        token = _spawn.set(spawn)
        try:
            return run_sync(self, *args, **kwargs)
        finally:
            _spawn.reset(token)
            if spawn is not None and _state is not None:
                _state.finish(spawn)

    @functools.wraps(run_async)
    async def run_agent_subprocess_async(self: Any, *args: Any, **kwargs: Any) -> Any:
        spawn = _begin(args, kwargs)
        token = _spawn.set(spawn)
        try:
            return await run_async(self, *args, **kwargs)
        finally:
            _spawn.reset(token)
            if spawn is not None and _state is not None:
                _state.finish(spawn)

    runner.run_agent_subprocess = run_agent_subprocess
    runner.run_agent_subprocess_async = run_agent_subprocess_async


async def _cache_pressure(severity: str = "warning") -> dict[str, Any]:
    """The framework's coordinator reaching pmrun's common cache (its own class registered
    itself this way in ``start()``)."""
    from ..cache import SharedPromptCache

    return await SharedPromptCache.get_instance().handle_memory_pressure(severity)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _bridge(service_name: str, handler: Callable[..., Any]) -> None:
    """Register a framework cleanup handler as the pmrun service ``claude-pm:<name>``."""
    from ..cache import SharedPromptCache
    from ..client import register_cleanup

    if handler is _cache_pressure or isinstance(
        getattr(handler, "__self__", None), SharedPromptCache
    ):
        return  # pmrun's cache is a service of its own already
    state = _state

    def drop(fraction: float) -> int:
        # On an event loop of its own in pmrun's client thread, not the framework's: the
        # framework's loop is blocked for as long as a synchronous agent spawn runs, which
        # is when memory runs short.
        answer = handler(severity_for(fraction))
        if hasattr(answer, "__await__"):
            answer = asyncio.run(_awaited(answer))
        return freed_bytes(answer)

    registration = register_cleanup(
        SERVICE_PREFIX + service_name, drop, socket=None if state is None else state.socket
    )
    with _bridge_lock:
        old, _bridged[service_name] = _bridged.get(service_name), registration
    if old is not None:
        old.close()


def _patch_pressure(module: ModuleType) -> None:
    coordinator_cls = module.MemoryPressureCoordinator
    register = coordinator_cls.register_cleanup_handler

    @functools.wraps(register)
    def register_cleanup_handler(self: Any, service_name: str, handler: Callable[..., Any]) -> None:
        register(self, service_name, handler)
        _bridge(service_name, handler)

    coordinator_cls.register_cleanup_handler = register_cleanup_handler
    instance = coordinator_cls.get_instance()
    for service_name, handler in list(instance._cleanup_handlers.items()):
        _bridge(service_name, handler)
    if "shared_prompt_cache" not in instance._cleanup_handlers:
        instance.register_cleanup_handler("shared_prompt_cache", _cache_pressure)


_PATCHES: dict[str, Callable[[ModuleType], None]] = {
    CACHE_MODULE: _patch_cache,
    RUNNER_MODULE: _patch_runner,
    PRESSURE_MODULE: _patch_pressure,
}


# -- the .pth hook --------------------------------------------------------------------------


def install_hook(site_packages: str | os.PathLike[str]) -> Path:
    """Write the ``.pth`` hook into ``site_packages`` (the framework's venv); returns it."""
    path = Path(site_packages) / HOOK_FILE
    if not Path(site_packages).is_dir():
        raise UsageError(f"{site_packages}: no such site-packages directory")
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(HOOK_LINE)
        os.replace(tmp, path)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None
    return path


def remove_hook(site_packages: str | os.PathLike[str]) -> Path | None:
    """Remove the hook from ``site_packages``; returns what was removed, None if absent."""
    path = Path(site_packages) / HOOK_FILE
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UsageError(f"cannot remove {path}: {e.strerror}") from None
    return path


# -- running the framework's CLI ------------------------------------------------------------

CLI_ENTRY = "claude-pm"  # the framework's console script (also cmpm, claude-multiagent-pm)


def run_cli(argv: Sequence[str]) -> int:
    """Install, then run the framework's ``claude-pm`` command with ``argv``."""
    from importlib.metadata import entry_points

    found = entry_points(group="console_scripts", name=CLI_ENTRY)
    if not found:
        print(
            f"pmrun: claude-multiagent-pm is not installed for {sys.executable} "
            f"(no {CLI_ENTRY!r} command): pip install claude-multiagent-pm==1.4.7",
            file=sys.stderr,
        )
        return 127
    install()
    main = next(iter(found)).load()
    sys.argv = [CLI_ENTRY, *argv]
    result = main()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # python -m pmrun.integrations.claude_pm [claude-pm ARGS]
    sys.exit(run_cli(sys.argv[1:]))
