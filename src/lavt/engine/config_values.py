"""Generic value handling for typed configurations (dataclasses), independent of LAVT.

- `read_config_file`: a YAML or JSON mapping from a file;
- `parse_overrides`: `key=value` strings with dotted keys, values read as YAML;
- `layered`: preset, then file, then overrides, merged key by key (nested mappings merge);
- `dataclass_from_dict`: a dataclass from a mapping, every value coerced to the field's type
  hint, an unknown key answered with the closest known one.

Every mistake is one `LAVTUserError` that names the key, its source and what was expected.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from lavt.errors import LAVTUserError

T = typing.TypeVar("T")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON mapping from `path`, or a clear error."""
    p = Path(path)
    if not p.is_file():
        raise LAVTUserError(f"config file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise LAVTUserError(f"config file {p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}".replace("\n", " ")) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LAVTUserError(f"config file {p} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["a=1", "b.c=[1,2]"]` -> `{"a": 1, "b": {"c": [1, 2]}}`; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise LAVTUserError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        _set_dotted(out, key, value)
    return out


def dump_yaml(data: dict[str, Any], path: str | Path) -> None:
    """Write a mapping as YAML in its own key order (readable back by `read_config_file`)."""
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def layered(
    path: str | Path | None,
    overrides: dict[str, Any] | list[str] | None,
    preset: str | None,
    presets: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Preset, then the file at `path`, then `overrides` (a mapping or `key=value` strings).

    The preset is named by the overrides, else by `preset`, else by the file's `preset` key,
    else `paper`; with no `presets` (evaluation) naming one is an error.
    """
    file_data = read_config_file(path) if path else {}
    over = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    name = over.pop("preset", None) or preset or file_data.pop("preset", None)
    file_data.pop("preset", None)
    data: dict[str, Any] = {}
    if presets:
        name = name or "paper"
        if name not in presets:
            raise LAVTUserError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        data = deep_merge(data, presets[name])
    elif name:
        raise LAVTUserError("presets apply to training configurations only")
    data = deep_merge(data, file_data)
    return deep_merge(data, over)


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """`a` updated by `b`, merging nested mappings instead of replacing them."""
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for p in parents:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise LAVTUserError(f"override {key!r}: {p!r} is not a mapping")
    d[last] = value


def to_plain(v: Any) -> Any:
    """Tuples become lists, recursively: what YAML and JSON write."""
    if isinstance(v, dict):
        return {k: to_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_plain(x) for x in v]
    return v


def dataclass_from_dict(cls: type[T], data: dict[str, Any], source: str) -> T:
    """`cls(**data)` with every value coerced to its field's type; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        k = str(key).replace("-", "_")
        if k not in hints:
            close = difflib.get_close_matches(k, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
            raise LAVTUserError(f"unknown key {key!r} in {source}{hint}")
        kwargs[k] = coerce(k, value, hints[k], source)
    return cls(**kwargs)


def coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """Turn a YAML/CLI value into the field's type, or explain which key is wrong."""

    def fail(expected: str) -> typing.NoReturn:
        raise LAVTUserError(f"{key} in {source} must be {expected}, got {value!r}")

    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(key, value, inner[0], source) if len(inner) == 1 else value
    if origin is Literal:
        if value not in args:
            fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        fail("true or false")
    if hint is int:
        if isinstance(value, bool):
            fail("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        fail("an integer")
    if hint is float:
        if isinstance(value, bool):
            fail("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML reads 5e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        fail("a number")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        fail("a string")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            fail("a list")
        return tuple(coerce(key, v, args[0], source) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            fail("a mapping")
        return dict(value)
    return value
