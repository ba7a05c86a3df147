"""Shims: programs started by name (``claude``, ``node``) run under pmrun without a change.

``pmrun shim install claude`` writes a small POSIX sh script named ``claude`` into the shim
directory, which ``eval "$(pmrun shim env)"`` puts first on PATH (as pyenv and asdf do).
The script finds the real ``claude`` further down PATH and execs
``python -P -c 'from pmrun.shim import main ...' claude REAL [STORED FLAGS] -- ARGS``: one
interpreter start, as ``pmrun -- claude`` (``-c`` rather than ``-m``: runpy costs ~8 ms;
``-P``: a ``pmrun`` directory in the cwd is never imported). Run as that module, this file adds the program's limits
from ``[shim.NAME]`` in the config files and hands over to the launcher.

Never into itself: the search skips every PATH directory holding the marker file
``.pmrun-shims`` (every shim directory has one), so a shim directory listed twice, reached
through a symlink, or another user's shim directory is never searched; it skips the shim
file itself (``-ef "$0"``); and a candidate that is itself a pmrun shim (a copy elsewhere)
is refused with exit 127, so no shim ever runs a shim.
"""

from __future__ import annotations

import os
import sys

from .errors import ExitCode, PmrunError, UsageError

TYPE_CHECKING = False  # a shim start runs main() only: it imports neither typing nor pathlib
if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from .config import Setting

MARKER = ".pmrun-shims"
# The second line of every shim: how `list` and `remove` know a file is one of ours.
SIGNATURE = "# pmrun shim"

_TEMPLATE = """\
#!/bin/sh
{signature} for {name}: runs the real {name} further down PATH under pmrun.
# Written by: pmrun shim install {install_line}
# Remove with: pmrun shim remove {name}   (edits here are lost on reinstall)
n={q_name}
p=
IFS=:
set -f
for d in $PATH; do
  [ -n "$d" ] || d=.
  [ -e "$d/{marker}" ] && continue
  [ "$d/$n" -ef "$0" ] && continue
  if [ -f "$d/$n" ] && [ -x "$d/$n" ]; then p=$d/$n; break; fi
done
if [ -z "$p" ]; then
  echo "pmrun shim: $n: command not found further down PATH" >&2
  exit 127
fi
py={q_python}
if [ -x "$py" ]; then
  exec "$py" -P -c 'import sys; from pmrun.shim import main; sys.exit(main(sys.argv[1:]))' \\
    "$n" "$p" {q_flags} -- "$@"
fi
echo "pmrun shim: $py is gone, running $n without pmrun (reinstall: pmrun shim install $n)" >&2
exec "$p" "$@"
"""


def shim_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$PMRUN_SHIM_DIR``, else ``$XDG_DATA_HOME/pmrun/shims`` (``~/.local/share/...``)."""
    from pathlib import Path

    env = os.environ if env is None else env
    if env.get("PMRUN_SHIM_DIR"):
        return Path(env["PMRUN_SHIM_DIR"])
    base = env.get("XDG_DATA_HOME") or os.path.join(env.get("HOME") or "~", ".local", "share")
    return Path(os.path.expanduser(base)) / "pmrun" / "shims"


def check_name(name: str) -> str:
    """A program name a shell would look up on PATH; else :class:`UsageError`."""
    if (
        not name
        or name in (".", "..", MARKER)
        or "/" in name
        or name.startswith("-")
        or any(c in name for c in "\0\n\r")
    ):
        raise UsageError(f"{name!r} is not a program name (no '/', no leading '-')")
    return name


def check_flags(flags: list[str]) -> list[str]:
    """The launcher options a shim stores, validated now rather than at every start."""
    from . import config
    from .cli.run import parse

    parsed = parse([*flags, "--", "x"])
    if parsed.help or parsed.command != ["x"]:
        raise UsageError(f"not launcher options: {' '.join(flags)}")
    bad = set(parsed.extra) & {"report", "record", "pid-fd"}
    if bad:
        raise UsageError(f"--{sorted(bad)[0]} names one file: not for a shim used by every run")
    config.load(parsed.flags)  # bad sizes and values fail here with one line
    return flags


def render(name: str, flags: list[str], python: str) -> str:
    """The shim script for ``name``."""
    import shlex

    return _TEMPLATE.format(
        signature=SIGNATURE,
        name=name,
        q_name=shlex.quote(name),
        q_python=shlex.quote(python),
        q_flags=" ".join(shlex.quote(f) for f in flags),
        install_line=" ".join(shlex.quote(a) for a in (name, *flags)).replace("\n", " "),
        marker=MARKER,
    )


def is_shim(path: Path | str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    return head.startswith(b"#!/bin/sh\n" + SIGNATURE.encode())


def _ensure_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / MARKER
    if not marker.exists():
        marker.write_text("pmrun shim directory: PATH searches by pmrun shims skip it\n")


def install(name: str, flags: list[str], directory: Path | None = None) -> Path:
    """Write (or rewrite) the shim for ``name``; returns its path."""
    check_name(name)
    check_flags(flags)
    directory = directory or shim_dir()
    _ensure_dir(directory)
    path = directory / name
    if (path.exists() or path.is_symlink()) and not is_shim(path):
        raise UsageError(f"{path} exists and is not a pmrun shim: not replacing it")
    tmp = directory / f".{name}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o755)
    with os.fdopen(fd, "w") as f:
        f.write(render(name, flags, sys.executable))
    os.chmod(tmp, 0o755)  # whatever the umask: a shim must be executable by its user
    os.replace(tmp, path)  # our own directory and file: replacing is right here
    return path


def remove(name: str, directory: Path | None = None) -> Path:
    check_name(name)
    path = (directory or shim_dir()) / name
    if not (path.exists() or path.is_symlink()):
        raise UsageError(f"no shim for {name} in {path.parent}")
    if not is_shim(path):
        raise UsageError(f"{path} is not a pmrun shim: not removing it")
    path.unlink()
    return path


class ShimInfo:
    """One installed shim: its name, the flags stored at install, the program it would run."""

    __slots__ = ("name", "path", "flags", "target")

    def __init__(self, name: str, path: Path, flags: list[str], target: str | None) -> None:
        self.name = name
        self.path = path
        self.flags = flags
        self.target = target


def stored_flags(path: Path) -> list[str]:
    import shlex

    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("# Written by: pmrun shim install "):
            words = shlex.split(line.removeprefix("# Written by: pmrun shim install "))
            return words[1:]
    return []


def find_real(name: str, path_var: str | None = None) -> str | None:
    """What a shim for ``name`` runs: the first executable on PATH outside shim directories."""
    for d in (os.environ.get("PATH", "") if path_var is None else path_var).split(os.pathsep):
        d = d or "."
        if os.path.exists(os.path.join(d, MARKER)):
            continue
        candidate = os.path.join(d, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def list_shims(directory: Path | None = None) -> list[ShimInfo]:
    directory = directory or shim_dir()
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        p = directory / n
        if not n.startswith(".") and is_shim(p):
            out.append(ShimInfo(n, p, stored_flags(p), find_real(n)))
    return out


def env_script(shell: str, directory: Path | None = None) -> str:
    """What ``eval "$(pmrun shim env)"`` runs: the shim directory first on PATH, once."""
    import shlex

    d = str(directory or shim_dir())
    if shell == "fish":
        q = shlex.quote(d)
        return f"contains -- {q} $PATH; or set -gx PATH {q} $PATH\n"
    if shell in ("bash", "zsh", "sh", "dash", "ksh"):
        q = shlex.quote(d)
        return (
            f'case ":$PATH:" in *:{q}:*) ;; *) export PATH={q}":$PATH" ;; esac\n'
            "hash -r 2>/dev/null || true\n"
        )
    raise UsageError(f"unknown shell {shell!r} (bash, zsh, fish or sh)")


def config_flags(name: str, cwd: str | None = None) -> list[str]:
    """``[shim.NAME]`` from the user's then the project's config file, as launcher flags."""
    from . import config

    tables: list[Mapping[str, object]] = []
    user = config._user_config_file(os.environ)
    if os.path.isfile(user):
        tables.append(config._read_toml(config._path(user)))
    project = config.find_project_config(cwd)
    if project is not None:
        tables.append(project[1])
    flags: list[str] = []
    for t in tables:
        shim = t.get("shim")
        entry = shim.get(name) if isinstance(shim, dict) else None
        if not isinstance(entry, dict):
            continue
        for key, value in entry.items():
            setting = config.BY_NAME.get(f"agent.{key}")
            if setting is None:
                raise UsageError(f"[shim.{name}] {key}: not an agent setting (max-rss, grace, ...)")
            if setting.flag_value is not None:  # a switch: its flag, where not the default
                if _switch(setting, value, name) == setting.flag_value:
                    flags.append(setting.flag)
                continue
            flags += [f"--{key}", str(value)]
    return flags


def _switch(setting: Setting, value: object, name: str) -> bool:
    try:
        return bool(setting.parse(value))
    except ValueError as e:
        raise UsageError(f"[shim.{name}] {setting.key}: {e}") from None


def main(argv: list[str]) -> int:
    """``main([NAME, REAL, *STORED_FLAGS, "--", *ARGS])``: what a shim execs."""
    from .cli.run import launch_main

    if len(argv) < 3 or "--" not in argv[2:]:
        os.write(2, b"pmrun shim: usage: pmrun.shim.main([NAME, REAL, *FLAGS, '--', *ARGS])\n")
        return ExitCode.LAUNCH_ERROR
    name, real = argv[0], argv[1]
    if is_shim(real):  # a copy of a shim outside a shim directory: never run a shim by a shim
        os.write(
            2,
            f"pmrun shim: {real} is itself a pmrun shim, not the real {name}; remove it"
            f" or mark its directory: touch {os.path.dirname(real)}/{MARKER}\n".encode(
                errors="replace"
            ),
        )
        return ExitCode.NOT_FOUND
    cut = argv.index("--", 2)
    stored, args = argv[2:cut], argv[cut + 1 :]
    try:
        from_config = config_flags(name)
    except PmrunError as e:  # one line, like any other bad config, never a traceback
        os.write(2, f"pmrun: {e}\n".encode(errors="replace"))
        return ExitCode.LAUNCH_ERROR
    # Later flags win: config files can tune what was stored at install.
    return launch_main(["--name", name, *stored, *from_config, "--", real, *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
