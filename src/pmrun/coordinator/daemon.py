"""Running the coordinator as a daemon: its directory and endpoint, OOM protection,
signals, and keeping the socket path leading to it while it runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import PmrunError, SocketSecurityError
from . import paths
from .endpoint import AlreadyRunning, Endpoint, reopen_log_if_deleted
from .settings import CoordinatorSettings

if TYPE_CHECKING:
    from .server import Coordinator

log = logging.getLogger("pmrun.coordinator")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def protect_from_oom(score: int) -> bool:
    """Lower our ``oom_score_adj`` so the OOM killer prefers the agents; True if it took.

    Needs root with CAP_SYS_RESOURCE; some kernels ignore the write silently, so the value
    is read back.
    """
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(score))
        with open("/proc/self/oom_score_adj") as f:
            return int(f.read()) == score
    except (OSError, ValueError):
        return False


def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call ``stop`` (a no-op off the main thread, as in tests)."""
    for sig in STOP_SIGNALS:
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            loop.add_signal_handler(sig, stop)


async def guard_endpoint(
    coord: Coordinator, endpoint: Endpoint, servers: list[asyncio.Server]
) -> None:
    """Every ``socket_check_s``: keep the socket path leading here (a /tmp cleaner may
    delete the socket, the lock or the directory), or stop if another coordinator took
    the path meanwhile, so that there is always exactly one pool."""
    failing = False  # said once until it works again: a planted file must not fill the log
    while not coord.stopping():
        await asyncio.sleep(coord.settings.socket_check_s)
        try:
            outcome = await asyncio.to_thread(endpoint.check)
        except (OSError, SocketSecurityError) as e:
            if not failing:
                log.warning("cannot restore the socket %s: %s", endpoint.socket_path, e)
            failing = True
            continue
        failing = False
        if outcome == Endpoint.LOST:
            log.warning(
                "another coordinator took %s (its lock was deleted): stopping, "
                "its agents reconnect there", endpoint.socket_path,
            )  # fmt: skip
            coord.events.write("coordinator.superseded", "warning", pid=os.getpid())
            coord.request_stop()
            return
        if outcome == Endpoint.REBOUND:
            servers.append(await coord.listen(endpoint.sock))
            servers.pop(0).close()  # listening on a deleted path: nobody can reach it
            log.warning("the socket %s was deleted: bound it again", endpoint.socket_path)
            coord.events.write("coordinator.rebound", "warning", socket=endpoint.socket_path)
        coord.events.reopen_if_moved()
        if await asyncio.to_thread(reopen_log_if_deleted, endpoint.socket_path):
            log.warning("coordinator.log was deleted: logging to a new one")


def run(settings: CoordinatorSettings, *, ready: Callable[[], None] | None = None) -> int:
    """Run a coordinator in the foreground until SIGTERM/SIGINT. Returns the exit status.

    Another coordinator already serving this socket is not an error: it returns 0 at once.
    """
    from .server import Coordinator  # server imports this module for guard_endpoint

    try:
        paths.prepare_dir(settings.socket_path)
        endpoint = Endpoint(settings.socket_path)
    except AlreadyRunning:
        log.info("a coordinator already serves %s", settings.socket_path)
        return 0
    except OSError as e:  # EACCES, EADDRINUSE, a read-only directory: one line, exit 1
        raise PmrunError(
            f"cannot serve {paths.shown(settings.socket_path)}: {e.strerror or e}"
        ) from None
    try:
        if protect_from_oom(settings.oom_score_adj):
            log.info("oom_score_adj set to %d", settings.oom_score_adj)
        elif os.geteuid() == 0:
            log.info("could not lower oom_score_adj (no CAP_SYS_RESOURCE?)")
        coord = Coordinator(settings)
        log.info(
            "serving %s (pool %d bytes, pid %d, events %s%s)",
            settings.socket_path, settings.pool_bytes, os.getpid(), settings.events_file,
            ", dry run" if settings.dry_run else "",
        )  # fmt: skip
        asyncio.run(coord.serve(endpoint.sock, ready=ready, endpoint=endpoint))
        log.info("stopped")
        return 0
    finally:
        endpoint.close()
