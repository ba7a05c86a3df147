"""What ``pmrun status``, ``top``, ``events``, ``heap`` and ``plot`` show, as a library.

One concern a module; the CLI (:mod:`pmrun.cli.diag`) only parses and prints:

- ``status``: gather the host's memory, PSI and the coordinator's view into one dict
  (the ``--json`` document) and render it as one screen (also each frame of ``top``).
- ``top``: the live, refreshing table.
- ``events``: filter, follow and format the coordinator's event log.
- ``heap``: per-process RSS/PSS/USS/swap of a tree, and the Python services' heap answers.
- ``plot``: draw a ``--record`` recording (matplotlib, imported only there).
- ``metrics``: a Prometheus collector over the coordinator's status, and its HTTP server.

This package imports nothing on its own.
"""
