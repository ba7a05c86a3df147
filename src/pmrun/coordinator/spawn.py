"""Start a coordinator on demand, fully detached, as ssh-agent and gpg-agent are.

Used by :func:`pmrun.coordinator.link.ensure_coordinator` when nothing answers on the
socket. The daemon is double-forked (``setsid`` in between) so it is a child of init,
not of the launcher; it gets /dev/null as stdin and appends its log next to the socket.
Two launchers that get here at the same instant both spawn one; the daemon's lock makes
the second exit at once with status 0.
"""

from __future__ import annotations

import _signal
import os
import sys

from . import paths

MAX_LOG_BYTES = 1 << 20  # the previous log is kept as coordinator.log.1 beyond this


def coordinator_argv(socket_path: str, python: str | None = None) -> list[str]:
    """``python -m pmrun coordinator --socket PATH``."""
    python = python or sys.executable
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(package_dir, "__main__.py")):  # an early checkout
        return [python, "-c", "from pmrun.cli import main; main()", "coordinator",
                "--socket", socket_path]  # fmt: skip
    return [python, "-m", "pmrun", "coordinator", "--socket", socket_path]


def spawn_coordinator(
    socket_path: str, *, argv: list[str] | None = None, env: dict[str, str] | None = None
) -> int:
    """Start a detached coordinator for ``socket_path``; returns the intermediate child's pid.

    Raises :class:`~pmrun.errors.SocketSecurityError` if the socket's directory is unsafe.
    """
    paths.prepare_dir(socket_path)
    log_file = paths.log_path(socket_path)
    log_fd = paths.open_private(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        if os.fstat(log_fd).st_size > MAX_LOG_BYTES:  # the file checked ours, not a symlink
            os.replace(log_file, log_file + ".1")
            os.close(log_fd)
            log_fd = paths.open_private(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except BaseException:
        os.close(log_fd)
        raise
    argv = argv or coordinator_argv(socket_path)
    child_env = dict(os.environ if env is None else env)
    child_env.pop("PMRUN_AGENT_ID", None)  # the daemon belongs to no agent
    child_env["PMRUN_ON_DEMAND"] = "1"  # exits by itself when idle (coordinator.lifecycle)
    null_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which execs or _exits
            try:
                # The launcher's threads block the signals its main thread waits for,
                # and exec keeps a blocked mask: unblock all, or SIGTERM would never
                # reach the daemon.
                _signal.pthread_sigmask(_signal.SIG_SETMASK, [])
                os.setsid()
                if os.fork() != 0:
                    os._exit(0)
                os.dup2(null_fd, 0)
                os.dup2(log_fd, 1)
                os.dup2(log_fd, 2)
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))
                os.execve(argv[0], argv, child_env)
            finally:
                os._exit(127)
    finally:
        os.close(log_fd)
        os.close(null_fd)
    try:
        os.waitpid(pid, 0)  # the intermediate child exits at once; the daemon is init's
    except ChildProcessError:
        pass  # a caller that reaps all its children (the launcher) got to it first
    return pid
