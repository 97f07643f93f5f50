"""Typed configuration: dataclasses read from YAML, overridden as `train.lr=3e-4`, checked at the boundary.

Every config of the library (the pretraining run, fine-tuning, the task benchmark, the model) is a
tree of dataclasses. This module turns a YAML file plus `key.sub=value` overrides into such a tree:
an unknown key names the nearest valid one, a value of the wrong type names the key and the type,
a `Literal[...]` field lists its choices. Range checks that a type cannot express live in each
dataclass's `validate()`, written with the `require_*` helpers below. The rest of the code trusts
the values it is given. Of ours it imports only `UserError`.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from mlm.errors import UserError


class ConfigError(UserError):
    """A config mistake; the message names the key (or file) and what is wrong."""


# ---------------------------------------------------------------- reading

def load_config(path: str | Path | None, overrides: Sequence[str], cls: type) -> Any:
    """Read YAML (if given), apply `key.sub=value` overrides, build `cls`, run its `validate()`."""
    raw = read_yaml_mapping(path) if path is not None else {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        set_path(raw, key.strip().split("."), value)
    cfg = from_dict(cls, raw)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (empty file: {}), or a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(err, 'problem', err)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(loaded).__name__}")
    return loaded


def set_path(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    """tree[k0][k1]...[kn] = value, creating the intermediate mappings."""
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = {}
            node[k] = child
        node = child
    node[keys[-1]] = value


def from_dict(cls: type, raw: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, checking every key and value (no `validate()` call)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in names:
            valid = [f"{prefix}{n}" for n in names]
            close = difflib.get_close_matches(full, valid, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else f"; valid keys here: {', '.join(valid)}"
            raise ConfigError(f"unknown config key {full}{hint}")
        kwargs[key] = _coerce(hints[key], value, full)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    """The YAML text of a config (or of a plain dict), keys in declaration order."""
    data = cfg if isinstance(cfg, dict) else to_dict(cfg)
    return yaml.safe_dump(data, sort_keys=False)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, prefix=f"{key}.")
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
            raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    return _coerce_scalar(tp, value, key)


def _coerce_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                as_float = float(value)  # "1e4", "2_000"
            except ValueError:
                as_float = float("nan")
            if as_float.is_integer():
                return int(as_float)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "3e-4" as a string
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if value is None:
            return ""
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


# ---------------------------------------------------------------- range checks for validate()

def require_positive(obj: Any, section: str, *names: str) -> None:
    for n in names:
        if getattr(obj, n) <= 0:
            raise ConfigError(f"{section}.{n} must be positive, got {getattr(obj, n)}")


def require_nonnegative(obj: Any, section: str, *names: str) -> None:
    for n in names:
        if getattr(obj, n) < 0:
            raise ConfigError(f"{section}.{n} must be zero or positive, got {getattr(obj, n)}")


def require_unit(obj: Any, section: str, *names: str) -> None:
    """Each named field lies in [0, 1]."""
    for n in names:
        v = getattr(obj, n)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{section}.{n} must be between 0 and 1, got {v}")


def require_choice(obj: Any, section: str, name: str, choices: Sequence[str]) -> None:
    """For values whose choices are known only at run time (a Literal field checks itself)."""
    v = getattr(obj, name)
    if v not in choices:
        raise ConfigError(f"{section}.{name} must be one of {', '.join(choices)}; got {v!r}")


def require_literals(obj: Any, section: str) -> None:
    """Every `Literal[...]` field holds one of its choices (for configs built in Python, not from YAML)."""
    for name, tp in typing.get_type_hints(type(obj)).items():
        if typing.get_origin(tp) is typing.Literal:
            require_choice(obj, section, name, typing.get_args(tp))


def validate_sections(cfg: Any) -> None:
    """Call `validate()` on every dataclass field of `cfg` that has one."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and hasattr(value, "validate"):
            value.validate()
