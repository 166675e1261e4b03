"""Typed configs from YAML: dataclass trees built from nested dicts, with dotted overrides.

Every mistake becomes a :class:`ConfigError` naming the dotted key (``stages.gft.lr``), what was
expected and, for an unknown key, the nearest valid one. No work starts on a bad config. Rules
that hold for every key are kept here: a number is finite, a string is not empty (``null`` is how
a recipe leaves a setting unset), and a field declared with :func:`bounded` is within its bounds
(:func:`check_bounds`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The numbers a field accepts: ``>= low``, ``> above``, ``<= high``, ``< below`` (each optional)."""

    low: float | None = None
    above: float | None = None
    high: float | None = None
    below: float | None = None

    def holds(self, value: float) -> bool:
        return ((self.low is None or value >= self.low) and (self.above is None or value > self.above)
                and (self.high is None or value <= self.high) and (self.below is None or value < self.below))

    def __str__(self) -> str:
        said = [f"{sign} {limit}" if isinstance(limit, int) else f"{sign} {limit:g}" for sign, limit in
                ((">=", self.low), (">", self.above), ("<=", self.high), ("<", self.below)) if limit is not None]
        return " and ".join(said)


def bounded(default, **bounds: float):
    """A dataclass field of ``default`` that :func:`check_bounds` holds to ``Bounds(**bounds)``."""
    return dataclasses.field(default=default, metadata={"bounds": Bounds(**bounds)})


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        # items with a name are addressed by it, as overrides address them (stages.gft.lr)
        return [_coerce(v, args[0], f"{where}.{_item_label(v, i)}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-6" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        if not value.strip():
            raise ConfigError(f"{where}: empty; give a value, or null where the setting may be left unset")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def _item_label(item, index: int) -> str:
    """A list item's name in messages: its ``name``, when that reads as one, else its index."""
    name = item.get("name") if isinstance(item, dict) else None
    return name if isinstance(name, str) and 0 < len(name) <= 64 and name.isprintable() and " " not in name \
        and "." not in name else str(index)


def build(cls, data: dict, where: str = ""):
    """Instantiate dataclass ``cls`` from a nested dict, checking keys and types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"unknown key {_join(where, key)!r}{hint}")
    kwargs = {name: _coerce(value, hints[name], _join(where, name)) for name, value in data.items()}
    missing = [
        name for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing required key {_join(where, missing[0])!r}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # a dataclass's own __post_init__ checks
        raise ConfigError(f"{where or cls.__name__}: {err}") from None


def check_bounds(config, where: str = "") -> None:
    """Every :func:`bounded` field of the dataclass tree ``config`` within its bounds, however the
    tree was made (a recipe, or a command's options); list items are named by their ``name``."""
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), _join(where, f.name)
        bounds = f.metadata.get("bounds")
        if bounds is not None and value is not None and not bounds.holds(value):
            raise ConfigError(f"{key} must be {bounds}, got {value!r}")
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if dataclasses.is_dataclass(item):
                check_bounds(item, key if item is value else _join(key, getattr(item, "name", i)))


def _join(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


def to_dict(config) -> dict:
    """The plain nested dict of a config tree (what is written next to a run)."""
    return dataclasses.asdict(config)


def apply_override(tree: dict, dotted: str) -> None:
    """Apply one ``a.b.c=value`` override in place. List items are addressed by index or by the
    value of their ``name`` key (``stages.gft.lr=1e-6``). The value is parsed as YAML."""
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} is not of the form key=value")
    key, raw = dotted.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    parts = key.strip().split(".")
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        node = _child(node, part, ".".join(parts[: depth + 1]))
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {key!r}: {'.'.join(parts[:-1])!r} is a value, not a section")


def _child(node, part: str, where: str):
    if isinstance(node, list):
        return node[_list_index(node, part, where)]
    if isinstance(node, dict):
        if part not in node or node[part] is None:
            node[part] = {}
        return node[part]
    raise ConfigError(f"override {where!r}: parent is a value, not a section")


def _list_index(items: list, part: str, where: str) -> int:
    if part.isdigit() and int(part) < len(items):
        return int(part)
    names = [item.get("name") for item in items if isinstance(item, dict)]
    if part in names:
        return names.index(part)
    raise ConfigError(f"override {where!r}: no list item {part!r}; items: {names or list(range(len(items)))}")


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping at the top level")
    return data
