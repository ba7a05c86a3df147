"""The coordinator: one daemon per user that keeps the sum of all agents under a pool.

Submodules, one concern each:

- ``protocol``: message dataclasses, framing, encode/decode (the only place JSON frames are built).
- ``policy``: pure decisions (pressure level with hysteresis, bytes to free, victims).
- ``pool``: the registered agents and services, what the pool counts, system memory.
- ``paths``: the default socket path and the safe creation of its directory.
- ``server``: the asyncio daemon's ``Coordinator``: wiring, connections accepted and lost, status.
- ``connection``: one client connection (framing, SO_PEERCRED, timeouts, write buffer limit).
- ``handlers``: what each message a client sends does.
- ``broadcast``: ``evict`` and ``heap`` requests to services and their answers.
- ``monitor``: the pressure loop (measure, assess, evict, pause or stop).
- ``suspend``, ``admission``, ``lifecycle``: pause before kill, wait before start, idle exit.
- ``daemon``: running it (directory, endpoint, OOM protection, signals, socket guard).
- ``link``: the launcher's side (``AgentLink``, ``ensure_coordinator``).
- ``spawn``: starting a detached daemon on demand.
- ``query``: one-shot requests for the CLI and diagnostics (status, cleanup, heap).

This package imports nothing on its own: ``pmrun -- cmd`` imports ``link`` on every
agent start and must not pay for the server.
"""
