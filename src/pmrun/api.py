"""The Python API for frameworks that spawn agents with ``subprocess`` today.

``pmrun.launch([...], max_rss="1G")`` is a one-line change from
``subprocess.Popen([...])``: it starts the same launcher ``pmrun -- cmd`` runs (a
separate process, so the framework itself never becomes a subreaper or blocks
signals) and returns a handle with ``wait()``, ``pid`` and the exit ``report``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from .sizes import parse_optional_size, parse_size


class Agent:
    """A running agent. Signals sent to it (``terminate``, ``send_signal``) reach the command."""

    def __init__(self, popen: subprocess.Popen[Any], report_path: str) -> None:
        self._popen = popen
        self._report_path = report_path
        self._report: dict[str, Any] | None = None

    @property
    def pid(self) -> int:
        """The launcher's pid (signals to it are forwarded to the command)."""
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """pmrun's exit status: the command's, 128+N for a signal, 137 for a memory limit."""
        return self._popen.returncode

    @property
    def stdin(self):
        return self._popen.stdin

    @property
    def stdout(self):
        return self._popen.stdout

    @property
    def stderr(self):
        return self._popen.stderr

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the agent to end; returns its exit status (see :attr:`returncode`)."""
        return self._popen.wait(timeout)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        return self._popen.communicate(input, timeout)

    def send_signal(self, sig: int) -> None:
        self._popen.send_signal(sig)

    def terminate(self) -> None:
        self._popen.terminate()

    def kill(self) -> None:
        """SIGKILL the launcher; the command dies with it (parent-death signal)."""
        self._popen.kill()

    @property
    def report(self) -> dict[str, Any] | None:
        """The exit report (see ``pmrun --report``) once the agent has ended, else None."""
        if self._report is None and self._popen.poll() is not None:
            try:
                with open(self._report_path) as f:
                    self._report = json.load(f)
            except (OSError, ValueError):
                return None
            finally:
                try:
                    os.unlink(self._report_path)
                except OSError:
                    pass
        return self._report

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"exited with {self.returncode}"
        return f"<pmrun.Agent pid={self.pid} {state}>"


def launch(
    argv: list[str],
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
    **popen_kwargs: Any,
) -> Agent:
    """Start ``argv`` under pmrun; keyword arguments are ``pmrun``'s options.

    Options left as None come from the environment and config files, as on the
    command line. Other keyword arguments go to :class:`subprocess.Popen` (``stdin``,
    ``stdout``, ``cwd``, ``env``, ...). Bad sizes raise :class:`pmrun.errors.SizeError`
    here, before anything starts.
    """
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
    fd, report_path = tempfile.mkstemp(prefix="pmrun-report-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, "-m", "pmrun", "--report", report_path, *args, "--", *argv]
    return Agent(subprocess.Popen(cmd, **popen_kwargs), report_path)
