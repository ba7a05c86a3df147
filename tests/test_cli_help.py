"""The CLI explains itself: help with the launch options, version, examples, shell completion.

Everything runs the installed ``pmrun`` executable, as a user's shell would.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PMRUN
from pmrun.cli import COMMANDS
from pmrun.cli._group import cli
from pmrun.cli.run import BY_FLAG, OPTIONS

BIN = str(Path(PMRUN).parent)


def pmrun(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PMRUN, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def subcommands() -> list[str]:
    """The subcommands this checkout has (an entry whose module is not built yet is skipped)."""
    import click

    ctx = click.Context(cli)
    return [name for name in COMMANDS if cli.get_command(ctx, name) is not None]


def test_help_shows_the_launch_synopsis_options_and_subcommands() -> None:
    out = pmrun("--help")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Usage: pmrun [OPTIONS] [--] COMMAND [ARGS]..." in text
    assert "pmrun SUBCOMMAND [ARGS]..." in text
    launch = text.split("Launch options", 1)[1].split("\nOptions:", 1)[0]
    for o in OPTIONS:
        assert re.search(rf"^  {re.escape(o.flag)}\b", launch, re.M), o.flag
    listed = text.split("Subcommands", 1)[1]
    for name in subcommands():
        assert re.search(rf"^  {name}\s", listed, re.M), name
    assert "137" in text and "Examples:" in text
    assert pmrun("-h").stdout == text


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str) -> None:
    import pmrun as package

    out = pmrun(flag)
    assert out.returncode == 0, out.stderr
    version = importlib.metadata.version("pmrun")
    assert out.stdout == f"pmrun, version {version}\n"
    assert version == package.__version__


def test_launch_options_are_still_parsed_by_the_launcher() -> None:
    """The group carries the launch options for help only: a launch never goes through click."""
    out = pmrun("--max-rss", "300M", "--no-coordinator", "--", "sh", "-c", "exit 7")
    assert out.returncode == 7, out.stderr
    bad = pmrun("--max-rss", "lots", "--", "true")
    assert bad.returncode == 125 and bad.stderr.count("\n") == 1


def _example_lines(help_text: str) -> list[str]:
    block = help_text.split("Examples:\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if not line.startswith("    "):
            break
        lines.append(line.strip())
    return lines


def _option_names(command: object) -> set[str]:
    import click

    assert isinstance(command, click.Command)
    names = {"-h", "--help"}
    for p in command.params:
        if isinstance(p, click.Option):
            names.update(p.opts + p.secondary_opts)
    return names


def _check_example(line: str) -> None:
    """Every pmrun command in an example names a real subcommand and only its real options."""
    import click

    for part in re.split(r"&&|\|", line.split("  #", 1)[0]):
        words = shlex.split(part.strip().rstrip("&").replace("$(", "").replace(")", ""))
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words.pop(0)  # VAR=value before the command
        if "pmrun" not in words[:2]:
            continue
        words = words[words.index("pmrun") + 1 :]
        ctx = click.Context(cli)
        if words and words[0] in COMMANDS:
            command = cli.get_command(ctx, words[0])
            words = words[1:]
            while isinstance(command, click.Group) and words and words[0] in command.commands:
                command, words = command.commands[words[0]], words[1:]  # e.g. pmrun shim install
            known = _option_names(command)
            if any(getattr(p, "type", None) is click.UNPROCESSED for p in command.params):
                known |= set(BY_FLAG)  # passes launcher options on (pmrun shim install)
        else:
            known = set(BY_FLAG)
        words = words[: words.index("--")] if "--" in words else words  # the command's own
        for w in words:
            if w.startswith("-") and len(w) > 1 and not re.fullmatch(r"-\d+", w):
                assert w.split("=", 1)[0] in known, f"{line!r}: {w} is not an option"


@pytest.mark.parametrize("name", [*subcommands()])
def test_every_subcommand_has_help_with_examples(name: str) -> None:
    out = pmrun(name, "--help")
    assert out.returncode == 0, out.stderr
    assert f"Usage: pmrun {name}" in out.stdout
    examples = _example_lines(out.stdout)
    assert examples, f"pmrun {name} --help has no Examples: section"
    assert any(re.search(rf"\bpmrun {name}\b", e) for e in examples) or name == "run"
    for line in examples:
        _check_example(line)


def test_the_main_help_examples_are_real() -> None:
    for line in _example_lines(pmrun("--help").stdout):
        _check_example(line)


def test_completion_subcommand_prints_clicks_script() -> None:
    for shell in ("bash", "zsh", "fish"):
        out = pmrun("completion", shell)
        assert out.returncode == 0, out.stderr
        assert out.stdout == pmrun(env={"_PMRUN_COMPLETE": f"{shell}_source"}).stdout
        assert "_PMRUN_COMPLETE" in out.stdout
    # The variable wins over arguments that would otherwise be a launch (the fast path).
    assert pmrun("--max-rss", "1G", "true", env={"_PMRUN_COMPLETE": "bash_source"}).stdout == (
        pmrun("completion", "bash").stdout
    )
    bad = pmrun("completion", "tcsh")
    assert bad.returncode == 2 and "tcsh" in bad.stderr


def _complete(words: str) -> list[str]:
    """What click's bash completion answers for the command line ``words`` (cursor at its end)."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    out = pmrun(
        env={"_PMRUN_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    )
    assert out.returncode == 0, out.stderr
    return [line.split(",", 1)[1] for line in out.stdout.splitlines()]


def test_completion_offers_subcommands_launch_options_and_their_values() -> None:
    assert "status" in _complete("pmrun sta")
    assert {"--max-rss", "--max-as"} <= set(_complete("pmrun --max"))
    assert _complete("pmrun --backend ") == ["auto", "cgroup", "sampling"]
    assert "--kind" in _complete("pmrun events --ki")


def _run_shell(argv: list[str]) -> str:
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "HOME": os.environ["XDG_RUNTIME_DIR"],
    }
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_bash_completion_installs_and_completes_in_a_real_bash() -> None:
    out = _run_shell(
        [
            "bash",
            "--norc",
            "-c",
            'eval "$(pmrun completion bash)" && complete -p pmrun'
            " && COMP_WORDS=(pmrun sta) COMP_CWORD=1 && _pmrun_completion pmrun"
            ' && echo "reply: ${COMPREPLY[*]}"',
        ]
    )
    assert "complete -o nosort -F _pmrun_completion pmrun" in out
    assert "reply: status" in out


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_registers() -> None:
    out = _run_shell(
        [
            "zsh",
            "-fc",
            'autoload -Uz compinit && compinit -u -D && eval "$(pmrun completion zsh)"'
            " && print -r -- ${_comps[pmrun]}",
        ]
    )
    assert out.strip() == "_pmrun_completion"


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completion_completes() -> None:
    out = _run_shell(
        ["fish", "--no-config", "-c", 'pmrun completion fish | source; complete -C "pmrun sta"']
    )
    assert out.startswith("status\t")
