"""Size strings as barman-cloud-backup reads them (`barman.utils.check_size`).

Barman's convention is inverted from the usual one: a `B` suffix with a prefix is base 1024
(`10MB` = 10485760) and an `iB` suffix is base 1000 (`10MiB` = 10000000). We keep it, because
users paste the same values into both tools.
"""

from __future__ import annotations

_PREFIXES = "KMGTPEZY"


def parse_size(text: str) -> int:
    """Return the number of bytes `text` means, or raise ValueError where Barman refuses it.

    The grammar is Barman's, case-insensitive: a plain integer is bytes; `<number><prefix>B` is
    base 1024 and `<number><prefix>iB` base 1000, where the number may be a float; `<int>B` is
    bytes. Zero, negatives and anything else are refused.
    """
    value = text.upper()
    error = ValueError(f"'{text}' is not a valid size string")
    try:
        if value.endswith("B"):
            base, idx = (1000, 3) if value[-2:-1] == "I" else (1024, 2)
            prefix = value[-idx] if len(value) >= idx else ""
            if prefix and prefix in _PREFIXES:
                size = int(float(value[:-idx]) * base ** (_PREFIXES.index(prefix) + 1))
            else:
                size = int(value[: -idx + 1])
        else:
            size = int(value)
    except (ValueError, OverflowError, IndexError):
        raise error from None
    if size < 1:
        raise error
    return size


def format_size(size: float) -> str:
    """Human-readable bytes for log lines (binary units, one decimal)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    raise AssertionError("unreachable")
