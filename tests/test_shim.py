"""``pmrun shim``: programs started by name run under pmrun, transparently, never recursing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PMRUN
from coordinator_fixtures import Daemon
from helpers import wait_until
from pmrun import shim

# A stand-in for the real `claude`, further down PATH: shows what it was given and where it runs.
STUB = """#!/bin/sh
if [ "$1" = wait ]; then
  trap 'echo "got TERM"; exit 0' TERM
  echo ready
  while [ ! -e "$2" ]; do sleep 0.05; done
  exit 0
fi
if [ "$1" = alloc ]; then
  exec {python} -c "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep(30)"
fi
printf '%s\\n' "argv0=$0" "agent=${{PMRUN_AGENT_ID:-none}}"
for a in "$@"; do printf 'arg=%s\\n' "$a"; done
[ -t 0 ] && echo stdin=tty || echo "stdin=$(cat)"
exit "${{STUB_EXIT:-0}}"
"""


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A shim directory, a bin directory with the stub `claude`, PATH in that order."""
    shims = tmp_path / "shims"
    real_bin = tmp_path / "bin"
    real_bin.mkdir()
    stub = real_bin / "claude"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    monkeypatch.setenv("PMRUN_SHIM_DIR", str(shims))
    monkeypatch.setenv("PMRUN_COORDINATOR", "0")
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "shims-link"
    link.symlink_to(shims)
    # The shim directory twice and through a symlink: still no recursion.
    path = os.pathsep.join([str(shims), str(link), str(shims), str(real_bin), os.environ["PATH"]])
    monkeypatch.setenv("PATH", path)
    return {"shims": shims, "bin": real_bin, "stub": stub, "tmp": tmp_path}


def pmrun_shim(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PMRUN, "shim", *args], capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload]


def test_a_script_calling_claude_by_name_runs_it_under_pmrun(world: dict[str, Path]) -> None:
    r = pmrun_shim("install", "claude", "--max-rss", "300M")
    assert r.returncode == 0, r.stderr
    script = world["tmp"] / "agent.sh"
    script.write_text('#!/bin/sh\necho "one  two" | claude -p "a b" \'*\' ""\necho "rc=$?"\n')
    script.chmod(0o755)
    out = subprocess.run(
        [str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "STUB_EXIT": "42"},
    )
    lines = out.stdout.splitlines()
    assert lines[0] == f"argv0={world['stub']}"  # the real program, found further down PATH
    assert lines[1].startswith("agent=claude.")  # it runs under pmrun, named after itself
    assert lines[2:] == ["arg=-p", "arg=a b", "arg=*", "arg=", "stdin=one  two", "rc=42"]
    assert out.stderr == ""


def test_same_output_and_status_as_bare(world: dict[str, Path]) -> None:
    assert pmrun_shim("install", "claude").returncode == 0
    for code in ("0", "3", "255"):
        env = {**os.environ, "STUB_EXIT": code}
        bare = subprocess.run(
            [str(world["stub"]), "x"],
            input="in",
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        via = subprocess.run(
            ["claude", "x"], input="in", capture_output=True, text=True, env=env, timeout=60
        )
        assert via.returncode == bare.returncode == int(code)
        strip = [ln for ln in via.stdout.splitlines() if not ln.startswith("agent=")]
        assert strip == [ln for ln in bare.stdout.splitlines() if not ln.startswith("agent=")]


def test_no_real_program_is_127_not_a_loop(world: dict[str, Path]) -> None:
    assert pmrun_shim("install", "claude").returncode == 0
    world["stub"].unlink()
    r = subprocess.run(["claude"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 127
    assert r.stderr == "pmrun shim: claude: command not found further down PATH\n"


def test_another_shim_directory_further_down_is_skipped(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    other = world["tmp"] / "other-shims"
    shim.install("claude", [], other)
    assert shim.install("claude", [], world["shims"]).exists()
    path = os.pathsep.join([str(world["shims"]), str(other), str(world["bin"]), "/usr/bin:/bin"])
    monkeypatch.setenv("PATH", path)
    r = subprocess.run(
        ["claude"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    assert r.returncode == 0 and r.stdout.count("agent=claude.") == 1  # one pmrun, not two


def test_a_copied_shim_further_down_is_refused_not_looped(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    shim.install("claude", [], world["shims"])
    copy_dir = world["tmp"] / "copy"  # no marker: someone copied the shim into ~/bin
    copy_dir.mkdir()
    shutil.copy2(world["shims"] / "claude", copy_dir / "claude")
    path = os.pathsep.join([str(world["shims"]), str(copy_dir), str(world["bin"]), "/usr/bin:/bin"])
    monkeypatch.setenv("PATH", path)
    r = subprocess.run(["claude"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 127 and "is itself a pmrun shim" in r.stderr
    assert r.stderr.count("\n") == 1
    # The copy run directly skips itself and finds the real program.
    r = subprocess.run(
        [str(copy_dir / "claude")],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0 and r.stdout.count("agent=claude.") == 1
    monkeypatch.setenv("PATH", os.pathsep.join([str(copy_dir), str(world["bin"]), "/usr/bin:/bin"]))
    r = subprocess.run(
        ["claude"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    assert r.returncode == 0 and r.stdout.count("agent=claude.") == 1


def test_the_terminal_is_the_programs(world: dict[str, Path]) -> None:
    assert pmrun_shim("install", "claude").returncode == 0
    main, child = os.openpty()
    try:
        p = subprocess.run(["claude", "x"], stdin=child, stdout=child, stderr=child, timeout=60)
        os.close(child)
        child = -1
        out = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(main)
        if child >= 0:
            os.close(child)
    assert p.returncode == 0
    assert b"stdin=tty" in out and b"arg=x" in out


def test_signals_reach_the_program(world: dict[str, Path]) -> None:
    assert pmrun_shim("install", "claude").returncode == 0
    go = world["tmp"] / "go"
    p = subprocess.Popen(["claude", "wait", str(go)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        p.send_signal(signal.SIGTERM)  # to the shim's pid: the sh exec'd pmrun, same pid
        assert p.wait(30) == 0
        assert p.stdout.read() == "got TERM\n"
    finally:
        go.touch()
        if p.poll() is None:
            p.kill()
        p.wait(30)


def test_limits_from_config_win_over_install_flags(world: dict[str, Path]) -> None:
    assert pmrun_shim("install", "claude", "--max-rss", "1G", "--grace", "0.5").returncode == 0
    (world["tmp"] / "pmrun.toml").write_text(
        '[shim.claude]\nmax-rss = "60M"\n\n[agent]\ngrace = 0.5\n'
    )
    r = subprocess.run(["claude", "alloc"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 137, r.stderr
    assert "max-rss" in r.stderr or "60" in r.stderr
    (world["tmp"] / "pmrun.toml").write_text('[shim.claude]\nmax-rsss = "60M"\n')
    r = subprocess.run(["claude", "x"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 125 and r.stderr.count("\n") == 1 and "max-rsss" in r.stderr
    # pmrun itself still reads the file (the [shim] table is not an unknown setting).
    (world["tmp"] / "pmrun.toml").write_text('[shim.claude]\nmax-rss = "60M"\n')
    ok = subprocess.run([PMRUN, "--no-coordinator", "--", "true"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_counted_by_a_real_coordinator(
    world: dict[str, Path],
    procs,
    sockdir,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock = str(sockdir / "c.sock")
    daemon = Daemon(procs, sock).start()
    monkeypatch.setenv("PMRUN_SOCKET", sock)
    monkeypatch.setenv("PMRUN_COORDINATOR", "1")
    assert pmrun_shim("install", "claude", "--max-rss", "300M").returncode == 0
    go = world["tmp"] / "go"
    script = world["tmp"] / "fleet.sh"
    script.write_text(f'#!/bin/sh\nclaude wait "{go}"\necho "rc=$?"\n')
    script.chmod(0o755)
    p = procs.popen([str(script)], stdout=subprocess.PIPE, text=True)
    try:
        agent = wait_until(lambda: daemon.agents().get("claude"), timeout=30)
        assert agent["max_bytes"] == 300 << 20 and agent["argv"][0] == str(world["stub"])
    finally:
        go.touch()
    out, _ = p.communicate(timeout=30)
    assert out.splitlines()[-1] == "rc=0"
    wait_until(lambda: "claude" not in daemon.agents(), timeout=30)


def test_install_list_remove_and_refusals(world: dict[str, Path]) -> None:
    assert pmrun_shim("install", "claude", "--max-rss", "2G").returncode == 0
    listed = pmrun_shim("list").stdout
    assert listed == f"claude\t--max-rss 2G\t{world['stub']}\n"
    assert os.access(world["shims"] / "claude", os.X_OK)
    (world["shims"] / "mine").write_text("#!/bin/sh\necho mine\n")
    for args, needle in [
        (("install", "mine"), "not a pmrun shim"),
        (("remove", "mine"), "not a pmrun shim"),
        (("remove", "nothing"), "no shim for nothing"),
        (("install", "../x"), "not a program name"),
        (("install", "claude", "--max-rss", "lots"), "invalid size"),
        (("install", "claude", "--report", "r.json"), "--report"),
        (("install", "claude", "--bogus"), "unknown option"),
    ]:
        r = pmrun_shim(*args)
        assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, (
            args,
            r.stderr,
        )
    assert (world["shims"] / "mine").read_text() == "#!/bin/sh\necho mine\n"
    assert pmrun_shim("list").stdout.startswith(
        "claude\t--max-rss 2G"
    )  # a failed install changed nothing
    assert pmrun_shim("remove", "claude").returncode == 0
    assert not (world["shims"] / "claude").exists()
    assert pmrun_shim("list").stdout.startswith("no shims")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish", "sh"])
def test_env_puts_the_shim_dir_first_once(shell: str, world: dict[str, Path]) -> None:
    text = pmrun_shim("env", "--shell", shell).stdout
    d = str(world["shims"])
    if shell == "fish":
        assert text == f"contains -- {d} $PATH; or set -gx PATH {d} $PATH\n"
    run = shutil.which(shell)
    if run is None:
        pytest.skip(f"{shell} is not installed")
    env_line = f"{PMRUN} shim env --shell {shell}"
    if shell == "fish":
        script = f"set PATH /usr/bin /bin; {env_line} | source; {env_line} | source; echo $PATH"
    else:
        script = f'PATH=/usr/bin:/bin; eval "$({env_line})"; eval "$({env_line})"; echo $PATH'
    out = subprocess.run([run, "-c", script], capture_output=True, text=True, timeout=60).stdout
    assert out.split() == [f"{d}:/usr/bin:/bin"] or out.split() == [d, "/usr/bin", "/bin"]


def test_a_shim_whose_python_is_gone_still_runs_the_program(world: dict[str, Path]) -> None:
    world["shims"].mkdir()
    (world["shims"] / shim.MARKER).touch()
    path = world["shims"] / "claude"
    path.write_text(shim.render("claude", [], "/nonexistent/python"))
    path.chmod(0o755)
    r = subprocess.run(
        ["claude", "x"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    assert r.returncode == 0 and "arg=x" in r.stdout and "agent=none" in r.stdout
    assert r.stderr.count("\n") == 1 and "without pmrun" in r.stderr


def test_real_claude_code_version_through_the_shim(
    claude: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = str(claude)
    shims = tmp_path / "shims"
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(shims), os.path.dirname(real), os.environ["PATH"]])
    )
    shim.install("claude", ["--no-coordinator"], shims)
    bare = subprocess.run([real, "--version"], capture_output=True, timeout=120)
    via = subprocess.run(["claude", "--version"], capture_output=True, timeout=120)
    assert (via.returncode, via.stdout, via.stderr) == (bare.returncode, bare.stdout, bare.stderr)
    assert b"Claude Code" in via.stdout
