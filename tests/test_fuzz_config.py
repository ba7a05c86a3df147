"""Bad input to the settings loader: ``config.load`` returns, or raises a PmrunError with a
message, for any project file, pyproject table, environment or flag value; never another
exception (which the CLI would show as a traceback).

The size parser's own properties are in tests/test_sizes.py.
"""

from __future__ import annotations

import datetime
import json
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmrun import config
from pmrun.errors import ConfigError, PmrunError
from test_reliability_load import record_figures

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,  # the same examples on every run and machine
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
COUNTS = {"inputs": 0, "accepted": 0, "refused": 0}


@pytest.fixture(scope="module")
def project() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="pmcfg") as d:
        yield Path(d)


def fresh(project: Path) -> None:
    """No config file left from the previous example (or test)."""
    for name in ("pmrun.toml", "pyproject.toml"):
        (project / name).unlink(missing_ok=True)


def load(project: Path, env: dict[str, str] | None = None, flags: Any = None) -> None:
    """config.load on ``project``: fine if it returns or refuses with a PmrunError."""
    COUNTS["inputs"] += 1
    try:
        cfg = config.load(flags, env=env or {}, cwd=project, user_path=project / "none.toml")
    except PmrunError as e:
        assert str(e)  # a message the user can act on
        COUNTS["refused"] += 1
        return
    for name in cfg:  # every value resolved and typed
        cfg[name]
    COUNTS["accepted"] += 1


# -- TOML text ----------------------------------------------------------------------------


def toml_value(v: Any) -> str:
    """``v`` as a TOML value (inline tables and arrays; floats with inf/nan)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string (\\uXXXX escapes included)
    if isinstance(v, datetime.datetime | datetime.date | datetime.time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


SIZE_LIKE = st.from_regex(r"\A\s?-?[0-9_.eE+]{0,8}\s?[kKmMgGtTbBiI%]{0,3}\s?\Z", fullmatch=True)
scalars = (
    st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=12)
    | SIZE_LIKE
    | st.sampled_from(["off", "none", "never", "unlimited", "80%", "1G", "auto", "largest", ""])
    | st.datetimes()
    | st.dates()
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
KNOWN = [(s.section, s.key) for s in config.SETTINGS]


@st.composite
def tables(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    """Known keys with any values, sometimes an unknown key or section."""
    out: dict[str, dict[str, Any]] = {}
    for _ in range(draw(st.integers(1, 5))):
        section, key = draw(st.sampled_from(KNOWN))
        if draw(st.integers(0, 9)) == 0:
            section = draw(st.sampled_from(["agent", "coordinator", "cache", "other"]))
            key = draw(st.text(min_size=1, max_size=8))
        out.setdefault(section, {})[key] = draw(values)
    return out


def toml_text(tabs: dict[str, dict[str, Any]], prefix: str = "") -> str:
    lines = []
    for section, table in tabs.items():
        lines.append(f"[{prefix}{json.dumps(section)}]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


@SETTINGS
@given(tabs=tables())
def test_any_values_for_known_keys_load_or_fail_cleanly(project: Path, tabs) -> None:
    fresh(project)
    (project / "pmrun.toml").write_text(toml_text(tabs), encoding="utf-8", errors="surrogatepass")
    load(project)


@SETTINGS
@given(tabs=tables())
def test_any_pyproject_tool_table_loads_or_fails_cleanly(project: Path, tabs) -> None:
    fresh(project)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "x"\n' + toml_text(tabs, "tool.pmrun."),
        encoding="utf-8",
        errors="surrogatepass",
    )
    load(project)


# Text that is mostly TOML-shaped, and bytes that are not text at all.
toml_ish = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "[agent]",
                "[coordinator]",
                "[cache]",
                "[[agent]]",
                "[agent",
                "agent]",
                "max-rss = ",
                "pool = ",
                "ttl = ",
                "= 1",
                '"',
                "'''",
                "#",
                "\\",
                "\n",
                " ",
                "{",
                "}",
                "[",
                "]",
                ",",
                "=",
                ".",
                "inf",
                "nan",
                "1979-05-27T07:32:00Z",
                "0x1F",
                "1e1000",
            ]
        ),  # fmt: skip
        st.text(max_size=8),
    ),
    max_size=25,
).map("".join)


@SETTINGS
@given(text=toml_ish)
def test_any_toml_text_loads_or_fails_cleanly(project: Path, text: str) -> None:
    (project / "pmrun.toml").write_text(text, encoding="utf-8", errors="surrogatepass")
    load(project)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_any_bytes_load_or_fail_cleanly(project: Path, data: bytes) -> None:
    fresh(project)
    (project / "pmrun.toml").write_bytes(data)
    load(project)


ENV_NAMES = [s.env for s in config.SETTINGS]


@SETTINGS
@given(
    env=st.dictionaries(
        st.sampled_from(ENV_NAMES),
        st.text(max_size=12).filter(lambda t: "\x00" not in t) | SIZE_LIKE,
        max_size=4,
    )
)
def test_any_environment_loads_or_fails_cleanly(project: Path, env: dict[str, str]) -> None:
    fresh(project)
    load(project, env=env)


@SETTINGS
@given(
    flags=st.dictionaries(
        st.sampled_from(sorted(config.BY_NAME)), st.none() | values | SIZE_LIKE, max_size=4
    )
)
def test_any_flag_values_load_or_fail_cleanly(project: Path, flags: dict[str, Any]) -> None:
    fresh(project)
    load(project, flags=flags)


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("agent.max-rss", "[1]"),  # a list where a size goes
        ("agent.max-rss", "{a = 1}"),
        ("agent.max-rss", "1979-05-27T07:32:00Z"),  # a TOML datetime
        ("agent.max-rss", "1" + "0" * 400),  # an integer too large for a float
        ("agent.grace", "1" + "0" * 400),
        ("coordinator.evict-fraction", "1" + "0" * 400),
        ("coordinator.system-threshold", "[0.5]"),
        ("cache.ttl", "1" + "0" * 400),
    ],
)
def test_values_of_the_wrong_kind_are_config_errors(project: Path, key: str, raw: str) -> None:
    section, name = key.split(".")
    fresh(project)
    (project / "pmrun.toml").write_text(f"[{section}]\n{name} = {raw}\n")
    with pytest.raises(ConfigError, match=name):
        config.load(env={}, cwd=project, user_path=project / "none.toml")


def test_zz_figures() -> None:
    """Runs last in this module: the counts for docs/reliability.md."""
    record_figures("fuzz-config", **COUNTS)
