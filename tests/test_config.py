"""Settings precedence (flags > env > project > user > defaults) and `pmrun config`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pmrun import config
from pmrun.cli._group import cli
from pmrun.cli.project import display_value
from pmrun.errors import ConfigError, ExitCode
from pmrun.init import toml_value

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory that is also the current directory."""
    d = tmp_path / "proj"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def user_file() -> Path:
    """The user config file, under the private XDG_CONFIG_HOME that conftest gives each test."""
    return Path(os.environ["XDG_CONFIG_HOME"]) / "pmrun" / "config.toml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(cwd: Path, env: dict[str, str] | None = None, **flags: str) -> config.Config:
    xdg = {"XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]}
    return config.load(flags, env={**xdg, **(env or {})}, cwd=cwd)


def pmrun_config(*args: str) -> Result:
    return CliRunner().invoke(cli, ["config", *args])


# ---------------------------------------------------------------------------------------
# Precedence, through the library


def test_defaults(project: Path) -> None:
    cfg = load(project)
    assert cfg.files == []
    for s in config.SETTINGS:
        assert cfg.source(s.name) == "default"
        assert cfg[s.name] == s.parse(s.default)
    assert cfg["agent.max-rss"] == 1 << 30
    assert cfg["coordinator.system-threshold"] == 0.8


# Each row removes the highest layer left: what remains must win, with its source.
LAYERS = ["flag", "env", "project", "user", "default"]


@pytest.mark.parametrize("top", LAYERS)
def test_each_layer_beats_the_ones_below(project: Path, top: str) -> None:
    present = LAYERS[LAYERS.index(top) :]
    if "user" in present:
        write(user_file(), '[agent]\nmax-rss = "100M"\n')
    if "project" in present:
        write(project / "pmrun.toml", '[agent]\nmax-rss = "200M"\n')
    env = {"PMRUN_MAX_RSS": "300M"} if "env" in present else {}
    flags = {"agent.max-rss": "400M"} if "flag" in present else {}
    xdg = {"XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]}
    cfg = config.load(flags, env={**env, **xdg}, cwd=project)
    expected = {
        "flag": (400 << 20, "flag"),
        "env": (300 << 20, "env PMRUN_MAX_RSS"),
        "project": (200 << 20, f"project {project / 'pmrun.toml'}"),
        "user": (100 << 20, f"user {user_file()}"),
        "default": (1 << 30, "default"),
    }[top]
    assert (cfg["agent.max-rss"], cfg.source("agent.max-rss")) == expected


def test_tool_pmrun_in_pyproject_is_project_config(project: Path) -> None:
    write(
        project / "pyproject.toml",
        '[project]\nname = "app"\n\n[tool.pmrun.coordinator]\npool = "8G"\n',
    )
    cfg = load(project)
    assert cfg["coordinator.pool"] == 8 << 30
    assert cfg.source("coordinator.pool") == f"project {project / 'pyproject.toml'}"


def test_pmrun_toml_wins_over_pyproject_in_the_same_folder(project: Path) -> None:
    write(project / "pyproject.toml", '[tool.pmrun.coordinator]\npool = "8G"\n')
    write(project / "pmrun.toml", '[coordinator]\npool = "4G"\n')
    cfg = load(project)
    assert cfg["coordinator.pool"] == 4 << 30
    assert cfg.files == [project / "pmrun.toml"]


def test_nearest_parent_config_is_found(project: Path) -> None:
    write(project / "pmrun.toml", "[cache]\nttl = 60\n")
    # A sub-package's own pyproject that does not mention pmrun does not stop the search.
    sub = project / "packages" / "lib"
    write(sub / "pyproject.toml", '[project]\nname = "lib"\n')
    cfg = load(sub)
    assert cfg["cache.ttl"] == 60.0
    assert cfg.source("cache.ttl") == f"project {project / 'pmrun.toml'}"


def test_project_and_user_files_merge_by_setting(project: Path) -> None:
    write(user_file(), '[agent]\nmax-rss = "2G"\nwarn-rss = "1G"\n')
    write(project / "pmrun.toml", '[agent]\nmax-rss = "3G"\n')
    cfg = load(project)
    assert cfg.source("agent.max-rss").startswith("project ")
    assert cfg.source("agent.warn-rss").startswith("user ")
    assert cfg.files == [project / "pmrun.toml", user_file()]


def test_empty_environment_variable_is_unset(project: Path) -> None:
    cfg = load(project, {"PMRUN_POOL": ""})
    assert cfg.source("coordinator.pool") == "default"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[agent\n", "not valid TOML"),
        ("[agent]\nmax-rsss = 1\n", "unknown setting agent.max-rsss"),
        ('[agent]\nmax-rss = "lots"\n', "agent.max-rss: invalid size 'lots'"),
        ('[agent]\ngrace = "soon"\n', "agent.grace = 'soon'"),
        ('agent = "1G"\n', "[agent] must be a table"),
    ],
)
def test_bad_project_file_is_a_config_error(project: Path, text: str, message: str) -> None:
    write(project / "pmrun.toml", text)
    with pytest.raises(ConfigError, match=f"^{project / 'pmrun.toml'}: .*") as e:
        load(project)
    assert message in str(e.value)


def test_bad_environment_value_names_the_variable(project: Path) -> None:
    with pytest.raises(ConfigError, match="PMRUN_SYSTEM_THRESHOLD"):
        load(project, {"PMRUN_SYSTEM_THRESHOLD": "120%"})


# ---------------------------------------------------------------------------------------
# pmrun config


def _layered(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One setting from each layer."""
    write(user_file(), "[cache]\nttl = 60\n")
    write(project / "pmrun.toml", '[coordinator]\npool = "6G"\n')
    monkeypatch.setenv("PMRUN_WARN_RSS", "700M")


EXPECTED_SOURCES = {
    "agent.max-rss": ("flag", 3 << 30, "3G"),
    "agent.warn-rss": ("env PMRUN_WARN_RSS", 700 << 20, "700M"),
    "coordinator.pool": ("project {project}/pmrun.toml", 6 << 30, "6G"),
    "cache.ttl": ("user {user}", 60.0, "60s"),
    "agent.grace": ("default", 5.0, "5s"),
}


def test_config_json_shows_each_source(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _layered(project, monkeypatch)
    result = pmrun_config("--json", "--set", "agent.max-rss=3G")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["files"] == [str(project / "pmrun.toml"), str(user_file())]
    for name, (source, value, shown) in EXPECTED_SOURCES.items():
        entry = doc["settings"][name]
        assert entry["source"] == source.format(project=project, user=user_file())
        assert (entry["value"], entry["display"]) == (value, shown)
    assert set(doc["settings"]) == set(config.BY_NAME)
    assert doc["settings"]["agent.max-as"]["env"] == "PMRUN_MAX_AS"


def test_config_table_shows_each_source(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _layered(project, monkeypatch)
    result = pmrun_config("--set", "agent.max-rss=3G")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"project file: {project / 'pmrun.toml'}"
    assert lines[1] == f"user file:    {user_file()}"
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in lines[3:]}
    assert rows["SETTING"] == ["VALUE", "SOURCE"]
    for name, (source, _, shown) in EXPECTED_SOURCES.items():
        assert rows[name] == [shown, source.format(project=project, user=user_file())]
    assert len(rows) == len(config.SETTINGS) + 1


def test_config_without_files(project: Path) -> None:
    result = pmrun_config()
    assert result.exit_code == 0
    assert result.stdout.startswith("project file: (none)\nuser file:    ")
    assert "(none)\n" in result.stdout.splitlines()[1] + "\n"


@pytest.mark.parametrize(
    "args, env, message",
    [
        (
            [],
            {"PMRUN_MAX_RSS": "huge"},
            "pmrun: error: environment PMRUN_MAX_RSS: agent.max-rss: invalid size 'huge'",
        ),
        (["--set", "agent.max-rss=huge"], {}, "pmrun: error: --max-rss: invalid size 'huge'"),
        (
            ["--set", "agent.nope=1"],
            {},
            "pmrun: error: --set 'agent.nope=1': expected SETTING=VALUE",
        ),
        (
            ["--set", "agent.max-rss"],
            {},
            "pmrun: error: --set 'agent.max-rss': expected SETTING=VALUE",
        ),
    ],
)
def test_config_errors_are_one_line(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    result = pmrun_config(*args)
    assert result.exit_code == ExitCode.USAGE
    assert result.stdout == ""
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1


def test_display_value() -> None:
    by = config.BY_NAME
    assert display_value(by["agent.max-rss"], 1 << 30) == "1G"
    assert display_value(by["agent.max-as"], None) == "off"
    assert display_value(by["coordinator.psi-threshold"], None) == "off"
    assert display_value(by["coordinator.system-threshold"], 0.8) == "80%"
    assert display_value(by["agent.coordinator"], False) == "false"
    assert display_value(by["coordinator.socket"], "") == '""'
    assert display_value(by["agent.backend"], "cgroup") == "cgroup"
    # None is not always "off": an expected size of None is learned ("auto"), a TTL of
    # "off" is infinite.
    assert display_value(by["agent.expect"], None) == "auto"
    assert display_value(by["cache.ttl"], float("inf")) == "off"


def test_real_cli_config(project: Path, monkeypatch: pytest.MonkeyPatch, run_pmrun) -> None:
    write(project / "pyproject.toml", '[tool.pmrun.agent]\nmax-rss = "2G"\n')
    monkeypatch.setenv("PMRUN_POOL", "5G")
    proc = run_pmrun("config", "--json")
    assert proc.returncode == 0, proc.stderr
    settings = json.loads(proc.stdout)["settings"]
    assert settings["agent.max-rss"]["source"] == f"project {project / 'pyproject.toml'}"
    assert settings["coordinator.pool"]["source"] == "env PMRUN_POOL"
    assert settings["cache.ttl"]["source"] == "default"
    # A broken file: one line, exit 2, no traceback.
    write(project / "pyproject.toml", "[tool.pmrun.agent\n")
    proc = run_pmrun("config")
    assert proc.returncode == ExitCode.USAGE
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"pmrun: error: {project / 'pyproject.toml'}: not valid TOML")
    assert proc.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------
# docs/configuration.md


def settings_table() -> str:
    rows = ["| Setting | Environment | Default | Meaning |", "|---|---|---|---|"]
    for s in config.SETTINGS:
        rows.append(f"| `{s.name}` | `{s.env}` | `{toml_value(s.default)}` | {s.help} |")
    return "\n".join(rows) + "\n"


def test_docs_table_matches_the_registry() -> None:
    assert settings_table() in DOCS.read_text(), (
        "docs/configuration.md is out of date; its settings table should be:\n" + settings_table()
    )
