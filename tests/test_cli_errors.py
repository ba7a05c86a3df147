"""Hostile arguments and environments against the real ``pmrun`` executable, as a table:
never a traceback, at most one line on stderr, the documented exit status, and the
command's own behaviour where it could run.

Exit statuses (README, docs/diagnostics.md): subcommands 0 done, 1 failed, 2 bad arguments
or input; the launcher 125 for its own error, else the command's own status.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import PMRUN

NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
          "--inh-caps=-dac_override,-dac_read_search"]  # fmt: skip
needs_no_dac = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="makes a file unreadable to root by dropping its DAC override (setpriv)",
)


class Case:
    """Where a row runs: ``cwd``, extra environment (bytes allowed), a command prefix."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cwd = tmp / "work"
        self.cwd.mkdir()
        self.env: dict[bytes, bytes] = {
            os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()
        }
        self.prefix: list[str] = []

    def recording(self) -> str:
        path = self.tmp / "rec.jsonl"
        r = subprocess.run([PMRUN, "--no-coordinator", "--record", str(path), "--", "true"])
        assert r.returncode == 0
        return str(path)

    def event_log(self) -> str:
        path = self.tmp / "events.jsonl"
        path.write_text('{"ts": 1.0, "level": "info", "kind": "agent.register", "name": "a"}\n')
        return str(path)


def unreadable_parent(name: str, text: str) -> Callable[[Case], None]:
    def setup(c: Case) -> None:
        parent = c.tmp / "proj"
        (parent / "sub").mkdir(parents=True)
        (parent / name).write_text(text)
        (parent / name).chmod(0)
        c.cwd = parent / "sub"
        c.prefix = NO_DAC

    return setup


def deleted_cwd(c: Case) -> None:
    gone = c.tmp / "gone"
    gone.mkdir()
    c.prefix = ["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "$@"', "sh"]


def env(**values: str | bytes) -> Callable[[Case], None]:
    def setup(c: Case) -> None:
        for k, v in values.items():
            c.env[k.encode()] = v if isinstance(v, bytes) else v.encode()

    return setup


def toml(text: str) -> Callable[[Case], None]:
    def setup(c: Case) -> None:
        (c.cwd / "pmrun.toml").write_text(text)

    return setup


NON_UTF8 = b"/tmp/pmrun-\xff\xfe.sock"

# (id, argv (callables get the Case), setup or None, exit status, text on stderr or stdout)
ROWS: list[tuple[str, list, Callable[[Case], None] | None, int, str]] = [
    # pmrun events
    ("events --events DIR", ["events", "--events", lambda c: str(c.tmp)], None, 2,
     "is a directory"),
    ("events --events missing", ["events", "--events", lambda c: str(c.tmp / "none")], None, 1,
     "no event log"),
    ("events --since garbage", ["events", "--since", "yesterday-ish"], None, 2, "invalid time"),
    ("events --since 1e400s", ["events", "--since", "1e400s"], None, 2, "invalid time"),
    ("events --since far", ["events", "--events", Case.event_log, "--since",
                            "99999999999999999999d"], None, 0, ""),
    ("events --since year 1", ["events", "--events", Case.event_log, "--since", "0001-01-01"],
     None, 2, "invalid time"),
    ("events -n huge", ["events", "--events", Case.event_log, "-n", "9" * 30], None, 0, ""),
    ("events --level bogus", ["events", "--level", "bogus"], None, 2, "--level"),
    # pmrun top
    ("top -d nan", ["top", "-d", "nan", "-n", "1"], None, 2, "--interval"),
    ("top -d inf", ["top", "-d", "inf", "-n", "2"], None, 2, "--interval"),
    ("top -d -1", ["top", "-d", "-1"], None, 2, "--interval"),
    ("top -d 1e300", ["top", "-d", "1e300", "-n", "2"], None, 2, "--interval"),
    ("top -n 0", ["top", "-n", "0"], None, 2, "--iterations"),
    # pmrun status / cleanup / heap / coordinator and the socket
    ("status --socket /dev/null", ["status", "--socket", "/dev/null"], None, 1, "not a socket"),
    ("status --socket DIR", ["status", "--socket", lambda c: str(c.tmp)], None, 1,
     "not a socket"),
    ("status --socket too long", ["status", "--socket", "/tmp/" + "x" * 200], None, 2, "bytes"),
    ("status --socket not UTF-8", ["status", "--socket", NON_UTF8], None, 0, "no coordinator"),
    ("status PMRUN_SOCKET not UTF-8", ["status"], env(PMRUN_SOCKET=NON_UTF8), 0,
     "no coordinator"),
    ("status --json not UTF-8", ["status", "--json", "--socket", NON_UTF8], None, 0, "socket"),
    ("cleanup --socket not UTF-8", ["cleanup", "--socket", NON_UTF8], None, 1,
     "no coordinator answers on /tmp/pmrun-\\xff\\xfe.sock"),
    ("events --socket not UTF-8", ["events", "--socket", NON_UTF8], None, 1, "no event log"),
    ("cleanup --timeout nan", ["cleanup", "--timeout", "nan"], None, 2, "--timeout"),
    ("cleanup --timeout -1", ["cleanup", "--timeout", "-1"], None, 2, "--timeout"),
    ("cleanup --fraction 2", ["cleanup", "--fraction", "2"], None, 2, "fraction"),
    ("heap --pid huge", ["heap", "--pid", "9" * 30], None, 1, "no process"),
    ("heap --limit 0", ["heap", "x", "--limit", "0"], None, 2, "--limit"),
    ("heap without coordinator", ["heap", "x"], None, 1, "no coordinator"),
    ("coordinator --pool nan", ["coordinator", "--pool", "nan"], None, 2, "--pool"),
    ("coordinator --metrics-port", ["coordinator", "--metrics-port", "99999"], None, 2, "port"),
    ("coordinator --settle 1e300", ["coordinator", "--settle", "1e300"], None, 2, "settle"),
    ("coordinator --socket /dev/null", ["coordinator", "--socket", "/dev/null"], None, 1,
     "not a socket"),
    ("status --bogus", ["status", "--bogus"], None, 2, "--bogus"),
    ("plot DIR", ["plot", lambda c: str(c.tmp)], None, 2, "directory"),
    ("plot /dev/null", ["plot", "/dev/null"], None, 2, "not a pmrun recording"),
    ("plot -o DIR", ["plot", Case.recording, "-o", lambda c: str(c.tmp)], None, 1,
     "cannot write"),
    ("plot -o /dev/full", ["plot", Case.recording, "-o", "/dev/full"], None, 1, "cannot write"),
    # configuration from the environment and from files
    ("status PMRUN_PRIORITY=nan", ["status"], env(PMRUN_PRIORITY="nan"), 2, "PMRUN_PRIORITY"),
    ("config priority 1e300", ["config"], toml("[agent]\npriority = 1e300\n"), 2, "priority"),
    ("config grace inf", ["config"], toml("[agent]\ngrace = inf\n"), 2, "grace"),
    ("config not UTF-8", ["config"], lambda c: (c.cwd / "pmrun.toml").write_bytes(b"\xff"), 2,
     "not valid TOML"),
    pytest.param("status, unreadable pyproject in a parent", ["status"],
                 unreadable_parent("pyproject.toml", "[tool.pmrun]\n"), 0, "no coordinator",
                 marks=needs_no_dac),
    pytest.param("config, unreadable pyproject in a parent", ["config"],
                 unreadable_parent("pyproject.toml", "[tool.pmrun]\n"), 0, "default",
                 marks=needs_no_dac),
    pytest.param("launcher, unreadable pyproject in a parent",
                 ["--no-coordinator", "--", "echo", "ran"],
                 unreadable_parent("pyproject.toml", "[tool.pmrun]\n"), 0, "ran",
                 marks=needs_no_dac),
    pytest.param("status, unreadable pmrun.toml in a parent", ["status"],
                 unreadable_parent("pmrun.toml", "[agent]\n"), 2, "cannot read",
                 marks=needs_no_dac),
    ("status in a deleted cwd", ["status"], deleted_cwd, 0, "no coordinator"),
    ("config in a deleted cwd", ["config"], deleted_cwd, 0, "default"),
    ("gc --bogus", ["gc", "--bogus"], None, 2, "--bogus"),
    ("gc --dry-run", ["gc", "--dry-run"], None, 0, ""),
    ("init --bogus", ["init", "--bogus"], None, 2, "--bogus"),
    ("completion tcsh", ["completion", "tcsh"], None, 2, "tcsh"),
    ("shim install bad name", ["shim", "install", "../evil"], None, 2, "program name"),
    ("shim remove missing", ["shim", "remove", "nothing-here"], None, 2, "nothing-here"),
    ("claude-pm --bogus", ["claude-pm", "install-hook", "--bogus"], None, 2, "--bogus"),
    # the launcher's own edge
    ("run --bogus", ["run", "--bogus", "--", "true"], None, 125, "unknown option"),
    ("--priority 1e300", ["--priority", "1e300", "--", "true"], None, 125, "priority"),
    ("--priority in TOML", ["--", "true"], toml("[agent]\npriority = 1e300\n"), 125, "priority"),
    ("--name too long", ["--name", "n" * 201, "--", "true"], None, 125, "--name"),
    ("--socket /dev/null", ["--socket", "/dev/null", "--", "echo", "ran"], None, 0,
     "not a socket"),
    ("--socket not UTF-8", ["--socket", NON_UTF8, "--no-coordinator", "--", "echo", "ran"],
     None, 0, "ran"),
]  # fmt: skip


def _ids(rows: list) -> list[str]:
    return [r.values[0] if hasattr(r, "values") else r[0] for r in rows]


@pytest.mark.parametrize(("name", "argv", "setup", "code", "text"), ROWS, ids=_ids(ROWS))
def test_hostile_input_gets_one_line_and_its_exit_status(tmp_path, name, argv, setup, code, text):
    case = Case(tmp_path)
    if setup is not None:
        setup(case)
    args = [a(case) if callable(a) else a for a in argv]
    r = subprocess.run(
        [*case.prefix, PMRUN, *args], capture_output=True, env=case.env, cwd=case.cwd,
        stdin=subprocess.DEVNULL, timeout=60,
    )  # fmt: skip
    out = r.stdout.decode(errors="backslashreplace")
    err = r.stderr.decode(errors="backslashreplace")
    assert "Traceback" not in err, err
    assert len(err.splitlines()) <= 1, err
    assert r.returncode == code, (out, err)
    if code not in (0,):
        assert err.startswith("pmrun:"), err
    assert text in out + err, (out, err)


def test_the_table_covers_every_subcommand():
    from pmrun.cli import COMMANDS

    covered = {(r.values[1] if hasattr(r, "values") else r[1])[0] for r in ROWS}
    assert set(COMMANDS) - covered == set()
