"""How an agent's memory is counted and its tree stopped: by the kernel or by sampling."""

from __future__ import annotations

from .base import Backend, ProcSample, Sample

__all__ = ["Backend", "ProcSample", "Sample", "select"]


def select(mode: str, *, agent_id: str, max_rss: int, warn_rss: int) -> Backend:
    """Return the backend for ``mode`` (``auto``, ``cgroup`` or ``sampling``).

    ``auto`` takes a cgroup when pmrun may create one and falls back to sampling,
    recording why in ``backend.reason``; ``cgroup`` raises :class:`CgroupError` instead.
    """
    from .sampling import SamplingBackend

    if mode == "sampling":
        return SamplingBackend("--backend sampling", limits=(warn_rss, max_rss))
    from ..errors import CgroupError
    from .cgroup import create_cgroup_backend

    try:
        return create_cgroup_backend(agent_id=agent_id, max_rss=max_rss, warn_rss=warn_rss)
    except CgroupError as e:
        if mode == "cgroup":
            raise
        return SamplingBackend(f"no cgroup: {e}", limits=(warn_rss, max_rss))
