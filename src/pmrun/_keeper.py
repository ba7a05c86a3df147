"""The keeper: a small process between the launcher and the command.

Why it exists: a launcher killed with SIGKILL cannot clean up, and the command's
parent-death signal only reaches the command itself; a double-forked daemon would
then outlive pmrun. So the launcher forks a keeper (no exec, so it costs a fork,
not an interpreter start) that is the child subreaper and the command's parent.
The keeper's own parent-death signal is catchable: when the launcher dies, the keeper
kills every process below it and exits. When the command ends, the keeper tells the
launcher its wait status, keeps reaping what the launcher stops, and exits when it
has no children left; its exit therefore means "the tree is empty".
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum for its IntEnums
import functools
import os
import struct

from . import _procfs, _signals

TYPE_CHECKING = False  # collections.abc is for annotations only: the launch path skips it
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

# Sent by the kernel to the keeper when the launcher dies.
PARENT_DIED = signal.SIGRTMIN + 4
# Sent by the keeper to the launcher when the command's status is in the pipe.
COMMAND_ENDED = signal.SIGRTMIN + 5
# Sent by the launcher to the keeper: take the signals named on the control pipe (one
# byte each) off your pending set. The keeper never takes the signals the launcher
# forwards by itself, so one pending there says the sender signalled the whole process
# group (or every process), the command included.
DRAIN = signal.SIGRTMIN + 6

# Messages on the status pipe: kind (b"P" pid, b"S" status, b"E" exec error), then fields.
_PID = struct.Struct("=ci")
_STATUS = struct.Struct("=ciiq")  # kind, pid, wait status, ru_maxrss in KiB


def kill_below(
    root: int,
    *,
    spare: Callable[[int], bool] | None = None,
    reap: Callable[[], object] | None = None,
    timeout_s: float = _signals.KILL_TIMEOUT_S,
) -> list[int]:
    """SIGSTOP then SIGKILL every descendant of ``root`` until none we may kill is alive.

    Returns the pids left alive because they refused the signal (another uid). Children
    of ``root`` for which ``spare(pid)`` is true are left alone, with their descendants.
    Gives up on a process stuck in the kernel after ``timeout_s`` (see
    :func:`pmrun._signals.kill_tree`); its SIGKILL stays pending and the keeper reaps it.
    """
    below = functools.partial(_below, root, spare)
    left = _signals.kill_tree(below, root, reap or _reap_all, timeout_s=timeout_s)
    return [p for p in left if p in _signals.REFUSED]


def _below(root: int, spare: Callable[[int], bool] | None) -> list[int]:
    try:
        kids = _procfs.children(root)
    except _procfs.ProcessGone:  # the keeper exited: its tree is empty
        return []
    if spare is not None:
        kids = [k for k in kids if not spare(k)]
    return _procfs.descendants(kids)


def _drain(control_r: int, ack_w: int) -> None:
    """Take the signals the launcher names off the pending set, so the next is seen afresh.

    Acknowledged (one byte a request), so the launcher never looks at a pending set it
    asked to change: a real-time signal queues, and two of them pending look like one.
    """
    try:
        sigs = os.read(control_r, 4096)
    except BlockingIOError:
        return
    for sig in sigs:
        signal.sigtimedwait({sig}, 0)
    os.write(ack_w, b"k" * len(sigs))


def _reap_all() -> tuple[list[tuple[int, int, int]], bool]:
    """Reap every exited child: ([(pid, status, ru_maxrss KiB)], whether any child is left)."""
    out: list[tuple[int, int, int]] = []
    while True:
        try:
            pid, status, ru = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return out, False
        if pid == 0:
            return out, True
        out.append((pid, status, ru.ru_maxrss))


def run_keeper(
    spawn: Callable[[], int],
    launcher: int,
    status_w: int,
    cleanup: Callable[[], None] | None = None,
    control_r: int = -1,
    ack_w: int = -1,
) -> None:
    """Body of the keeper process; never returns (``os._exit``)."""
    import prctl

    code = 0
    try:
        prctl.set_child_subreaper(1)
        prctl.set_pdeathsig(PARENT_DIED)
        waited = {signal.SIGCHLD, PARENT_DIED, DRAIN}
        signal.pthread_sigmask(signal.SIG_BLOCK, waited)
        if os.getppid() != launcher:  # the launcher died before prctl took effect
            os._exit(1)
        try:
            pid = spawn()
        except BaseException as e:  # exec failed: hand the error to the launcher
            from .errors import PmrunError

            text = f"{getattr(e, 'exit_code', 1)}:{e if isinstance(e, PmrunError) else repr(e)}"
            os.write(status_w, b"E" + text.encode(errors="replace")[:4000])
            os._exit(0)
        os.write(status_w, _PID.pack(b"P", pid))
        command_done = False
        while True:
            info = signal.sigwaitinfo(waited)
            if info.si_signo == DRAIN:
                _drain(control_r, ack_w)
                continue
            if info.si_signo == PARENT_DIED and os.getppid() != launcher:
                # What refused SIGKILL (another uid) is left to whoever adopts it.
                kill_below(os.getpid())
                if cleanup is not None:
                    cleanup()  # e.g. remove the agent's cgroup, which nobody else will now
                os._exit(1)
            reaped, any_left = _reap_all()
            for child, status, maxrss in reaped:
                if child == pid:
                    os.write(status_w, _STATUS.pack(b"S", pid, status, maxrss))
                    _signals.send(launcher, COMMAND_ENDED)
                    command_done = True
            if command_done and not any_left:
                break
    except BaseException:
        code = 1
    os._exit(code)


class Keeper:
    """The launcher's handle on its keeper: start it, learn the command's pid and status."""

    def __init__(self) -> None:
        self.pid = 0
        self.command_pid = 0
        self.command_status: int | None = None
        self.command_maxrss_kib: int | None = None
        self._r = -1
        self._control_w = -1
        self._ack_r = -1

    def drain(self, sig: int, timeout_s: float = 0.5) -> None:
        """Have the keeper take ``sig`` off its pending signals (see :data:`DRAIN`); wait for it."""
        import select

        if self._control_w < 0:
            return
        try:
            os.write(self._control_w, bytes((sig,)))
        except OSError:  # the keeper is gone, or the pipe is full of unread requests
            return
        if not _signals.send(self.pid, DRAIN):
            return
        if select.select([self._ack_r], [], [], timeout_s)[0]:
            try:
                os.read(self._ack_r, 4096)
            except OSError:
                pass

    def start(
        self,
        argv: list[str],
        env: Mapping[str, str],
        *,
        max_as: int | None,
        prepare: Callable[[], None] | None,
        cleanup: Callable[[], None] | None = None,
        after_fork: Callable[[], object] | None = None,
    ) -> int:
        """Fork the keeper, which starts the command; return the command's pid.

        Raises the command's exec error (127/126) as the launcher would.
        """

        from . import _spawn
        from .errors import CommandNotExecutable, CommandNotFound, PmrunError

        executable = _spawn.resolve(argv[0], env.get("PATH"))  # fail fast, in the launcher
        r, w = os.pipe2(os.O_CLOEXEC)
        control_r, control_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        ack_r, ack_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        launcher = os.getpid()
        _spawn.flush_std()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.close(control_w)
            os.close(ack_r)
            run_keeper(
                lambda: _spawn.spawn(
                    argv, env, max_as=max_as, prepare=prepare, executable=executable
                ),
                launcher,
                w,
                cleanup,
                control_r,
                ack_w,
            )
        os.close(w)
        os.close(control_r)
        os.close(ack_w)
        self._control_w, self._ack_r = control_w, ack_r
        self.pid = pid
        self._r = r
        if after_fork is not None:
            after_fork()  # overlaps the command's start (a cgroup join costs the kernel ~13 ms)
        head = os.read(r, _PID.size)
        if head[:1] == b"E" or len(head) < _PID.size:
            rest = head[1:] + _read_all(r)
            self.close()
            os.waitpid(pid, 0)
            code_s, _, message = rest.decode(errors="replace").partition(":")
            code = int(code_s) if code_s.isdigit() else 1
            if code == CommandNotFound.exit_code:
                raise CommandNotFound(message)
            if code == CommandNotExecutable.exit_code:
                raise CommandNotExecutable(message)
            raise PmrunError(message or "the keeper process failed to start the command")
        _, self.command_pid = _PID.unpack(head)
        os.set_blocking(r, False)
        return self.command_pid

    def poll_status(self) -> int | None:
        """The command's wait status once the keeper has reported it, else None."""
        if self.command_status is None and self._r >= 0:
            try:
                data = os.read(self._r, _STATUS.size)
            except BlockingIOError:
                return None
            if len(data) == _STATUS.size:
                _, _, self.command_status, self.command_maxrss_kib = _STATUS.unpack(data)
        return self.command_status

    def close(self) -> None:
        for fd in (self._r, self._control_w, self._ack_r):
            if fd >= 0:
                os.close(fd)
        self._r = self._control_w = self._ack_r = -1


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        b = os.read(fd, 4096)
        if not b:
            return b"".join(chunks)
        chunks.append(b)
