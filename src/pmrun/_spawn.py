"""Fork and exec the agent's command, with its limits set between the two.

Hand-written rather than ``subprocess`` because the child needs more than
``preexec_fn`` offers cleanly: an unblocked signal mask (the launcher blocks the
signals it waits for), the parent-death signal, RLIMIT_AS, joining a cgroup, and
an exact errno back to the parent when exec fails (127 vs 126).
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum for its IntEnums
import errno
import os
import resource
import sys

from .errors import CommandNotExecutable, CommandNotFound

TYPE_CHECKING = False  # collections.abc is for annotations only: the launch path skips it
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


def flush_std() -> None:
    """Flush Python's stdout/stderr before a fork, whatever state they are in (None, EPIPE)."""
    for f in (sys.stdout, sys.stderr):
        try:
            if f is not None:
                f.flush()
        except (OSError, ValueError):
            pass


def resolve(command: str, path: str | None) -> str:
    """Find ``command`` like execvp would; raise the 127/126 errors a shell gives."""
    if "/" in command:
        if not os.path.exists(command):
            raise CommandNotFound(f"{command}: no such file")
        if os.path.isdir(command) or not os.access(command, os.X_OK):
            raise CommandNotExecutable(f"{command}: permission denied (not executable)")
        return command
    found_not_exec = None
    for d in (path or os.defpath).split(os.pathsep):
        candidate = os.path.join(d or ".", command)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            found_not_exec = candidate
    if found_not_exec:
        raise CommandNotExecutable(f"{found_not_exec}: permission denied (not executable)")
    raise CommandNotFound(f"{command}: command not found")


_nofile_of_command: tuple[int, int] | None = None  # RLIMIT_NOFILE as pmrun was given it


def raise_nofile_limit() -> None:
    """Raise pmrun's own soft RLIMIT_NOFILE to the hard limit; the command gets the original.

    A wide tree needs fds in pmrun (a /proc file or a pidfd per process at times), as
    systemd raises its own; the command must see the limit it was started with.
    """
    global _nofile_of_command
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            _nofile_of_command = (soft, hard)
        except (OSError, ValueError):  # a best effort: the reader caps its fds anyway
            pass


_SH = "/bin/sh"


def _interpreter(path: str) -> str | None:
    """The program named by ``path``'s ``#!`` line, if it has one."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    return words[0].decode(errors="replace") if words else None


def _looks_binary(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(80)
    except OSError:
        return True
    return head.startswith(b"\x7fELF") or b"\0" in head.split(b"\n", 1)[0]


def spawn(
    argv: list[str],
    env: Mapping[str, str],
    *,
    max_as: int | None,
    pdeathsig: int = signal.SIGKILL,
    prepare: Callable[[], None] | None = None,
    executable: str | None = None,
) -> int:
    """Start ``argv`` and return its pid once exec has succeeded.

    Raises :class:`CommandNotFound` / :class:`CommandNotExecutable` if exec fails.
    """
    import prctl

    executable = executable or resolve(argv[0], env.get("PATH"))
    env_list = {k: v for k, v in env.items()}
    parent = os.getpid()
    r, w = os.pipe2(os.O_CLOEXEC)
    flush_std()
    # A backend may make the child itself: the cgroup v2 backend has it born inside the
    # agent's group (clone3, pmrun.cgroups._clone3), falling back to this fork.
    fork = getattr(getattr(prepare, "__self__", None), "fork_child", os.fork)
    pid = fork()
    if pid == 0:  # the child: only exec or _exit from here
        try:
            os.close(r)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            # Python ignores these; exec keeps "ignored", so put the defaults back.
            for s in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(s, signal.SIG_DFL)
            prctl.set_pdeathsig(pdeathsig)
            if os.getppid() != parent:  # the launcher died before prctl took effect
                os._exit(128 + pdeathsig)
            if prepare is not None:
                prepare()
            if max_as is not None:
                resource.setrlimit(resource.RLIMIT_AS, (max_as, max_as))
            if _nofile_of_command is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, _nofile_of_command)
            try:
                os.execve(executable, argv, env_list)
            except OSError as e:
                if e.errno != errno.ENOEXEC or _looks_binary(executable):
                    raise
                # No #! line: run it with /bin/sh, as execvp(3) and env(1) do (not a binary,
                # as bash's check goes: sh would only print garbage).
                os.execve(_SH, [_SH, executable, *argv[1:]], env_list)
        except BaseException as e:  # report any failure, never return into the parent's code
            code = getattr(e, "errno", None) or errno.EINVAL
            try:
                os.write(w, f"{code}:{e}".encode()[:512])
            finally:
                os._exit(127)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    if data:
        os.waitpid(pid, 0)
        code_s, _, message = data.decode(errors="replace").partition(":")
        code = int(code_s) if code_s.isdigit() else errno.EINVAL
        interp = _interpreter(executable)
        if interp and code in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
            # execve blames the script for its #! line's program, as bash says "bad interpreter".
            err = CommandNotFound if code != errno.EACCES else CommandNotExecutable
            raise err(f"{argv[0]}: bad interpreter {interp}: {os.strerror(code)}")
        if code in (errno.ENOENT, errno.ENOTDIR):
            raise CommandNotFound(f"{argv[0]}: command not found")
        if code in (errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.EISDIR):
            raise CommandNotExecutable(f"{argv[0]}: cannot execute ({os.strerror(code)})")
        if code == errno.ENOMEM and max_as is not None:
            raise CommandNotExecutable(
                f"{argv[0]}: cannot start: out of memory under --max-as {max_as >> 20}M; raise it or set it to off"
            )
        raise CommandNotExecutable(f"{argv[0]}: cannot start: {message}")
    return pid
