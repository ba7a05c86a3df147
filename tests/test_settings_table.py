"""``config.SETTINGS`` is the one source of every setting's flag, default and help.

Each kind shows a value in a form it parses back to the same value; the launcher's and the
coordinator's options and ``CoordinatorSettings`` are made from the table, so a change to
the table (a test-local one, in a fresh interpreter) is a change to all of them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
from typing import Any

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pmrun import config
from pmrun.cli._types import setting_flags, setting_option
from pmrun.cli.coordinator import coordinator_command
from pmrun.cli.run import LAUNCH_SETTINGS, OPTIONS, parse
from pmrun.cli.run_help import run_command
from pmrun.coordinator.settings import CoordinatorSettings
from pmrun.errors import ConfigError
from pmrun.sizes import MAX_SIZE

COORDINATOR_SETTINGS = [s for s in config.SETTINGS if s.section == "coordinator"]


# ---------------------------------------------------------------------------------------
# Kinds: parse(display(v)) == v


def values_of(kind: config.Kind) -> st.SearchStrategy[Any]:
    """Every value a kind can hold (a new kind must be added here to be tested)."""
    if isinstance(kind, config.Ttl):
        return st.just(math.inf) | st.floats(min_value=0, exclude_min=True, allow_infinity=False)
    if isinstance(kind, config.Or):
        return st.just(kind.value) | values_of(kind.inner)
    if isinstance(kind, config.Size):
        return st.integers(0, MAX_SIZE) | st.sampled_from([1 << 30, 3 << 29, 500 << 20])
    if isinstance(kind, config.Fraction):
        return st.floats(0, 1)
    if isinstance(kind, config.Seconds):
        return st.floats(0, kind.most if kind.most is not None else 1e300)
    if isinstance(kind, config.Port):
        return st.integers(0, 65535)
    if isinstance(kind, config.Count):
        return st.integers(1, kind.most)
    if isinstance(kind, config.Int):
        return st.integers(0, kind.most)
    if isinstance(kind, config.Bool):
        return st.booleans()
    if isinstance(kind, config.Choice):
        return st.sampled_from(kind.choices)
    if isinstance(kind, config.Text):
        return st.text()
    raise AssertionError(f"no values for {kind!r}: add them to values_of")


@pytest.mark.parametrize("setting", config.SETTINGS, ids=lambda s: s.name)
@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_each_kind_reads_back_what_it_shows(setting: config.Setting, data: st.DataObject) -> None:
    kind = setting.kind
    value = data.draw(values_of(kind))
    shown = kind.display(value)
    assert kind.parse(shown) == value, (value, shown)
    assert kind.parse(kind.display(setting.default_value)) == setting.default_value


SHOWN = [
    (config.Size(), 1 << 30, "1G"),
    (config.Size(), 500 << 20, "500M"),
    (config.Size(), 3 << 29, "1.5G"),
    (config.Size(), 50 << 20, "50M"),
    (config.Size(), 1234567, "1234567"),
    (config.Size(), 0, "0"),
    (config.Fraction(), 0.8, "80%"),
    (config.Fraction(), 0.75, "75%"),
    (config.Fraction(), 1.0, "100%"),
    (config.Fraction(), 0.123456789, "12.3456789%"),  # every digit it needs, as a percentage
    (config.Seconds(), 300.0, "300s"),
    (config.Seconds(), 0.5, "0.5s"),
    (config.Ttl(), math.inf, "off"),
    (config.BY_NAME["agent.max-as"].kind, None, "off"),
    (config.BY_NAME["agent.expect"].kind, None, "auto"),
    (config.BY_NAME["coordinator.psi-threshold"].kind, 0.1, "10%"),
    (config.Bool(), False, "false"),
    (config.Choice("auto", "cgroup"), "cgroup", "cgroup"),
    (config.Port(), 9100, "9100"),
]


@pytest.mark.parametrize(("kind", "value", "shown"), SHOWN, ids=[r[2] for r in SHOWN])
def test_values_are_shown_as_users_write_them(kind: config.Kind, value: Any, shown: str) -> None:
    assert kind.display(value) == shown


def test_seconds_take_the_s_they_are_shown_with_and_bad_values_keep_their_message() -> None:
    cfg = config.load({"agent.grace": "2.5s", "cache.ttl": " 60s "}, env={})
    assert (cfg["agent.grace"], cfg["cache.ttl"]) == (2.5, 60.0)
    with pytest.raises(ConfigError, match=r"^--grace: agent.grace = 'soons': .*'soons'"):
        config.load({"agent.grace": "soons"}, env={})
    with pytest.raises(ConfigError, match="at most 86400"):
        config.load({"agent.grace": "86401s"}, env={})


# ---------------------------------------------------------------------------------------
# The command lines are made from the table


def help_record(command: click.Command, flag: str) -> str:
    """The help column of ``flag`` in ``command --help``, unwrapped."""
    ctx = click.Context(command, info_name=command.name)
    for param in command.get_params(ctx):
        if isinstance(param, click.Option) and flag in param.opts:
            record = param.get_help_record(ctx)
            assert record is not None
            return record[1]
    raise AssertionError(f"{command.name} has no option {flag}")


def default_shown(s: config.Setting) -> str:
    if s.flag_value is not None:
        return f"[env {s.env}={s.display(s.flag_value)}]"
    shown = s.display(s.default_value)
    return f"[env {s.env}; default {shown}]" if shown else f"[env {s.env}]"


@pytest.mark.parametrize(
    ("command", "setting"),
    [(run_command, s) for s in LAUNCH_SETTINGS]
    + [(coordinator_command, s) for s in COORDINATOR_SETTINGS],
    ids=lambda x: x.name if isinstance(x, click.Command) else x.name,
)
def test_every_setting_flag_is_an_option_with_the_tables_help_and_default(
    command: click.Command, setting: config.Setting
) -> None:
    text = help_record(command, setting.flag)
    assert text == f"{setting.flag_help or setting.help} {default_shown(setting)}"


def test_the_launch_settings_are_the_agent_settings_and_the_socket() -> None:
    agent = {s.name for s in config.SETTINGS if s.section == "agent"}
    assert {s.name for s in LAUNCH_SETTINGS} == agent | {"coordinator.socket"}
    assert [o.setting for o in OPTIONS if o.setting is not None] == list(LAUNCH_SETTINGS)


@pytest.mark.parametrize("setting", LAUNCH_SETTINGS, ids=lambda s: s.name)
def test_the_fast_parser_sets_each_setting_by_its_flag(setting: config.Setting) -> None:
    if setting.flag_value is not None:
        args, raw = [setting.flag], setting.flag_value
    else:
        raw = setting.display(setting.default_value) or "x"
        args = [setting.flag, raw]
    parsed = parse([*args, "--", "true"])
    assert parsed.flags == {setting.name: raw} and parsed.command == ["true"]
    assert config.load(parsed.flags, env={})[setting.name] == setting.parse(raw)


def test_help_of_the_real_executables_shows_each_default(run_pmrun) -> None:
    for argv, table in ((["run", "--help"], LAUNCH_SETTINGS), (["coordinator", "--help"],
                        COORDINATOR_SETTINGS)):  # fmt: skip
        out = run_pmrun(*argv)
        assert out.returncode == 0, out.stderr
        text = " ".join(out.stdout.split())
        for s in table:
            assert f"{s.flag_help or s.help} {default_shown(s)}" in text, s.name


def test_a_test_local_setting_becomes_an_option() -> None:
    local = config.Setting("knob", "coordinator", "PMRUN_KNOB", "3G", config.Size(), "a knob")
    option = setting_option(local)
    assert option.opts == ["--knob"] and option.metavar == "SIZE"
    assert option.help == "a knob [env PMRUN_KNOB; default 3G]"
    assert setting_flags([local], {"knob": "1G"}) == {"coordinator.knob": "1G"}
    switch = config.Setting("tick", "agent", "PMRUN_TICK", True, config.Bool(), "ticks", "no ticks")
    assert setting_option(switch).opts == ["--no-tick"]
    assert setting_flags([switch], {"tick": True}) == {"agent.tick": False}
    assert setting_flags([switch], {"tick": None}) == {}


# What the fresh interpreter changes in the table before anything else reads it.
CHANGED_TABLE = textwrap.dedent(
    """
    import json, sys
    from pmrun import config
    changes = {"agent.max-rss": ("3G", "a limit this table says"),
               "coordinator.cooldown": (9.5, "a cooldown this table says")}
    table = []
    for s in config.SETTINGS:
        default, help = changes.get(s.name, (s.default, s.help))
        table.append(config.Setting(s.key, s.section, s.env, default, s.kind, help, s.flag_help))
    table.append(config.Setting("knob", "agent", "PMRUN_KNOB", 7, config.Int(), "a new knob"))
    config.SETTINGS = tuple(table)
    config.BY_NAME = {s.name: s for s in table}

    from click.testing import CliRunner
    from pmrun.cli._group import cli
    from pmrun.cli.run import parse
    from pmrun.coordinator.settings import CoordinatorSettings
    print(json.dumps({
        "run": CliRunner().invoke(cli, ["run", "--help"]).output,
        "coordinator": CliRunner().invoke(cli, ["coordinator", "--help"]).output,
        "cooldown_s": CoordinatorSettings(socket_path="x").cooldown_s,
        "from_config": CoordinatorSettings.from_config(config.load(env={})).cooldown_s,
        "max_rss": config.load(env={})["agent.max-rss"],
        "knob": parse(["--knob", "5", "--", "true"]).flags,
    }))
    """
)


def test_changing_the_table_changes_the_options_and_the_defaults() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHANGED_TABLE],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]},
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    run_help = " ".join(got["run"].split())
    assert "--max-rss SIZE a limit this table says [env PMRUN_MAX_RSS; default 3G]" in run_help
    assert "--knob N a new knob [env PMRUN_KNOB; default 7]" in run_help
    coordinator_help = " ".join(got["coordinator"].split())
    assert "a cooldown this table says [env PMRUN_COOLDOWN; default 9.5s]" in coordinator_help
    assert got["cooldown_s"] == got["from_config"] == 9.5
    assert got["max_rss"] == 3 << 30
    assert got["knob"] == {"agent.knob": "5"}


# ---------------------------------------------------------------------------------------
# CoordinatorSettings from the table

# A value other than the default for every coordinator setting, and the field it sets.
OTHER = {
    "socket": ("/tmp/pmrun-table-test.sock", "socket_path", "/tmp/pmrun-table-test.sock"),
    "pool": ("3G", "pool_bytes", 3 << 30),
    "system-threshold": ("70%", "system_threshold", 0.7),
    "psi-threshold": ("off", "psi_threshold", None),
    "evict-fraction": ("50%", "evict_fraction", 0.5),
    "victim-policy": ("newest", "victim_policy", "newest"),
    "events": ("/tmp/e.jsonl", "events_path", "/tmp/e.jsonl"),
    "dry-run": (True, "dry_run", True),
    "cooldown": ("7s", "cooldown_s", 7.0),
    "settle": ("2", "settle_s", 2.0),
    "metrics-port": ("9100", "metrics_port", 9100),
    "pause": (False, "pause.enabled", False),
    "max-pause": ("30s", "pause.max_pause_s", 30.0),
    "idle-exit": ("60", "idle_exit_s", 60.0),
}


def field_value(settings_: CoordinatorSettings, path: str) -> Any:
    value: Any = settings_
    for part in path.split("."):
        value = getattr(value, part)
    return value


def test_every_coordinator_setting_reaches_coordinator_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PMRUN_ON_DEMAND", raising=False)
    assert set(OTHER) == {s.key for s in COORDINATOR_SETTINGS}
    defaults = CoordinatorSettings(socket_path="x")
    from_defaults = CoordinatorSettings.from_config(config.load(env={}))
    for key, (raw, path, value) in OTHER.items():
        if key != "socket":  # the record's defaults are the table's
            assert field_value(defaults, path) == field_value(from_defaults, path), key
        cfg = config.load({f"coordinator.{key}": raw}, env={})
        assert field_value(CoordinatorSettings.from_config(cfg), path) == value, key
        assert value != field_value(from_defaults, path), key


def test_coordinator_settings_fields_named_after_a_setting_exist() -> None:
    named = [f.metadata["setting"] for f in dataclasses.fields(CoordinatorSettings)
             if "setting" in f.metadata]  # fmt: skip
    assert named and set(named) <= set(config.BY_NAME)


def test_coordinator_help_paragraphs_are_wrapped_as_prose(run_pmrun) -> None:
    """The group's help adds lines to the daemon's docstring: still dedented, no runs of spaces."""
    out = run_pmrun("coordinator", "--help")
    assert out.returncode == 0, out.stderr
    description = out.stdout.split("Options:", 1)[0]
    assert "  Keeps the sum of all pmrun agents" in description
    assert not any("   " in line.strip() for line in description.splitlines()), description
