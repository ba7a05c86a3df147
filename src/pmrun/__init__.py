"""pmrun: keep fleets of AI coding agents on one machine from running it out of memory.

The public API, imported lazily so that ``pmrun -- cmd`` pays only for what it uses:

- :func:`launch` runs a command under pmrun's limits (what ``pmrun -- cmd`` does), as
  ``subprocess.Popen`` would; :func:`run`, :func:`create_subprocess_exec` and
  :func:`create_subprocess_shell` stand in for ``subprocess.run`` and asyncio's.
- :class:`SharedPromptCache` is the memory-capped prompt cache.
- :func:`register_cleanup` lets a service free memory when the coordinator asks.
- :func:`parse_size` turns ``"1.5G"`` into bytes.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `from typing import`: every agent start imports this module

__all__ = [
    "launch",
    "run",
    "create_subprocess_exec",
    "create_subprocess_shell",
    "Agent",
    "AsyncAgent",
    "SharedPromptCache",
    "register_cleanup",
    "parse_size",
    "PmrunError",
]
__version__ = "0.1.0"

_EXPORTS = {
    "launch": "pmrun.api",
    "run": "pmrun.api",
    "create_subprocess_exec": "pmrun.api",
    "create_subprocess_shell": "pmrun.api",
    "Agent": "pmrun.api",
    "AsyncAgent": "pmrun.api",
    "SharedPromptCache": "pmrun.cache",
    "register_cleanup": "pmrun.client",
    "parse_size": "pmrun.sizes",
    "PmrunError": "pmrun.errors",
}

if TYPE_CHECKING:  # pragma: no cover
    from .api import (
        Agent,
        AsyncAgent,
        create_subprocess_exec,
        create_subprocess_shell,
        launch,
        run,
    )
    from .cache import SharedPromptCache
    from .client import register_cleanup
    from .errors import PmrunError
    from .sizes import parse_size


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pmrun' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
