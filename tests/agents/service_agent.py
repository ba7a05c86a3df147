"""A small agent for the reliability tests: a cleanup service that holds some memory.

    python tests/agents/service_agent.py MB [--hang] [--service NAME]

Registers a cleanup handler with the coordinator (``pmrun.client.register_cleanup``;
the socket comes from ``PMRUN_SOCKET``, set by ``pmrun -- cmd``), then holds MB MiB of
touched memory in 1 MiB blocks that the handler frees on request, prints ``READY <pid>``
and sleeps until a signal ends it (SIGTERM and SIGINT keep their default action, so
``pmrun`` reports ``signal``). ``--hang``: the handler never returns (it sleeps 1000 s),
a service stuck in its cleanup.
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from pmrun.client import register_cleanup

MIB = 1 << 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mb", type=int)
    ap.add_argument("--hang", action="store_true")
    ap.add_argument("--service", default="cache")
    args = ap.parse_args()
    blocks: list[bytearray] = []

    def evict(fraction: float) -> int:
        if args.hang:
            time.sleep(1000)
        n = int(len(blocks) * fraction + 0.5)
        del blocks[:n]
        return n * MIB

    # Registered before the memory is held, so the service is known by the time the
    # agent's memory counts.
    register_cleanup(args.service, evict, stats=lambda: {"bytes": len(blocks) * MIB})
    blocks.extend(bytearray(b"x") * MIB for _ in range(args.mb))  # touched: resident
    print("READY", os.getpid(), flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
