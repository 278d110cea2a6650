"""Declared options: each option's type, range or choices, written next to its default.

An evaluator (``EvaluatorSpec.option_schema``) or a dataset loader declares a schema, a dict of
option name -> check::

    LINEAR_SCHEMA = {"wd_steps": Int(min=1), "refit_on": Choice("train+val", "train"),
                     "tol": Float(min=0, min_open=True), "standardize": Bool()}

:func:`validate_options` checks a whole options dict before any compute and returns the values
normalised (``1000.0`` -> ``1000``, ``"True"`` -> ``True``, ``"Train"`` -> ``"train"``, a scalar
given for a list -> a one-element list). A bad value raises :class:`OptionError` with one line that
names the owner, the option, what is allowed and what was given::

    linear: option 'wd_steps' must be an integer >= 1, got 0

Numbers are always finite (``NaN``/``Infinity`` are refused); ``nullable=True`` also allows ``null``.
Rules that tie several options together (``primary_k`` must be one of ``ks``) are functions
``options -> message | None`` run after every single option passed.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

Rule = Callable[[dict], "str | None"]

_INTEGER = re.compile(r"^[+-]?\d+$")


class OptionError(ValueError):
    """An option value outside its declared type or range; the message is one line."""


class _Invalid(Exception):
    """Raised by a check; :func:`validate_options` turns it into an :class:`OptionError`."""


def show(value: Any) -> str:
    """A value as the user typed it: JSON for numbers/lists (``NaN``, ``Infinity``), quoted text."""
    if isinstance(value, str):
        return repr(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


class Check:
    """Base of every declared option type; ``nullable`` also accepts ``None`` (``-o KEY=null``)."""

    nullable: bool = False

    def validate(self, value: Any) -> Any:
        """The normalised value, or :class:`_Invalid`."""
        if value is None:
            if self.nullable:
                return None
            raise _Invalid
        return self._coerce(value)

    def describe(self, plural: bool = False) -> str:
        text = self._describe(plural)
        if self.nullable:
            return f"null or {text}" if not plural else f"nulls or {text}"
        return text

    def _coerce(self, value: Any) -> Any:
        raise NotImplementedError

    def _describe(self, plural: bool) -> str:
        raise NotImplementedError


def _number(value: Any) -> float:
    """A real number from an int, a float or numeric text; bools and other types are refused."""
    if isinstance(value, bool):
        raise _Invalid
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return int(value) if _INTEGER.match(value.strip()) else float(value)
        except ValueError:
            raise _Invalid from None
    raise _Invalid


def _bounds(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False,
            integer: bool = False) -> str:
    if low is not None and high is not None:
        if integer:
            return f" in {low}..{high}"
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low if integer else format(low, 'g')}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high if integer else format(high, 'g')}"
    return ""


@dataclass(frozen=True)
class Int(Check):
    """An integer (``1000``; ``1000.0`` and ``"1000"`` are normalised to ``1000``) in ``min..max``."""

    min: int | None = None
    max: int | None = None
    nullable: bool = False

    def _coerce(self, value: Any) -> int:
        number = _number(value)
        if isinstance(number, float):
            if not math.isfinite(number) or not number.is_integer():
                raise _Invalid
            number = int(number)
        if (self.min is not None and number < self.min) or (self.max is not None and number > self.max):
            raise _Invalid
        return int(number)

    def _describe(self, plural: bool) -> str:
        return ("integers" if plural else "an integer") + _bounds(self.min, self.max, integer=True)


@dataclass(frozen=True)
class Float(Check):
    """A finite number (ints are normalised to floats) within optional, optionally open, bounds."""

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    nullable: bool = False

    def _coerce(self, value: Any) -> float:
        number = float(_number(value))
        if not math.isfinite(number):
            raise _Invalid
        if self.min is not None and (number < self.min or (self.min_open and number == self.min)):
            raise _Invalid
        if self.max is not None and (number > self.max or (self.max_open and number == self.max)):
            raise _Invalid
        return number

    def _describe(self, plural: bool) -> str:
        return (("finite numbers" if plural else "a finite number")
                + _bounds(self.min, self.max, self.min_open, self.max_open))


@dataclass(frozen=True)
class Bool(Check):
    """``true``/``false`` (JSON), or the text ``true``/``false`` in any case; nothing else."""

    nullable: bool = False

    def _coerce(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise _Invalid

    def _describe(self, plural: bool) -> str:
        return "true or false" if not plural else "true/false values"


class Choice(Check):
    """One of the given strings (matched ignoring case and surrounding spaces; the declared spelling is kept)."""

    def __init__(self, *choices: str, nullable: bool = False):
        if not choices:
            raise TypeError("Choice needs at least one choice")
        self.choices = tuple(choices)
        self.nullable = nullable

    def _coerce(self, value: Any) -> str:
        if isinstance(value, str):
            wanted = value.strip().lower()
            for choice in self.choices:
                if choice.lower() == wanted:
                    return choice
        raise _Invalid

    def _describe(self, plural: bool) -> str:
        listing = ", ".join(repr(c) for c in self.choices)
        if len(self.choices) == 1:
            return listing if not plural else f"values {listing}"
        return f"one of {listing}" if not plural else f"values among {listing}"

    def __repr__(self) -> str:
        return f"Choice{self.choices!r}"


@dataclass(frozen=True)
class Text(Check):
    """Any text (column names, record names); ``nonempty`` refuses blank text."""

    nonempty: bool = True
    nullable: bool = False

    def _coerce(self, value: Any) -> str:
        if not isinstance(value, str) or (self.nonempty and not value.strip()):
            raise _Invalid
        return value

    def _describe(self, plural: bool) -> str:
        kind = "non-empty text" if self.nonempty else "text"
        return kind if not plural else f"{kind} values"


@dataclass(frozen=True)
class ExistingPath(Check):
    """Text naming an existing file (``kind="file"``) or folder (``kind="folder"``); ``~`` is expanded."""

    kind: str = "file"
    nullable: bool = False

    def _coerce(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _Invalid
        path = Path(value).expanduser()
        if not (path.is_file() if self.kind == "file" else path.is_dir()):
            raise _Invalid
        return value

    def _describe(self, plural: bool) -> str:
        return f"the path of an existing {self.kind}" if not plural else f"paths of existing {self.kind}s"


@dataclass(frozen=True)
class ListOf(Check):
    """A list (or tuple) of items passing ``item``; a bare item is taken as a one-element list.

    ``length`` fixes the length; otherwise ``min_len..max_len``. ``unique`` refuses repeats;
    ``increasing`` requires ``a[0] <= a[1] <= ...``.
    """

    item: Check
    min_len: int = 1
    max_len: int | None = None
    length: int | None = None
    unique: bool = False
    increasing: bool = False
    nullable: bool = False

    def _coerce(self, value: Any) -> list:
        if isinstance(value, (list, tuple)):
            items = list(value)
        elif isinstance(value, (dict, set)):
            raise _Invalid
        else:
            items = [value]
        if self.length is not None and len(items) != self.length:
            raise _Invalid
        if len(items) < self.min_len or (self.max_len is not None and len(items) > self.max_len):
            raise _Invalid
        out = [self.item.validate(v) for v in items]
        if self.unique and len({json.dumps(v, sort_keys=True) for v in out}) != len(out):
            raise _Invalid
        if self.increasing and any(a > b for a, b in zip(out, out[1:])):
            raise _Invalid
        return out

    def _describe(self, plural: bool) -> str:
        if self.length is not None:
            size = f"{self.length} "
        elif self.max_len is not None:
            size = f"{self.min_len}..{self.max_len} "
        elif self.min_len > 1:
            size = f"{self.min_len} or more "
        else:
            size = ""
        kind = "non-empty list" if self.min_len >= 1 and not size else "list"
        qualities = " ".join(q for q, on in (("distinct", self.unique), ("increasing", self.increasing)) if on)
        head = f"a {kind} of " if not plural else f"{kind}s of "
        return f"{head}{size}{qualities + ' ' if qualities else ''}{self.item.describe(plural=True)}"


@dataclass(frozen=True)
class MapOf(Check):
    """A dict whose keys pass ``key`` and values pass ``value``."""

    key: Check
    value: Check
    nullable: bool = False

    def _coerce(self, value: Any) -> dict:
        if not isinstance(value, Mapping) or not value:
            raise _Invalid
        return {self.key.validate(k): self.value.validate(v) for k, v in value.items()}

    def _describe(self, plural: bool) -> str:
        return f"{'a mapping' if not plural else 'mappings'} from {self.key.describe(True)} to {self.value.describe(True)}"


class AnyOf(Check):
    """The first of several checks that accepts the value (``Int(min=1) | "epoch"``)."""

    def __init__(self, *checks: Check, nullable: bool = False):
        self.checks = checks
        self.nullable = nullable

    def _coerce(self, value: Any) -> Any:
        for check in self.checks:
            try:
                return check.validate(value)
            except _Invalid:
                continue
        raise _Invalid

    def _describe(self, plural: bool) -> str:
        return " or ".join(check.describe(plural) for check in self.checks)

    def __repr__(self) -> str:
        return f"AnyOf{self.checks!r}"


def validate_value(owner: str, key: str, value: Any, check: Check) -> Any:
    """One option's normalised value; :class:`OptionError` naming the option otherwise."""
    try:
        return check.validate(value)
    except _Invalid:
        raise OptionError(f"{owner}: option '{key}' must be {check.describe()}, got {show(value)}") from None


def validate_options(owner: str, options: dict, schema: Mapping[str, Check], rules: Iterable[Rule] = ()) -> dict:
    """``options`` with every declared option validated and normalised (undeclared keys pass as given),
    then the cross-option ``rules``; raises :class:`OptionError` (one line) at the first problem."""
    out = dict(options)
    for key, check in schema.items():
        if key in out:
            out[key] = validate_value(owner, key, out[key], check)
    for rule in rules:
        message = rule(out)
        if message:
            raise OptionError(f"{owner}: {message}")
    return out


def check_schema_covers(owner: str, defaults: Mapping[str, Any], schema: Mapping[str, Check]) -> None:
    """A schema must declare exactly the options that have defaults (a programming error otherwise)."""
    undeclared, extra = sorted(set(defaults) - set(schema)), sorted(set(schema) - set(defaults))
    if undeclared or extra:
        raise TypeError(f"{owner}: option_schema must declare every option of defaults; "
                        f"undeclared {undeclared}, declared without a default {extra}")


# -- rules tying options together (declared beside the schema as ``option_rules``) -----------------
def member_of(key: str, list_key: str) -> Rule:
    """``options[key]`` must be one of the list ``options[list_key]`` (``primary_k`` in ``ks``)."""
    def rule(options: dict) -> str | None:
        if options.get(key) is None or options.get(key) in (options.get(list_key) or []):
            return None
        return (f"option '{key}' must be one of {list_key}={show(options.get(list_key))}, got {show(options.get(key))} "
                f"(e.g. -o {key}={show((options.get(list_key) or [''])[-1])})")
    return rule


def not_above(low_key: str, high_key: str) -> Rule:
    """``options[low_key] <= options[high_key]``."""
    def rule(options: dict) -> str | None:
        low, high = options.get(low_key), options.get(high_key)
        if low is None or high is None or low <= high:
            return None
        return f"option '{low_key}' must be <= {high_key}={show(high)}, got {show(low)}"
    return rule


def exactly_one(*keys: str) -> Rule:
    """Exactly one of ``keys`` is set (not null)."""
    def rule(options: dict) -> str | None:
        given = [k for k in keys if options.get(k) is not None]
        if len(given) == 1:
            return None
        shown = ", ".join(f"{k}={show(options.get(k))}" for k in keys)
        hint = f"; e.g. -o {given[0]}=null" if len(given) > 1 else ""
        return f"give exactly one of the options {', '.join(repr(k) for k in keys)} (the others null{hint}), got {shown}"
    return rule


def same_length(*keys: str) -> Rule:
    """The list options ``keys`` have equal lengths."""
    def rule(options: dict) -> str | None:
        lengths = {k: len(options[k]) for k in keys if isinstance(options.get(k), list)}
        if len(set(lengths.values())) <= 1:
            return None
        return f"options {', '.join(repr(k) for k in keys)} need one entry each per position, got lengths {lengths}"
    return rule
