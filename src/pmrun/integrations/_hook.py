"""The import hook behind :mod:`pmrun.integrations.claude_pm`, kept tiny on purpose.

With ``PMRUN_CLAUDE_PM=1`` the ``.pth`` line runs :func:`arm` at every interpreter start in
the framework's venv, pmrun's own launchers and the agents included; so this module imports
nothing but ``os`` and ``sys`` (``importlib.abc`` alone costs 20 ms), and the rest of the
integration is imported only when a framework module it patches is imported.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not `from typing import`: this runs at every interpreter start
if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Sequence
    from typing import Any

ENV = "PMRUN_CLAUDE_PM"  # "1": the .pth hook arms the import hook at interpreter start
CACHE_MODULE = "claude_pm.services.shared_prompt_cache"
RUNNER_MODULE = "claude_pm.services.subprocess_runner"
PRESSURE_MODULE = "claude_pm.services.memory_pressure_coordinator"
TARGETS = frozenset({CACHE_MODULE, RUNNER_MODULE, PRESSURE_MODULE})


def _imported(name: str, module: Any) -> None:
    from . import claude_pm  # the integration proper, only once the framework is imported

    claude_pm._imported(name, module)


class Finder:
    """Patches the framework's modules right after they execute, whoever imports them."""

    def __init__(self, on_import: Callable[[str, Any], None] = _imported) -> None:
        self.on_import = on_import

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> Any:
        if fullname not in TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            # A loader by its methods: subclassing importlib.abc.Loader costs 20 ms to import.
            wrapped: Any = PatchingLoader(spec.loader, fullname, self.on_import)
            spec.loader = wrapped
        return spec


class PatchingLoader:
    """The module's own loader, then the patch."""

    def __init__(self, loader: Any, name: str, on_import: Callable[[str, Any], None]) -> None:
        self._loader = loader
        self._name = name
        self._on_import = on_import

    def __getattr__(self, attr: str) -> Any:  # get_source, get_filename, ... for tracebacks
        return getattr(self._loader, attr)

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._on_import(self._name, module)


def arm() -> None:
    """Put the import hook first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, Finder())


def arm_from_env() -> None:
    """What the ``.pth`` line runs: :func:`arm` when ``PMRUN_CLAUDE_PM`` is set (not 0)."""
    if os.environ.get(ENV, "") not in ("", "0"):
        arm()


HOOK_FILE = "pmrun-claude-pm.pth"
# One line: site.py runs a .pth line that starts with "import". It costs an interpreter start
# one environment lookup unless PMRUN_CLAUDE_PM is set, and then this small module.
HOOK_LINE = (
    f"import os; os.environ.get({ENV!r}, '0') not in ('', '0') and "
    "__import__('pmrun.integrations._hook', fromlist=['_']).arm()\n"
)
