"""Declared plugin parameters: a type, a default and bounds, written once in `submission.yaml` and checked by the
harness (never by hand in each plugin), as ART's `attack_params` are.

A parameter is either its default alone (the type is the default's) or a mapping:

    parameters:
      batch_size: 32                                   # an int, any value
      holdout: {default: 0.2, range: "(0, 1)"}         # a float strictly between 0 and 1
      steps: {default: 300, range: "[1, inf)"}         # an int >= 1
      blend: {default: add, choices: [add, average]}   # one of the listed strings
      eps: {default: 0.1, range: "(0, 1)", help: the assumed upper bound on the poisoned share}

`range` is an interval, a bracket closing it and a parenthesis leaving the end out; `inf` leaves a side open.
An int parameter takes ints; a float parameter takes ints or floats; a bool only true or false. Rules across
parameters (e.g. two rates summing below 1) stay in the plugin's `__init__`, raising ValueError.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional

from .config import Invalid

INTERVAL = re.compile(r"^\s*([\[(])\s*(-?inf|[-+0-9.eE]+)\s*,\s*(-?inf|[-+0-9.eE]+)\s*([\])])\s*$")
KEYS = ("default", "range", "choices", "help")
TYPES = (bool, int, float, str, list)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    low_closed: bool
    high_closed: bool

    @classmethod
    def parse(cls, text: str, key: str) -> "Interval":
        m = INTERVAL.match(str(text))
        if not m:
            raise Invalid(key, f"range must be an interval such as '[0, 1]', '(0, 1]' or '[1, inf)', got {text!r}")
        try:
            lo, hi = float(m.group(2)), float(m.group(3))
        except ValueError:
            raise Invalid(key, f"range {text!r}: its ends must be numbers or inf") from None
        if lo > hi:
            raise Invalid(key, f"range {text!r} is empty: {lo} > {hi}")
        return cls(lo, hi, m.group(1) == "[" and not math.isinf(lo), m.group(4) == "]" and not math.isinf(hi))

    def __contains__(self, v: float) -> bool:
        above = v >= self.low if self.low_closed else v > self.low
        below = v <= self.high if self.high_closed else v < self.high
        return above and below

    def __str__(self) -> str:
        def end(v):
            return ("-inf" if v < 0 else "inf") if math.isinf(v) else f"{v:g}"
        return f"{'[' if self.low_closed else '('}{end(self.low)}, {end(self.high)}{']' if self.high_closed else ')'}"


@dataclass(frozen=True)
class Param:
    """One declared parameter."""
    default: Any
    range: Optional[Interval] = None
    choices: Optional[tuple] = None
    help: str = ""

    @property
    def type(self) -> type:
        return next(t for t in TYPES if isinstance(self.default, t))

    def problem(self, v: Any) -> Optional[str]:
        """Why `v` is not an accepted value (None when it is)."""
        t = self.type
        if t is bool or isinstance(v, bool):
            ok = t is bool and isinstance(v, bool)
        elif t is float:
            ok = isinstance(v, (int, float))
        else:
            ok = isinstance(v, t)
        if not ok:
            return f"must be {t.__name__} like its default {self.default!r}, got {v!r}"
        if self.choices is not None and v not in self.choices:
            return f"must be one of {', '.join(map(repr, self.choices))}, got {v!r}"
        if self.range is not None and (isinstance(v, float) and math.isnan(v) or v not in self.range):
            return f"must lie in {self.range}, got {v!r}"
        return None


def declare(key: str, raw: Any) -> Param:
    """A manifest's `parameters.<key>` entry as a Param; Invalid (naming the key) when malformed or when its
    default breaks its own bounds."""
    spec = raw if isinstance(raw, dict) else {"default": raw}
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise Invalid(key, f"unknown field(s) {', '.join(unknown)}; a parameter may have {', '.join(KEYS)}")
    if "default" not in spec:
        raise Invalid(key, "a parameter written as a mapping needs a `default`")
    d = spec["default"]
    if d is None or not isinstance(d, TYPES):
        raise Invalid(key, f"default must be a number, string, boolean or list, got {d!r}")
    rng = spec.get("range")
    if rng is not None:
        if isinstance(d, bool) or not isinstance(d, (int, float)):
            raise Invalid(key, f"range applies to numbers; the default {d!r} is not one")
        rng = Interval.parse(rng, f"{key}.range")
    choices = spec.get("choices")
    if choices is not None:
        if not isinstance(choices, list) or not choices:
            raise Invalid(f"{key}.choices", f"must be a non-empty list, got {choices!r}")
        choices = tuple(choices)
    p = Param(d, rng, choices, str(spec.get("help") or ""))
    why = p.problem(d)
    if why:
        raise Invalid(key, f"its own declaration refuses the default: {why}; fix the default or the bounds")
    return p


def resolve(declared: dict[str, Param], overrides: dict, who: str) -> dict:
    """Defaults merged with `overrides`; ValueError naming `who` and the parameter for an undeclared key or a
    value its declaration refuses."""
    out = {k: p.default for k, p in declared.items()}
    for k, v in (overrides or {}).items():
        if k not in declared:
            raise ValueError(f"{who} has no parameter '{k}'; declared: {', '.join(declared) or '(none)'}")
        why = declared[k].problem(v)
        if why:
            raise ValueError(f"{who} parameter '{k}' {why}")
        out[k] = v
    return out
