"""The Python API: ``subprocess`` and ``asyncio`` replacements that run commands under pmrun.

``pmrun.launch(args, max_rss="1G")`` takes what :class:`subprocess.Popen` takes and starts
the launcher ``pmrun -- cmd`` runs (a separate process, so the framework itself never
becomes a subreaper or blocks signals). :func:`run` is :func:`subprocess.run`;
:func:`create_subprocess_exec` and :func:`create_subprocess_shell` are asyncio's.

No file of pmrun's is created: the exit report comes back through an anonymous memfd
(``--report /dev/fd/N``) and the command's pid through a pipe (``--pid-fd N``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any

from . import _procfs
from .sizes import parse_optional_size, parse_size

# What an ``args`` may be, as for Popen.
Args = (
    str | bytes | os.PathLike[str] | os.PathLike[bytes] | Sequence[str | bytes | os.PathLike[Any]]
)

# A trampoline for Popen's ``executable=``: exec the program under another argv[0]. It keeps
# its pid, so the command's pid is still the one pmrun reports.
_EXEC_AS = "import os,sys; os.execv(sys.argv[1], sys.argv[2:])"


def _above_stdio(fd: int) -> int:
    """``fd`` moved to 3 or above: in a parent that closed stdin, a memfd could become fd 0."""
    if fd > 2:
        return fd
    import fcntl

    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


class _Plumbing:
    """The two private channels from the launcher: pid pipe and report memfd. No path, no file."""

    def __init__(self) -> None:
        self.report_fd = _above_stdio(os.memfd_create("pmrun-report", os.MFD_CLOEXEC))
        pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
        self.pid_r, self.pid_w = _above_stdio(pid_r), _above_stdio(pid_w)
        self.command_pid: int | None = None
        self.command_pidfd: int | None = None
        self.launcher_pid = 0
        self._pid_buf = b""
        self._pid_done = False
        self.report: dict[str, Any] | None = None

    def launcher_args(self) -> list[str]:
        return ["--report", f"/dev/fd/{self.report_fd}", "--pid-fd", str(self.pid_w)]

    def started(self, launcher_pid: int = 0) -> None:
        """The launcher runs (or failed to): our copy of the pipe's write end goes."""
        self.launcher_pid = launcher_pid or self.launcher_pid
        if self.pid_w >= 0:
            os.close(self.pid_w)
            self.pid_w = -1

    def feed_pid(self, timeout: float | None) -> bool:
        """Read what the launcher wrote on the pid pipe; True once it is settled."""
        while not self._pid_done:
            if timeout is not None and not select.select([self.pid_r], [], [], timeout)[0]:
                return False
            chunk = os.read(self.pid_r, 64)
            self._pid_buf += chunk
            if not chunk or b"\n" in self._pid_buf:
                self._settle_pid()
        return True

    def _settle_pid(self) -> None:
        self._pid_done = True
        line = self._pid_buf.partition(b"\n")[0]
        if line.isdigit():
            self.command_pid = int(line)
            self.command_pidfd = _pin(self.command_pid, self.launcher_pid)
        os.close(self.pid_r)
        self.pid_r = -1

    def finish(self) -> dict[str, Any] | None:
        """The launcher has ended: read the report and free every fd."""
        if not self._pid_done and self.pid_r >= 0:
            self.feed_pid(0)  # whatever arrived; the launcher is gone
        if self.report_fd >= 0:
            try:
                size = os.fstat(self.report_fd).st_size
                data = os.pread(self.report_fd, size, 0) if size else b""
                self.report = json.loads(data) if data else None
            except (OSError, ValueError):
                self.report = None
            self.close()
        return self.report

    def kill_command(self, sig: int) -> bool:
        """Signal the command itself through its pidfd; False when it cannot be reached."""
        if not self._pid_done and self.pid_r >= 0:
            self.feed_pid(0)  # the pid may have arrived without anyone asking
        if self.command_pidfd is None:
            return False
        try:
            signal.pidfd_send_signal(self.command_pidfd, sig)
            return True
        except (OSError, AttributeError):
            return False

    def close(self) -> None:
        self.started()
        for name in ("report_fd", "pid_r", "command_pidfd"):
            fd = getattr(self, name)
            if fd is not None and fd >= 0:
                os.close(fd)
                setattr(self, name, -1 if name != "command_pidfd" else None)
        self._pid_done = True

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:  # pragma: no cover - interpreter shutdown
            pass


def _pin(pid: int, launcher_pid: int) -> int | None:
    """A pidfd for the command, only if it still is the command: its parent's parent is pmrun.

    The pid was written when the command started; if it has ended since and the pid was
    reused, the new process hangs elsewhere and is not pinned (kill() then goes to pmrun).
    """
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        keeper = _procfs.stat(pid).ppid
        if _procfs.stat(keeper).ppid == launcher_pid:  # command -> keeper -> launcher
            return fd
    except (OSError, _procfs.ProcessGone):
        pass
    os.close(fd)
    return None


def _returncode(status: int, report: dict[str, Any] | None) -> int:
    """Popen's meaning: -N if signal N ended the command on its own; 137 if pmrun stopped it."""
    if report is not None and report.get("reason") == "signal" and report.get("signal"):
        return -int(report["signal"])
    return status


class Agent:
    """A command running under pmrun: a :class:`subprocess.Popen` look-alike.

    ``pid`` is the command's own pid (what a memory monitor should read), ``launcher_pid``
    pmrun's. ``returncode`` follows Popen: the command's exit code, ``-N`` when signal N
    ended it, and **137** when pmrun stopped it for a memory limit (``report["reason"]``
    says which limit); 125 is pmrun's own error.
    """

    def __init__(self, popen: subprocess.Popen[Any], plumbing: _Plumbing, args: Any) -> None:
        self._popen = popen
        self._plumbing = plumbing
        self.args = args
        self.returncode: int | None = None
        self.stdin: IO[Any] | None = popen.stdin
        self.stdout: IO[Any] | None = popen.stdout
        self.stderr: IO[Any] | None = popen.stderr

    @property
    def launcher_pid(self) -> int:
        """pmrun's own pid; signals sent to it are forwarded to the command."""
        return self._popen.pid

    @property
    def pid(self) -> int:
        """The command's pid; waits until the command runs. The launcher's if it never did."""
        plumbing = self._plumbing
        if not plumbing._pid_done:
            while not plumbing.feed_pid(0.05):
                if self._popen.poll() is not None:
                    plumbing.feed_pid(0)
                    break
        return plumbing.command_pid or self._popen.pid

    @property
    def report(self) -> dict[str, Any] | None:
        """The exit report (see ``pmrun --report``) once the agent has ended, else None."""
        self.poll()
        return self._plumbing.report

    def _ended(self, status: int) -> int:
        if self.returncode is None:
            self.returncode = _returncode(status, self._plumbing.finish())
        return self.returncode

    def poll(self) -> int | None:
        status = self._popen.poll()
        return None if status is None else self._ended(status)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the agent to end; returns :attr:`returncode`."""
        return self._ended(self._popen.wait(timeout))

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        out = self._popen.communicate(input, timeout)
        self._ended(self._popen.wait())
        return out

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to pmrun, which forwards it to the command (as to ``pmrun -- cmd``)."""
        if self._popen.poll() is None:
            self._popen.send_signal(sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the command; pmrun then stops what is left of its tree and writes the report.

        Before the command runs (or if it cannot be reached) pmrun itself is killed, and its
        keeper kills the tree.
        """
        if self._popen.poll() is not None:
            return
        if not self._plumbing.kill_command(signal.SIGKILL):
            self._popen.kill()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._popen.__exit__(*exc)  # closes the pipes, waits
        self._ended(self._popen.wait())

    def __del__(self) -> None:
        plumbing = getattr(self, "_plumbing", None)
        if plumbing is not None:
            plumbing.close()

    def __repr__(self) -> str:
        if self.returncode is None:
            state = f"running with launcher pid {self.launcher_pid}"
        elif self.returncode < 0:
            state = f"killed by signal {-self.returncode}"
        else:
            state = f"exited with {self.returncode}"
        return f"<pmrun.Agent {state}>"


def _pmrun_options(
    *,
    max_rss: str | int | None,
    warn_rss: str | int | None,
    max_as: str | int | None,
    grace: float | None,
    name: str | None,
    priority: int | None,
    backend: str | None,
    coordinator: bool | None,
    socket: str | None,
    record: str | None,
    quiet: bool,
) -> list[str]:
    args: list[str] = []
    if max_rss is not None:
        args += ["--max-rss", str(parse_size(max_rss))]
    if warn_rss is not None:
        args += ["--warn-rss", str(parse_size(warn_rss))]
    if max_as is not None:
        parsed = parse_optional_size(max_as)
        args += ["--max-as", "off" if parsed is None else str(parsed)]
    if grace is not None:
        args += ["--grace", str(grace)]
    if name is not None:
        args += ["--name", name]
    if priority is not None:
        args += ["--priority", str(priority)]
    if backend is not None:
        args += ["--backend", backend]
    if coordinator is False:
        args += ["--no-coordinator"]
    if socket is not None:
        args += ["--socket", socket]
    if record is not None:
        args += ["--record", record]
    if quiet:
        args += ["--quiet"]
    return args


def _argv(args: Any, shell: bool, executable: Any, env: Any, cwd: Any) -> list[str]:
    """The command pmrun runs for what Popen would execute.

    Raises FileNotFoundError / PermissionError as Popen does when the program cannot be run.
    """
    if isinstance(args, (str, bytes, os.PathLike)):
        argv = [os.fsdecode(args)]
    else:
        argv = [os.fsdecode(a) for a in args]
    if shell:
        return [os.fsdecode(executable) if executable else "/bin/sh", "-c", *argv]
    if not argv:
        raise IndexError("list index out of range")  # what Popen raises for []
    program = os.fsdecode(executable) if executable else argv[0]
    found = _which(program, env, cwd)
    if executable:
        return [sys.executable, "-c", _EXEC_AS, found, *argv]
    return argv


def _which(program: str, env: Any, cwd: Any) -> str:
    """Find ``program`` as the child's exec would (env's PATH, cwd for relative paths)."""
    if "/" in program:
        path = os.path.join(os.fsdecode(cwd), program) if cwd is not None else program
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
        return program
    denied = False
    for d in os.get_exec_path(env):
        candidate = os.path.join(d, program)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            denied = True
    if denied:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def _prepare(
    args: Any,
    shell: bool,
    executable: Any,
    env: Any,
    cwd: Any,
    pass_fds: Iterable[int],
    **opts: Any,
) -> tuple[list[str], tuple[int, ...], _Plumbing]:
    command = _argv(args, shell, executable, env, cwd)
    options = _pmrun_options(**opts)
    plumbing = _Plumbing()
    launcher = [sys.executable, "-m", "pmrun", *plumbing.launcher_args(), *options, "--", *command]
    fds = (*tuple(pass_fds), plumbing.report_fd, plumbing.pid_w)
    return launcher, fds, plumbing


def launch(
    args: Args,
    *,
    max_rss: str | int | None = None,
    warn_rss: str | int | None = None,
    max_as: str | int | None = None,
    grace: float | None = None,
    name: str | None = None,
    priority: int | None = None,
    backend: str | None = None,
    coordinator: bool | None = None,
    socket: str | None = None,
    record: str | None = None,
    quiet: bool = False,
    shell: bool = False,
    executable: str | bytes | os.PathLike[Any] | None = None,
    env: Any = None,
    cwd: Any = None,
    pass_fds: Iterable[int] = (),
    **popen_kwargs: Any,
) -> Agent:
    """Start ``args`` under pmrun, as ``subprocess.Popen(args, ...)`` would start it.

    ``args``, ``shell``, ``executable``, ``env``, ``cwd``, ``pass_fds`` and every other Popen
    argument (``stdin``, ``stdout``, ``text``, ``start_new_session``, ...) mean what they
    mean to Popen; the named options are ``pmrun``'s (None = from the environment and config
    files, as on the command line). Raises FileNotFoundError / PermissionError like Popen
    when the program cannot be run, :class:`pmrun.errors.SizeError` for a bad size; both
    before anything starts.
    """
    launcher, fds, plumbing = _prepare(
        args,
        shell,
        executable,
        env,
        cwd,
        pass_fds,
        max_rss=max_rss,
        warn_rss=warn_rss,
        max_as=max_as,
        grace=grace,
        name=name,
        priority=priority,
        backend=backend,
        coordinator=coordinator,
        socket=socket,
        record=record,
        quiet=quiet,
    )
    try:
        popen = subprocess.Popen(launcher, env=env, cwd=cwd, pass_fds=fds, **popen_kwargs)
    except BaseException:
        plumbing.close()
        raise
    plumbing.started(popen.pid)
    return Agent(popen, plumbing, args)


def run(
    args: Args,
    *,
    input: Any = None,
    capture_output: bool = False,
    timeout: float | None = None,
    check: bool = False,
    **kwargs: Any,
) -> subprocess.CompletedProcess[Any]:
    """:func:`subprocess.run` under pmrun; keyword arguments are :func:`launch`'s.

    On ``timeout`` the command is killed, pmrun stops the rest of its tree, and
    TimeoutExpired is raised once the tree is gone. ``check`` raises CalledProcessError
    for a non-zero :attr:`Agent.returncode` (137: stopped for memory).
    """
    if input is not None:
        if kwargs.get("stdin") is not None:
            raise ValueError("stdin and input arguments may not both be used.")
        kwargs["stdin"] = subprocess.PIPE
    if capture_output:
        if kwargs.get("stdout") is not None or kwargs.get("stderr") is not None:
            raise ValueError("stdout and stderr arguments may not be used with capture_output.")
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with launch(args, **kwargs) as agent:
        try:
            stdout, stderr = agent.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            _stop(agent)
            stdout, stderr = agent._popen.communicate()
            raise subprocess.TimeoutExpired(args, e.timeout, output=stdout, stderr=stderr) from None
        except BaseException:
            _stop(agent)
            raise
    code = agent.returncode
    assert code is not None
    if check and code:
        raise subprocess.CalledProcessError(code, args, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(args, code, stdout, stderr)


def _stop(agent: Agent, grace_s: float = 10.0) -> None:
    """Kill the command; give pmrun ``grace_s`` to stop the tree and report, then kill pmrun."""
    agent.kill()
    try:
        agent._popen.wait(grace_s)
    except subprocess.TimeoutExpired:
        agent._popen.kill()  # its keeper kills the tree
        agent._popen.wait()


# -- asyncio -------------------------------------------------------------------------------


class AsyncAgent:
    """A command running under pmrun: an :class:`asyncio.subprocess.Process` look-alike.

    ``pid`` is the command's (known when :func:`create_subprocess_exec` returns),
    ``launcher_pid`` pmrun's; ``returncode`` as for :class:`Agent`.
    """

    def __init__(self, process: asyncio.subprocess.Process, plumbing: _Plumbing, args: Any):
        self._process = process
        self._plumbing = plumbing
        self.args = args
        self.returncode: int | None = None
        self.stdin = process.stdin
        self.stdout = process.stdout
        self.stderr = process.stderr

    @property
    def launcher_pid(self) -> int:
        return self._process.pid

    @property
    def pid(self) -> int:
        return self._plumbing.command_pid or self._process.pid

    @property
    def report(self) -> dict[str, Any] | None:
        return self._plumbing.report

    def _ended(self, status: int) -> int:
        if self.returncode is None:
            self.returncode = _returncode(status, self._plumbing.finish())
        return self.returncode

    async def wait(self) -> int:
        return self._ended(await self._process.wait())

    async def communicate(self, input: bytes | None = None) -> tuple[bytes | None, bytes | None]:
        out = await self._process.communicate(input)
        self._ended(await self._process.wait())
        return out

    def send_signal(self, sig: int) -> None:
        if self._process.returncode is None:
            self._process.send_signal(sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """As :meth:`Agent.kill`: SIGKILL the command, pmrun stops the rest and reports."""
        if self._process.returncode is not None:
            return
        if not self._plumbing.kill_command(signal.SIGKILL):
            self._process.kill()

    def __del__(self) -> None:
        plumbing = getattr(self, "_plumbing", None)
        if plumbing is not None:
            plumbing.close()

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"returncode={self.returncode}"
        return f"<pmrun.AsyncAgent pid={self.pid} {state}>"


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def _await_pid(plumbing: _Plumbing) -> None:
    """Wait, without blocking the loop, until the launcher says the command's pid (or ends)."""
    loop = asyncio.get_running_loop()
    fd = plumbing.pid_r
    while not plumbing.feed_pid(0):
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _wake, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)


async def _create(args: Any, shell: bool, kwds: dict[str, Any]) -> AsyncAgent:
    opts = {k: kwds.pop(k) for k in _OPTION_NAMES if k in kwds}
    opts.setdefault("quiet", False)
    for k in _OPTION_NAMES:
        opts.setdefault(k, None)
    opts["quiet"] = bool(opts["quiet"])
    launcher, fds, plumbing = _prepare(
        args,
        shell,
        kwds.pop("executable", None),
        kwds.get("env"),
        kwds.get("cwd"),
        kwds.pop("pass_fds", ()),
        **opts,
    )
    try:
        process = await asyncio.create_subprocess_exec(*launcher, pass_fds=fds, **kwds)
    except BaseException:
        plumbing.close()
        raise
    plumbing.started(process.pid)
    await _await_pid(plumbing)
    return AsyncAgent(process, plumbing, args)


_OPTION_NAMES = (
    "max_rss",
    "warn_rss",
    "max_as",
    "grace",
    "name",
    "priority",
    "backend",
    "coordinator",
    "socket",
    "record",
    "quiet",
)


async def create_subprocess_exec(program: Any, *args: Any, **kwds: Any) -> AsyncAgent:
    """:func:`asyncio.create_subprocess_exec` under pmrun; pmrun's options as in :func:`launch`."""
    return await _create([program, *args], False, kwds)


async def create_subprocess_shell(cmd: str | bytes, **kwds: Any) -> AsyncAgent:
    """:func:`asyncio.create_subprocess_shell` under pmrun (``/bin/sh -c cmd``)."""
    return await _create(cmd, True, kwds)
