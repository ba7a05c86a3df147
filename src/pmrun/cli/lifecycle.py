"""``pmrun coordinator [OPTIONS]`` (the daemon), ``pmrun coordinator stop`` and ``status``.

The daemon command itself is :func:`pmrun.cli.coordinator.coordinator_command`; this group
runs it when no subcommand is named and adds the two lifecycle commands for scripts.

Exit status of ``pmrun coordinator status`` (as LSB init scripts and ``systemctl
status``): **0** running, **3** not running, **4** the socket cannot be used (not yours,
or not a socket). Of ``pmrun coordinator stop``: **0** stopped, or none was running;
**1** it was asked but still answers after ``--timeout``; **4** as above.
"""

from __future__ import annotations

import inspect
import json
import time
from typing import Any

import click

from ..errors import CoordinatorUnavailable, PmrunError, SocketSecurityError
from ..sizes import format_size
from .coordinator import coordinator_command as _daemon

STATUS_RUNNING = 0
STATUS_NOT_RUNNING = 3
STATUS_UNUSABLE = 4
STOP_TIMED_OUT = 1


def _socket(socket_: str | None) -> str:
    from .. import config as config_mod
    from ..coordinator.paths import resolve_socket_path

    try:
        cfg = config_mod.load({"coordinator.socket": socket_})
        return resolve_socket_path(cfg["coordinator.socket"])
    except PmrunError as e:
        _fail(str(e), STATUS_UNUSABLE)
        raise AssertionError("unreachable") from None


def _fail(message: str, code: int) -> None:
    click.echo(f"pmrun: {message}", err=True)
    click.get_current_context().exit(code)


@click.command("status")
@click.option("--socket", "socket_", metavar="PATH", help="The coordinator's socket.")
@click.option("--json", "as_json", is_flag=True, help="Print the facts as one JSON object.")
def status_command(socket_: str | None, as_json: bool) -> None:
    """Whether a coordinator serves the socket (exit 0), or not (exit 3).

    One line for people (pid, uptime, agents, paused, waiting), or --json for scripts.
    Exit 4: the socket cannot be used (not yours, or not a socket).
    """
    from ..coordinator import query

    path = _socket(socket_)
    try:
        st = query.status(path, timeout_s=2.0)
    except SocketSecurityError as e:
        _fail(str(e), STATUS_UNUSABLE)
        return
    except CoordinatorUnavailable:
        if as_json:
            click.echo(json.dumps({"running": False, "socket": path}))
        else:
            click.echo(f"not running (socket {path})")
        click.get_current_context().exit(STATUS_NOT_RUNNING)
        return
    c = st.get("coordinator") or {}
    agents = st.get("agents") or []
    facts: dict[str, Any] = {
        "running": True,
        "socket": path,
        "pid": c.get("pid"),
        "uptime_s": c.get("uptime_s"),
        "agents": len(agents),
        "paused": sum(1 for a in agents if a.get("paused_s") is not None),
        "waiting": len(st.get("waiting") or []),
        "pool_used_bytes": (st.get("pool") or {}).get("used_bytes"),
        "pool_limit_bytes": (st.get("pool") or {}).get("limit_bytes"),
        "pressure": (st.get("pressure") or {}).get("level"),
    }
    if as_json:
        click.echo(json.dumps(facts))
        return
    click.echo(
        f"running: pid {facts['pid']}, up {facts['uptime_s']:.0f}s, {facts['agents']} agents"
        f" ({facts['paused']} paused, {facts['waiting']} waiting), pool"
        f" {format_size(facts['pool_used_bytes'] or 0)} of"
        f" {format_size(facts['pool_limit_bytes'] or 0)}, pressure {facts['pressure']},"
        f" socket {path}"
    )


@click.command("stop")
@click.option("--socket", "socket_", metavar="PATH", help="The coordinator's socket.")
@click.option(
    "--timeout",
    type=float,
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for it to exit.",
)
def stop_command(socket_: str | None, timeout: float) -> None:
    """Stop the coordinator cleanly; agents keep running under their own limits.

    Paused agents are resumed by their launchers, which go on enforcing --max-rss and
    register again with the next coordinator. Exit 0: stopped, or none was running;
    1: still answering after --timeout; 4: the socket cannot be used.
    """
    from ..coordinator import protocol as p
    from ..coordinator import query

    path = _socket(socket_)
    try:
        answer = query.request(path, p.Shutdown(id=1), timeout_s=min(timeout, 5.0))
    except SocketSecurityError as e:
        _fail(str(e), STATUS_UNUSABLE)
        return
    except CoordinatorUnavailable:
        click.echo(f"no coordinator was running (socket {path})")
        return
    pid = answer.detail.get("pid") if isinstance(answer, p.Ok) else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            query.ping(path, timeout_s=0.5)
        except (CoordinatorUnavailable, SocketSecurityError):
            click.echo(f"stopped the coordinator (pid {pid}) on {path}")
            return
        time.sleep(0.05)
    _fail(f"the coordinator (pid {pid}) still answers after {timeout:g}s", STOP_TIMED_OUT)


class _CoordinatorGroup(click.Group):
    """Runs the daemon when no subcommand is named: ``pmrun coordinator --pool 2G``."""


@click.pass_context
def _run_daemon(ctx: click.Context, **options: Any) -> None:
    if ctx.invoked_subcommand is None:
        assert _daemon.callback is not None
        ctx.invoke(_daemon.callback, **options)


coordinator_group = _CoordinatorGroup(
    name="coordinator",
    params=list(_daemon.params),
    callback=_run_daemon,
    invoke_without_command=True,
    help=inspect.cleandoc(_daemon.help or "")  # dedented before lines are added to it
    + "\n\n`pmrun coordinator stop` stops it cleanly; `pmrun coordinator status` says whether"
    " one runs (exit 0) or not (exit 3).",
    commands={"stop": stop_command, "status": status_command},
    epilog=(_daemon.epilog or "")
    + "\n  pmrun coordinator status --json                # 0 running, 3 not"
    + "\n  pmrun coordinator stop                         # agents keep their own limits",
)
