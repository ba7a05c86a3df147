"""A well-behaved agent for the collision session: ramps up to its peak, works, exits 0.

``collision_agent.py PEAK_MIB RAMP_S HOLD_S``: grows to PEAK_MIB in RAMP_S (ten steps a
second, written as allocated so it is resident at once), then works HOLD_S while holding
it (touching every page once a second). Work is counted in 0.1 s ticks, not wall time, so
an agent that is paused finishes that much later rather than skipping its work.
"""

from __future__ import annotations

import sys
import time

MIB = 1 << 20
PAGE = 4096
TICK_S = 0.1


def main() -> int:
    peak_mib, ramp_s, hold_s = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    steps = max(1, int(ramp_s / TICK_S))
    chunk = int(peak_mib * MIB / steps)
    parts: list[bytearray] = []
    for _ in range(steps):
        parts.append(bytearray(b"\x01") * chunk)
        time.sleep(TICK_S)
    for tick in range(int(hold_s / TICK_S)):
        if tick % 10 == 0:
            for p in parts:
                p[::PAGE] = b"\x02" * len(range(0, len(p), PAGE))
        time.sleep(TICK_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
