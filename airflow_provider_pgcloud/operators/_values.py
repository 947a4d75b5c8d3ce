"""Rendered template values -> the engine's types.

Templated operator fields arrive as strings unless the DAG renders native objects
(`"{{ params.jobs }}"` is `"2"`, a null Param is `"None"`), so every option is read through one
of these, which accept both the native value and its rendered text.
"""

from __future__ import annotations

import ast
import csv
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from ..runner.sizes import parse_size

_NONE_TEXT = ("", "none", "null")


def optional_str(value: Any) -> str | None:
    """None for None/''/'None'/'null'; otherwise the value as text."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text.lower() in _NONE_TEXT else text


def as_int(value: Any, name: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {value!r}") from None


def as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "", "none"):
        return False
    raise ValueError(f"{name} must be true or false, not {value!r}")


def as_size(value: Any, name: str) -> int:
    """Bytes from an int or a Barman size string ("8MB" is 8 MiB, "8MiB" is 8,000,000)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return parse_size(str(value).strip())
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def as_compression(value: Any) -> str | None:
    """The codec name, or None for no compression ('none' as in the DAG form)."""
    return optional_str(value)


def as_seconds(value: Any, name: str) -> float:
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    try:
        return float(str(value).strip())
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {value!r}") from None


def _literal(value: Any) -> Any:
    """A rendered dict/list comes back as its repr; read it back (never evaluates code)."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "[", "("):
        try:
            return ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"cannot read {value!r} as a list or mapping") from None
    return value


def as_tags(value: Any) -> tuple[tuple[str, str], ...]:
    """Tags as (key, value) pairs from a mapping, pairs, or "KEY,VALUE" strings (Barman's form).

    A single string may hold several "KEY,VALUE" entries, one per line.
    """
    value = _literal(value)
    if value is None or (isinstance(value, str) and optional_str(value) is None):
        return ()
    if isinstance(value, Mapping):
        return tuple((str(k), str(v)) for k, v in value.items())
    items: Iterable[Any] = value.splitlines() if isinstance(value, str) else value
    tags: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, str):
            if not item.strip():
                continue
            fields = next(csv.reader([item.strip()]))
        else:
            fields = [str(part) for part in item]
        if len(fields) != 2:
            raise ValueError(f"invalid tag {item!r}: expected KEY,VALUE")
        tags.append((fields[0], fields[1]))
    keys = [key for key, _ in tags]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate tag keys: tag keys must be unique")
    if len(tags) > 10:
        raise ValueError("no more than 10 tags per object")
    return tuple(tags)


def as_list(value: Any) -> list[str]:
    """A list of strings from a list or its rendered text; empty for None/'None'/''."""
    value = _literal(value)
    if value is None or (isinstance(value, str) and optional_str(value) is None):
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(item) for item in value if optional_str(item) is not None]
