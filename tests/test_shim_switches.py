"""``[shim.NAME]`` switches (``pause = false``, ...) become the launcher's flags for them."""

from __future__ import annotations

from pathlib import Path

import pytest

from pmrun import config
from pmrun.cli.run import parse
from pmrun.shim import config_flags

SWITCHES = [s for s in config.SETTINGS if s.section == "agent" and s.flag_value is not None]


@pytest.mark.parametrize("setting", SWITCHES, ids=lambda s: s.name)
def test_a_switch_in_a_shim_table_is_its_flag(tmp_path: Path, setting: config.Setting) -> None:
    toml = "true" if setting.flag_value else "false"
    (tmp_path / "pmrun.toml").write_text(f"[shim.claude]\n{setting.key} = {toml}\n")
    flags = config_flags("claude", cwd=str(tmp_path))
    assert flags == [setting.flag]
    assert parse([*flags, "--", "x"]).flags == {setting.name: setting.flag_value}
    # The default itself needs no flag.
    (tmp_path / "pmrun.toml").write_text(f"[shim.claude]\n{setting.key} = {toml == 'false'}\n"
                                         .replace("True", "true").replace("False", "false"))  # fmt: skip
    assert config_flags("claude", cwd=str(tmp_path)) == []


def test_a_bad_switch_value_is_one_usage_error(tmp_path: Path) -> None:
    from pmrun.errors import UsageError

    (tmp_path / "pmrun.toml").write_text('[shim.claude]\ncoordinator = "maybe"\n')
    with pytest.raises(UsageError, match=r"^\[shim.claude\] coordinator: expected true or false$"):
        config_flags("claude", cwd=str(tmp_path))
