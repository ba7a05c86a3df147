"""The one place the diagnostics talk to the coordinator.

Framing and connections belong to :mod:`pmrun.coordinator.query`; this module only turns
"nobody there" into ``None`` where a diagnostic can carry on without a coordinator.
"""

from __future__ import annotations

from typing import Any


def coordinator_status(socket_path: str) -> dict[str, Any] | None:
    """The coordinator's status (``Coordinator.status()``), or None if none is running.

    One that runs but cannot be reached (permission denied, hung) is an error, not "none":
    :class:`~pmrun.errors.CoordinatorUnavailable` says what is wrong."""
    from ..coordinator import query

    try:
        return query.status(socket_path)
    except query.NotRunning:
        return None


def heap_answers(socket_path: str, agent: str, limit: int) -> list[dict[str, Any]]:
    """Each Python service process's answer in ``agent``: ``{pid, services, agent, ...}``."""
    from ..coordinator import query

    return query.heap(socket_path, agent=agent, limit=limit)
