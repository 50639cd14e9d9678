"""Typed configuration from YAML: dataclasses are the schema, defaults live in one place.

`parse(Cls, mapping, file=...)` checks every key against the dataclass fields (unknown keys,
missing keys, wrong types, allowed values) and raises `ConfigError` naming the file and the
dotted key. A dataclass may define `check(self)` raising `Invalid(key, message)` for rules
across fields, and a classmethod `from_short(value)` to accept a non-mapping shorthand.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, Union

from .errors import ConfigError


# YAML 1.2's floats. PyYAML implements YAML 1.1, where a float needs a dot and a signed exponent: it reads `1e-2`,
# `1e5` or `5e-4`, as people write learning rates, as strings. This loader reads them as floats (and still reads
# `1.0e-2`, `.5`, `.inf`, `.nan` as before; an int stays an int).
FLOAT_12 = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
                           |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                           |[-+]?\.(?:inf|Inf|INF)
                           |\.(?:nan|NaN|NAN))$""", re.X)


def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        pass
    Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_12, list("-+0123456789."))
    return Loader


def read_yaml(raw: bytes, file) -> Any:
    """YAML from the bytes of `file` (scientific notation such as `1e-2` read as a number, as YAML 1.2 does); a
    syntax error or non-UTF-8 text is a ConfigError naming the file."""
    import yaml
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(file, "<root>", f"not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(file, "<root>", f"not valid YAML: {e}") from None


class Invalid(ValueError):
    """Raised by a dataclass's `check` with the sub-key at fault."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_name(key: str, value: str) -> None:
    """Names become folder and file names (results/<scenario>/<attack>/<defense>): no '/', '..' or spaces."""
    if not NAME.fullmatch(value) or ".." in value:
        raise Invalid(key, f"{value!r} is not a valid name: use letters, digits, '.', '_' and '-' (no '/' or '..'), "
                           "starting with a letter or digit")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(tp, value, file, key):
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(arg, value, file, key)
            except ConfigError as e:
                errors.append(e)
        # a mapping that failed inside a dataclass: report the inner error, it is more precise
        inner = [e for e in errors if e.key != key]
        if inner:
            raise inner[0]
        raise ConfigError(file, key, f"expected {_describe(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(file, key, f"must be one of {_describe(tp)}, got {value!r}")
    elif origin is list:
        if isinstance(value, list):
            (arg,) = typing.get_args(tp)
            return [_coerce(arg, v, file, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif dataclasses.is_dataclass(tp):
        return parse(tp, value, file=file, path=key)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a programming error in a schema
        raise TypeError(f"unsupported schema type {tp!r}")
    raise ConfigError(file, key, f"expected {_describe(tp)}, got {type(value).__name__} {value!r}")


def parse(cls, data, *, file, path: str = ""):
    """Build dataclass `cls` from a mapping, validating every key (see module doc)."""
    if not isinstance(data, dict):
        short = getattr(cls, "from_short", None)
        if short is not None and data is not None:
            try:
                return short(data)
            except Invalid as e:
                raise ConfigError(file, _join(path, e.key) if e.key else (path or "<root>"), e.message) from None
        raise ConfigError(file, path or "<root>", f"expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(file, _join(path, str(unknown[0])),
                          f"unknown key; allowed keys here: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = _join(path, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(file, key, f"missing required key ({_describe(hints[name])})")
            continue
        kwargs[name] = _coerce(hints[name], data[name], file, key)
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except Invalid as e:
            raise ConfigError(file, _join(path, e.key), e.message) from None
    return obj


# field metadata for a setting added after results were cached: left at its default it is omitted from
# to_dict, so every artifact key computed before it existed stays the same
ADDED = {"omit_default": True}


def to_dict(obj) -> Any:
    """Plain, JSON-ready form of a parsed config (used for hashing and provenance)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if f.init and not (f.metadata.get("omit_default") and getattr(obj, f.name) == f.default)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj
