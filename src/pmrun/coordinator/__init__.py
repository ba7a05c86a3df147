"""The coordinator: one daemon per user that keeps the sum of all agents under a pool.

Submodules, one concern each:

- ``protocol``: message dataclasses, framing, encode/decode (the only place JSON frames are built).
- ``policy``: pure decisions (pressure level with hysteresis, bytes to free, victims).
- ``pool``: the registered agents and services, what the pool counts, system memory.
- ``paths``: the default socket path and the safe creation of its directory.
- ``server``: the asyncio daemon.
- ``link``: the launcher's side (``AgentLink``, ``ensure_coordinator``).
- ``spawn``: starting a detached daemon on demand.
- ``query``: one-shot requests for the CLI and diagnostics (status, cleanup, heap).

This package imports nothing on its own: ``pmrun -- cmd`` imports ``link`` on every
agent start and must not pay for the server.
"""
