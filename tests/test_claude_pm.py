"""claude-multiagent-pm 1.4.7 from PyPI, run under pmrun by install() with no change to its code.

A venv with the real framework and this checkout of pmrun (editable) is built once and kept
in ``.venv/claude-pm-1.4.7`` (reruns take seconds); the tests skip only if the package index
cannot be reached. Each test runs the framework's own code in a subprocess of that venv
(tests/claude_pm_scenarios.py) against a real coordinator: real agents, real limits, real
signals, nothing of the framework mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator_fixtures import Daemon, FakeLauncher, Procs
from helpers import wait_until
from pmrun.integrations import claude_pm

REPO = Path(__file__).resolve().parents[1]
VERSION = "1.4.7"
VENV = REPO / ".venv" / f"claude-pm-{VERSION}"
PY = VENV / "bin" / "python"
SCENARIOS = str(Path(__file__).with_name("claude_pm_scenarios.py"))
CONTRACT = str(Path(__file__).with_name("cache_contract.py"))
UNREACHABLE = (
    "NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
    "Network is unreachable", "No matching distribution found", "Could not find a version",
    "ConnectionError", "Connection refused", "timed out",
)  # fmt: skip
MIB = 1 << 20

# Building the venv the first time (pip, from PyPI) takes minutes; the fixture runs inside
# the first test that needs it.
pytestmark = pytest.mark.timeout(1200)

# The agent's own start-up: with LEAK_MB set, the framework's agent runner holds that much
# (touched, so resident) before it loads its profile. Only the agent: pmrun's launcher runs
# with the same PYTHONPATH (the framework puts its path first) and must not leak.
SITECUSTOMIZE = """\
import os
if os.environ.get("LEAK_MB"):
    with open("/proc/self/cmdline", "rb") as f:
        if f.read().split(b"\\0")[1:3] == [b"-m", b"claude_pm.services.agent_runner"]:
            import time
            held = [b"x" * (8 << 20) for _ in range(int(os.environ["LEAK_MB"]) // 8)]
            time.sleep(120)
"""


STAMP = VENV / "pmrun-pyproject.sha256"  # pmrun's dependencies as last installed there


def _pyproject_digest() -> str:
    import hashlib

    return hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()


def _venv_ready() -> bool:
    if not PY.exists() or not STAMP.exists() or STAMP.read_text() != _pyproject_digest():
        return False
    probe = "import claude_pm, pmrun; print(pmrun.__file__)"
    out = subprocess.run([str(PY), "-c", probe], capture_output=True, text=True, timeout=120)
    return out.returncode == 0 and out.stdout.strip().startswith(str(REPO / "src"))


def _pip(*args: str) -> None:
    result = subprocess.run(
        [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if result.returncode == 0:
        return
    text = result.stdout + result.stderr
    last = text.strip().splitlines()[-1] if text.strip() else f"exit {result.returncode}"
    if any(mark in text for mark in UNREACHABLE):
        pytest.skip(f"the package index is unreachable (pip install {' '.join(args)}): {last}")
    pytest.fail(f"pip install {' '.join(args)} failed: {text[-3000:]}")


@pytest.fixture(scope="session")
def framework_venv() -> Path:
    """A venv with claude-multiagent-pm==1.4.7 and this checkout's pmrun, built once."""
    if not _venv_ready():
        if not PY.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        _pip(f"claude-multiagent-pm=={VERSION}")
        _pip("-e", str(REPO))  # again whenever pyproject.toml changes (the stamp)
        STAMP.write_text(_pyproject_digest())
        assert _venv_ready(), "the venv was built but cannot import claude_pm and this pmrun"
    return PY


@pytest.fixture
def framework_dir(tmp_path: Path) -> Path:
    """A framework path for the agent runner: agent-roles for two agent types, and the
    leaking start-up above."""
    roles = tmp_path / "framework" / "agent-roles"
    roles.mkdir(parents=True)
    for kind in ("engineer", "qa"):
        roles.joinpath(f"{kind}.md").write_text(
            f"# {kind.title()} Agent\n\n## Role\nThe {kind} agent of the tests.\n"
        )
    (tmp_path / "framework" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (tmp_path / "home").mkdir()
    return tmp_path / "framework"


def scenario_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HOME"] = str(tmp / "home")  # the framework creates ~/.claude-pm/agents/user-defined
    return env


def run_scenario(py: Path, tmp: Path, *args: str, timeout: float = 240) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(py), SCENARIOS, *args], capture_output=True, text=True, timeout=timeout,
        env=scenario_env(tmp), cwd=tmp,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr[-4000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def daemon(procs: Procs, sockdir: Path) -> Iterator[Daemon]:
    d = Daemon(procs, str(sockdir / "c.sock"), "--cooldown", "0.5").start()
    yield d


# -- the cache -------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_contract_is_the_framework_s_own_and_holds_after_install(
    framework_venv: Path, tmp_path: Path
) -> None:
    for extra, module in (
        ([], "claude_pm.services.shared_prompt_cache"),
        (["--install"], "pmrun.cache"),
    ):
        out = subprocess.run(
            [str(framework_venv), CONTRACT, "claude_pm.services.shared_prompt_cache", *extra],
            capture_output=True, text=True, timeout=120, env=scenario_env(tmp_path), cwd=tmp_path,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(out.stdout.splitlines()[-1])
        assert result["module"] == module
        assert len(result["ran"]) == len(__import__("cache_contract").CHECKS)


@pytest.mark.slow
def test_framework_cache_calls_reach_pmrun_s_cache_attached_to_the_coordinator(
    framework_venv: Path, tmp_path: Path, daemon: Daemon
) -> None:
    [result] = run_scenario(framework_venv, tmp_path, "cache", daemon.socket)
    assert result["cls"] == "pmrun.cache.SharedPromptCache"
    assert result["loader_cls"] == "pmrun.cache"  # a module that copied the name at import
    assert result["same"] and result["running"] and result["attached"]
    assert (result["max_size"], result["max_memory_mb"]) == (300, 20)
    assert result["loaded"] and result["hits"] == 1 and result["sets"] == 1
    assert result["keys"] == ["base_agent:instructions:normal"]
    assert result["after_clear"] == 0  # clear_base_agent_cache's exact keys matched
    assert result["seen_by_coordinator"]
    managed = result["managed"]  # its ServiceManager started, checked and stopped pmrun's cache
    assert managed["same"]
    assert managed["health"] == "healthy" and managed["checks"]["cache_service_running"], managed
    registered = [e for e in daemon.events("service.register") if e["service"] == "prompt-cache"]
    assert registered, daemon.events()[-10:]


# -- agent spawns ----------------------------------------------------------------------------


@pytest.mark.slow
def test_sync_and_async_spawns_run_through_pmrun_and_a_stop_is_137_with_its_report(
    framework_venv: Path, tmp_path: Path, framework_dir: Path, daemon: Daemon
) -> None:
    results = {
        r["kind"]: r
        for r in run_scenario(framework_venv, tmp_path, "spawn", daemon.socket, str(framework_dir))
    }
    for kind, name in (("sync", "engineer"), ("async", "qa")):
        r = results[kind]
        assert r["rc"] == 0 and r["ok"], r
        assert r["report"]["name"] == name and r["report"]["reason"] == "exit"
        assert r["report"]["command"][1:3] == ["-m", "claude_pm.services.agent_runner"]
    for kind in ("sync-leak", "async-leak"):
        r = results[kind]
        assert r["rc"] == 137, r  # what the framework's SubprocessRunner returned
        report = r["report"]
        assert report["name"] == "engineer" and report["reason"] == "max-rss"
        assert report["limits"]["max_rss"] == 64 * MIB
        assert "pmrun: stopped engineer" in r["stderr"]  # pmrun's line reached its stderr
    timeout = results["timeout"]
    assert timeout["rcs"] == [-1, -1] and timeout["left"] == [], timeout  # nothing outlived it
    # Every spawn was an agent of the coordinator, named after its type.
    names = [e["name"] for e in daemon.events("agent.register")]
    assert sorted(names) == ["engineer"] * 5 + ["qa"], names
    reports = sorted((tmp_path.parent).glob("**/claude-pm-reports/*.json"))
    assert not reports or all(p.stat().st_size for p in reports)


# -- cleanup handlers ------------------------------------------------------------------------


class Scenario:
    """The long-running ``handlers`` scenario and the lines it printed."""

    def __init__(self, procs: Procs, py: Path, tmp: Path, socket: str) -> None:
        self.proc = procs.popen(
            [str(py), SCENARIOS, "handlers", socket], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=scenario_env(tmp),
            cwd=tmp,
        )  # fmt: skip
        self.lines: list[str] = []
        import threading

        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def json(self, kind: str) -> list[dict[str, Any]]:
        found = [json.loads(x) for x in self.lines if x.startswith("{")]
        return [x for x in found if x.get("kind") == kind]

    def severities(self, name: str) -> list[str]:
        return [x.split()[2] for x in self.lines if x.startswith(f"HANDLER {name} ")]

    def entries(self) -> int:
        assert self.proc.stdin is not None
        before = len(self.json("entries"))
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        wait_until(lambda: len(self.json("entries")) > before, 30, "the scenario answers")
        return int(self.json("entries")[-1]["entries"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(60) == 0


@pytest.mark.slow
def test_pmrun_cleanup_and_pressure_reach_the_framework_s_handlers(
    framework_venv: Path, tmp_path: Path, procs: Procs, sockdir: Path
) -> None:
    # A generous settle: the handlers run gc and clear caches on a machine others share.
    daemon = Daemon(
        procs, str(sockdir / "c.sock"), "--pool", "200M", "--cooldown", "60", "--settle", "5"
    ).start()
    scenario = Scenario(procs, framework_venv, tmp_path, daemon.socket)
    wait_until(lambda: scenario.json("ready"), 120, f"the scenario starts: {scenario.lines}")
    [ready] = scenario.json("ready")
    assert ready["handlers"] == ["memory_diagnostics", "recorder", "shared_prompt_cache"]
    assert ready["entries"] > 100
    expected = {"prompt-cache", "claude-pm:memory_diagnostics", "claude-pm:recorder"}
    wait_until(lambda: expected <= registered_services(daemon), 30, "all three registered")
    assert "claude-pm:shared_prompt_cache" not in registered_services(daemon)  # not twice

    cleanup = subprocess.run(
        [sys.executable, "-m", "pmrun", "cleanup", "--socket", daemon.socket, "--fraction", "30%",
         "--timeout", "60", "--json"], capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert cleanup.returncode == 0, cleanup.stderr
    answers = {r["service"]: r for r in json.loads(cleanup.stdout)["results"]}
    assert answers["claude-pm:recorder"]["bytes"] == int(1.5 * MIB), answers
    assert not answers["claude-pm:memory_diagnostics"].get("error"), answers
    assert answers["prompt-cache"]["bytes"] > 0
    wait_until(lambda: scenario.severities("recorder") == ["warning"], 30, "the handler ran")

    full = subprocess.run(
        [sys.executable, "-m", "pmrun", "cleanup", "--socket", daemon.socket, "--fraction", "100%",
         "--timeout", "60"], capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert full.returncode == 0 and "claude-pm:recorder" in full.stdout, full.stdout + full.stderr
    wait_until(lambda: scenario.severities("recorder") == ["warning", "critical"], 30, "critical")
    assert scenario.entries() == 0  # memory_diagnostics' own cleanup cleared pmrun's cache

    # Pressure: an agent taking the pool past its warning level makes the coordinator
    # broadcast, and the framework's handler answers.
    FakeLauncher(procs, daemon.socket, "hog", 190)
    wait_until(lambda: len(scenario.severities("recorder")) >= 3, 60, "a pressure broadcast")

    def pressure_answers() -> dict[str, Any]:  # logged once every answer is in
        broadcasts = [e for e in daemon.events("evict.result") if e["reason"] != "cleanup"]
        return {a["service"]: a for e in broadcasts for a in e["answered"]}

    answered = wait_until(
        lambda: pressure_answers().get("claude-pm:recorder"), 30, "the broadcast is logged"
    )
    assert answered["bytes"] == int(1.5 * MIB), answered
    scenario.close()


def registered_services(daemon: Daemon) -> set[str]:
    names: set[str] = set()
    for event in daemon.events("service.register", "service.close", "service.lost"):
        if event["kind"] == "service.register":
            names.add(str(event["service"]))
        else:
            names.discard(str(event["service"]))
    return names


# -- switching it on -------------------------------------------------------------------------


@pytest.mark.slow
def test_the_pth_hook_switches_it_on_with_the_environment_variable(
    framework_venv: Path, tmp_path: Path
) -> None:
    pmrun = [str(framework_venv), "-m", "pmrun", "claude-pm"]
    probe = "from claude_pm.services import SharedPromptCache as S; print(S.__module__)"
    env = scenario_env(tmp_path)

    def module(**extra: str) -> str:
        out = subprocess.run(
            [str(framework_venv), "-c", "import logging; logging.disable(50); " + probe],
            capture_output=True, text=True, timeout=120, env={**env, **extra}, cwd=tmp_path,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip()

    installed = subprocess.run([*pmrun, "install-hook"], capture_output=True, text=True, env=env)
    try:
        assert installed.returncode == 0, installed.stderr
        hook = Path(installed.stdout.split()[1])
        assert hook.name == claude_pm.HOOK_FILE and hook.read_text() == claude_pm.HOOK_LINE
        assert module(PMRUN_CLAUDE_PM="1") == "pmrun.cache"
        assert module() == "claude_pm.services.shared_prompt_cache"  # off without it
        assert module(PMRUN_CLAUDE_PM="0") == "claude_pm.services.shared_prompt_cache"
        # pmrun cannot take over (a socket path too long): one line, and the program runs.
        bad = subprocess.run(
            [str(framework_venv), "-c", probe], capture_output=True, text=True, timeout=120,
            env={**env, "PMRUN_CLAUDE_PM": "1", "PMRUN_SOCKET": "/tmp/" + "x" * 200},
            cwd=tmp_path,
        )  # fmt: skip
        assert bad.returncode == 0 and bad.stdout.strip().endswith("shared_prompt_cache")
        pmrun_lines = [x for x in bad.stderr.splitlines() if x.startswith("pmrun:")]
        assert len(pmrun_lines) == 1 and "could not take over" in pmrun_lines[0], bad.stderr
    finally:
        removed = subprocess.run([*pmrun, "remove-hook"], capture_output=True, text=True, env=env)
    assert removed.returncode == 0 and removed.stdout.startswith("removed "), removed
    assert not hook.exists()
    again = subprocess.run([*pmrun, "remove-hook"], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout


@pytest.mark.slow
def test_pmrun_claude_pm_runs_the_framework_s_cli(framework_venv: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [str(framework_venv), "-m", "pmrun", "claude-pm", "--", "--version"],
        capture_output=True, text=True, timeout=120, env=scenario_env(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"version {VERSION}" in out.stdout


def test_install_hook_refuses_an_interpreter_without_pmrun(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pmrun", "claude-pm", "install-hook", "--python", "/usr/bin/python3"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if "pmrun is not installed" not in out.stderr:
        pytest.skip("/usr/bin/python3 has pmrun installed")
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    bad = subprocess.run(
        [sys.executable, "-m", "pmrun", "claude-pm", "install-hook", "--python", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.startswith("pmrun: error: ")


# -- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "severity"),
    [(0.0, "warning"), (0.25, "warning"), (0.5, "warning"), (0.51, "critical"), (0.75, "critical"),
     (1.0, "critical")],
)  # fmt: skip
def test_severity_for(fraction: float, severity: str) -> None:
    assert claude_pm.severity_for(fraction) == severity


@pytest.mark.parametrize(
    ("answer", "freed"),
    [
        ({"bytes": 1234, "memory_freed_mb": 99}, 1234),  # pmrun's own figure first
        ({"memory_freed_mb": 1.5}, int(1.5 * MIB)),  # the framework's cache and health monitor
        ({"actions": [{"freed_mb": 1}, {"freed_mb": 0.5}, {"error": "x"}]}, int(1.5 * MIB)),
        ({"memory_freed_mb": -3}, 0),
        ({"success": False, "reason": "Cleanup on cooldown"}, 0),
        ({"bytes": float("nan")}, 0),
        (None, 0),
        ("freed", 0),
    ],
)
def test_freed_bytes(answer: object, freed: int) -> None:
    assert claude_pm.freed_bytes(answer) == freed


def test_limits_become_launcher_options() -> None:
    limits = claude_pm.Limits.parse({"max_rss": "1G", "grace": 2, "max_as": "off"})
    assert limits.options() == ["--max-rss", str(1 << 30), "--max-as", "off", "--grace", "2.0"]
    integration = claude_pm.Integration(
        limits, {"qa": claude_pm.Limits.parse({"max_rss": "2G", "priority": 3})}, "/s.sock",
        True, Path("/r"), False, "/py",
    )  # fmt: skip
    assert integration.argv_prefix("qa", Path("/r/x.json")) == [
        "/py", "-m", "pmrun", "--max-rss", str(2 << 30), "--max-as", "off", "--grace", "2.0",
        "--priority", "3", "--socket", "/s.sock", "--name", "qa", "--report", "/r/x.json", "--",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_rss": "lots"}, "size"),
        ({"grace": -1}, "grace"),
        ({"backend": "docker"}, "backend"),
        ({"priority": 1.5}, "priority"),
        ({"max_mem": "1G"}, "unknown limit max_mem"),
    ],
)
def test_bad_limits_are_one_clear_error(limits: dict[str, Any], message: str) -> None:
    from pmrun.errors import PmrunError

    with pytest.raises(PmrunError, match=message):
        claude_pm.install(**limits)
