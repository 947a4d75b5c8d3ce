"""Option values as users give them -> the engine's types, and the rules they must follow.

The command line parses its own text (runner/cli/); everything else reads values through these:
an Airflow operator's templated fields arrive as strings unless the DAG renders native objects
(`"{{ params.jobs }}"` is `"2"`, a null Param is `"None"`), so each function accepts both the
native value and its rendered text. The tag rules are Barman's, for both.
"""

from __future__ import annotations

import ast
import csv
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import PgCloudError
from .sizes import parse_size
from .storage.base import StoreConfig, store_options

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


def literal(value: Any) -> Any:
    """A rendered dict/list comes back as its repr; read it back (never evaluates code)."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "[", "("):
        try:
            return ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"cannot read {value!r} as a list or mapping") from None
    return value


MAX_TAGS = 10


def parse_tag(text: str) -> tuple[str, str]:
    """One `KEY,VALUE` tag, CSV-quoted as Barman reads it; ValueError otherwise."""
    try:
        fields = next(csv.reader([text], delimiter=","))
    except (csv.Error, StopIteration) as exc:
        raise ValueError(f"Error parsing tag {text}: {exc}") from None
    if len(fields) != 2:
        raise ValueError(f"Invalid tag format: {text}")
    return fields[0], fields[1]


def check_tags(tags: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Barman's rules for a set of tags: at most ten, each key once (PgCloudError, exit 4)."""
    tags = tuple(tags)
    if len(tags) > MAX_TAGS:
        raise PgCloudError("Maximum number of tags per object exceeded: no more than "
                           f"{MAX_TAGS} tags")
    keys = [key for key, _ in tags]
    if len(set(keys)) != len(keys):
        raise PgCloudError("Duplicate tag keys found. Tag keys must be unique.")
    return tags


def as_tags(value: Any) -> tuple[tuple[str, str], ...]:
    """Tags as (key, value) pairs from a mapping, pairs, or "KEY,VALUE" strings (Barman's form).

    A single string may hold several "KEY,VALUE" entries, one per line.
    """
    value = literal(value)
    if value is None or (isinstance(value, str) and optional_str(value) is None):
        return ()
    if isinstance(value, Mapping):
        return check_tags((str(k), str(v)) for k, v in value.items())
    items: Iterable[Any] = value.splitlines() if isinstance(value, str) else value
    tags: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, str):
            if item.strip():
                tags.append(parse_tag(item.strip()))
            continue
        fields = [str(part) for part in item]
        if len(fields) != 2:
            raise ValueError(f"Invalid tag format: {item!r}")
        tags.append((fields[0], fields[1]))
    return check_tags(tags)


def as_list(value: Any) -> list[str]:
    """A list of strings from a list or its rendered text; empty for None/'None'/''."""
    value = literal(value)
    if value is None or (isinstance(value, str) and optional_str(value) is None):
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(item) for item in value if optional_str(item) is not None]


def store_config(destination_url: Any, values: Mapping[str, Any]) -> StoreConfig:
    """A StoreConfig from the store options in `values`, by StoreConfig field name, each a
    native value or its rendered text; unset ones (None, "None", "") keep their defaults.
    ValueError names an option whose value is not allowed."""
    config: dict[str, Any] = {}
    for spec, option in store_options():
        if spec.name not in values:
            continue
        if option.kind == "tags":
            config[spec.name] = as_tags(values[spec.name])
            continue
        text = optional_str(values[spec.name])
        if text is None:
            continue
        if option.choices and text not in option.choices:
            raise ValueError(f"unknown {spec.name} {text!r}: expected one of "
                             f"{', '.join(option.choices)}")
        if option.kind == "positive":
            number = as_int(text, spec.name)
            if number < 1:
                raise ValueError(f"{spec.name} must be a positive integer, not {text!r}")
            config[spec.name] = number
        else:
            config[spec.name] = text
    if config.get("lock_mode") and not config.get("lock_days"):
        raise ValueError("lock_mode is the mode of lock_days: give both")
    return StoreConfig(destination_url=str(destination_url).strip(), **config)
