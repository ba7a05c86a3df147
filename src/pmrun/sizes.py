"""Parse and format byte sizes and fractions given by users ("1G", "500M", "1.5GiB", "80%").

Units are binary (K = 1024) whatever their spelling: that is what `ulimit`, `prlimit`,
systemd's ``MemoryMax=`` and every memory tool report, and mixing 1000 and 1024 in one
product only misleads. Everything inside pmrun is an ``int`` of bytes.
"""

from __future__ import annotations

from .errors import SizeError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mb": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gb": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tb": 1 << 40,
    "tib": 1 << 40,
}

# Larger than any memory a machine has, small enough for every kernel interface.
MAX_SIZE = 1 << 60


def parse_size(text: str | int | float) -> int:
    """Return ``text`` ("1G", "500M", "50MB", "1.5GiB", "4096") as a number of bytes.

    Raises :class:`SizeError` with a message that shows the accepted forms.
    """
    if isinstance(text, bool) or not isinstance(text, int | float | str):
        raise SizeError(f"invalid size {text!r}: expected a number with a unit, e.g. 500M or 1.5G")
    if isinstance(text, int | float):
        shown = repr(text)
        if isinstance(text, int) and text > MAX_SIZE:  # float() fails past 1e308
            raise SizeError(f"invalid size {shown[:40]}: larger than {format_size(MAX_SIZE)}")
        value, unit = float(text), ""
    else:
        shown = repr(text)
        s = text.strip().lower().replace("_", "")
        i = len(s)
        while i > 0 and s[i - 1].isalpha():
            i -= 1
        number, unit = s[:i].strip(), s[i:]
        if unit not in _UNITS or not number:
            raise SizeError(
                f"invalid size {shown}: expected a number with a unit, e.g. 500M or 1.5G"
            )
        try:
            value = float(number)
        except ValueError:
            raise SizeError(
                f"invalid size {shown}: expected a number with a unit, e.g. 500M or 1.5G"
            ) from None
    if value != value or value < 0:  # NaN or negative
        raise SizeError(f"invalid size {shown}: must be zero or more")
    if value in (float("inf"),):
        raise SizeError(f"invalid size {shown}: must be finite")
    if isinstance(text, str) and number.isdigit():
        result: float | int = int(number) * _UNITS[unit]  # exact for whole numbers
    else:
        result = value * _UNITS[unit]
    if result > MAX_SIZE:
        raise SizeError(f"invalid size {shown}: larger than {format_size(MAX_SIZE)}")
    return int(result)


def parse_optional_size(text: str | int | float | None) -> int | None:
    """Like :func:`parse_size`, but ``off``/``none``/``unlimited`` mean no limit (``None``)."""
    if text is None:
        return None
    if isinstance(text, str) and text.strip().lower() in ("off", "none", "unlimited", "infinity"):
        return None
    return parse_size(text)


def parse_fraction(text: str | int | float) -> float:
    """Return ``"80%"``, ``"0.8"`` or ``0.8`` as a fraction in [0, 1]."""
    shown = repr(text)
    try:
        if isinstance(text, str):
            s = text.strip()
            value = float(s[:-1]) / 100 if s.endswith("%") else float(s)
        elif isinstance(text, bool):
            raise ValueError
        else:
            value = float(text)
    except (ValueError, TypeError, OverflowError):  # TypeError: a list; Overflow: 10**400
        raise SizeError(f"invalid fraction {shown[:40]}: expected e.g. 80% or 0.8") from None
    if not 0.0 <= value <= 1.0:
        raise SizeError(f"invalid fraction {shown}: must be between 0% and 100%")
    return value


def format_size(n: int | float | None) -> str:
    """Format bytes for people: ``1073741824`` -> ``"1.0G"``."""
    if n is None:
        return "off"
    n = float(n)
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{int(n)}B" if unit == "" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}T"  # pragma: no cover
