"""Grow resident memory as fast as plain Python can: keep 16 MiB ``bytes`` objects.

``b"\\x01" * n`` writes every byte, so each chunk is resident at once (unlike
``bytearray(n)``, which may get untouched zero pages from calloc).

    python alloc.py CAP_BYTES          grow until killed; exit 3 if CAP_BYTES is reached first
    python alloc.py CAP_BYTES --rate   grow to CAP_BYTES, print "<bytes> <seconds>", exit 0

The fallback of bench_launcher.py's overshoot benchmark when no C compiler is found.
"""

import sys
import time

CHUNK_BYTES = 16 << 20


def main() -> int:
    cap_bytes = int(sys.argv[1])
    rate = sys.argv[2:3] == ["--rate"]
    held = []
    total_bytes = 0
    t0 = time.perf_counter()
    while total_bytes < cap_bytes:
        held.append(b"\x01" * CHUNK_BYTES)
        total_bytes += CHUNK_BYTES
    seconds = time.perf_counter() - t0
    if not rate:
        return 3  # nobody stopped us
    print(total_bytes, f"{seconds:.9f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
