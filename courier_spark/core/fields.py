"""How a config setting is declared and checked: the field constructors
(``num``, ``choice``, ``text``, ``items``) whose metadata carry a field's
range or choices, and ``Section``, the base whose ``__post_init__`` checks
them, so a section built anywhere is valid or raises a ``ConfigError`` naming
the key. What the settings are is ``courier_spark/core/schema.py``.

Standard library only, like the schema.
"""
from __future__ import annotations

import math
import re
from dataclasses import MISSING, field, fields
from typing import Any, ClassVar, Sequence

from courier_spark.core.errors import ConfigError

BIG = 10 ** 9  # upper bound for counts that have no natural limit (an absurd value still fails)


# --------------------------------------------------------------------------- field constructors
def num(default: Any, lo: float | None, hi: float, *, lo_open: bool = False, factory=None) -> Any:
    """A numeric field within ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); None allowed if default is None."""
    meta = {"range": (lo, hi, lo_open)}
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


def choice(default: str, options: Sequence[str]) -> Any:
    return field(default=default, metadata={"choices": tuple(options)})


def text(default: str | None, pattern: str | None = None, hint: str = "") -> Any:
    """A string field, optionally matching ``pattern`` (``hint`` says the expected form)."""
    return field(default=default, metadata={"pattern": pattern, "hint": hint})


def items(factory, *, item: type, choices: Sequence[str] | None = None,
          lo: float | None = None, hi: float | None = None, min_len: int = 1, unique: bool = True) -> Any:
    """A list field whose elements have type ``item`` (and choices or a range)."""
    return field(default_factory=factory, metadata={
        "items": {"type": item, "choices": tuple(choices) if choices else None, "range": (lo, hi),
                  "min_len": min_len, "unique": unique}})


def _fmt_range(lo, hi, lo_open) -> str:
    left = "(" if lo_open else "["
    return f"{left}{'-inf' if lo is None else lo}, {hi}]"


def _check_number(name: str, v: Any, lo, hi, lo_open: bool) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{name}: expected a number, got {v!r}")
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{name}: must be finite, got {v!r}")
    bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
    if bad_lo or v > hi:
        raise ConfigError(f"{name} must be within {_fmt_range(lo, hi, lo_open)}, got {v!r}")


class Section:
    """Base of every config section: checks each field's declared constraints."""
    SECTION: ClassVar[str] = ""

    def _key(self, name: str) -> str:
        return f"{self.SECTION}.{name}" if self.SECTION else name

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            m = f.metadata
            key = self._key(f.name)
            if v is None:
                if f.default is not None and f.default is not MISSING:
                    raise ConfigError(f"{key}: a value is required (got null)")
                continue
            if "range" in m:
                _check_number(key, v, *m["range"])
            elif "choices" in m:
                if v not in m["choices"]:
                    raise ConfigError(f"{key} must be one of {', '.join(m['choices'])}; got {v!r}")
            elif m.get("pattern"):
                if not isinstance(v, str) or not re.fullmatch(m["pattern"], v):
                    raise ConfigError(f"{key}: expected {m['hint'] or 'a string matching ' + m['pattern']}, got {v!r}")
            elif "items" in m:
                setattr(self, f.name, _check_items(key, v, m["items"]))
        self.check()

    def check(self) -> None:
        """Cross-field rules of this section (override)."""


def _check_items(key: str, v: Any, spec: dict) -> list:
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        v = [v]  # `--set evaluate.seeds=3` means [3]
    if not isinstance(v, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {v!r}")
    out = []
    for x in v:
        typ = spec["type"]
        if typ is int:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or (isinstance(x, float) and not x.is_integer()):
                raise ConfigError(f"{key}: expected a list of int, got element {x!r}")
            x = int(x)
        elif typ is str and not isinstance(x, str):
            raise ConfigError(f"{key}: expected a list of names, got element {x!r}")
        if spec["choices"] and x not in spec["choices"]:
            raise ConfigError(f"{key}: unknown value {x!r}; one of {', '.join(spec['choices'])}")
        lo, hi = spec["range"]
        if lo is not None and not lo <= x <= hi:
            raise ConfigError(f"{key}: every element must be within [{lo}, {hi}], got {x!r}")
        out.append(x)
    if len(out) < spec["min_len"]:
        raise ConfigError(f"{key}: needs at least {spec['min_len']} element(s), got {out!r}")
    if spec["unique"] and len(set(out)) != len(out):
        raise ConfigError(f"{key}: lists a value twice: {out!r}")
    return out
