"""Answers that follow a JSON schema: the fake model's structured outputs and tool inputs.

``instance(schema, seed)`` builds a deterministic JSON value that validates against
``schema`` (a JSON Schema, draft 2020-12 as the service reads it): objects with their
required properties (and the optional ones near the root), arrays within
``minItems``/``maxItems``, ``enum``/``const``, strings with a ``format`` (date-time,
date, time, duration, email, hostname, uri, ipv4, ipv6, uuid), a ``pattern`` or
length bounds, numbers and integers within ``minimum``/``maximum`` (exclusive too) and
on a ``multipleOf``, ``anyOf``/``oneOf``/``allOf``, ``type`` lists (nullable), and
local ``$ref``s into ``$defs``/``definitions`` (recursive ones too: past a depth
bound the value takes the shortest way out, e.g. ``null`` or an empty list).

The SDK's ``messages.parse`` moves the keywords structured outputs do not take
(bounds, lengths, ``minItems`` above 1...) into the ``description`` as
``{minimum: 1, maximum: 10}``, so that the model may still follow them; this model
does too, so the parsed pydantic object passes its own constraints.

``seed`` (a hash of the prompt) picks among enum members, branches and words, so
different prompts get different, and the same prompt the same, answers.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any

__all__ = ("MAX_DEPTH", "instance", "output_schema")

#: Nesting below which optional properties and one array item are filled in; past it,
#: only what the schema requires (the way out of a recursive schema).
MAX_DEPTH = 4
#: Values built before the generator falls back to the minimal value everywhere (a
#: schema with many wide nested objects stays a small answer).
_BUDGET = 400
#: Past this nesting a required recursion cannot end: give up with a plain value.
_HARD_DEPTH = 48
_WORDS = (
    "alpha bravo cobalt delta ember fjord glacier harbor indigo juniper kelp lantern "
    "meadow nectar orchid pebble quartz river saffron timber umber violet willow"
).split()
_FORMATS: dict[str, str] = {
    "date-time": "2024-05-17T09:30:00Z",
    "date": "2024-05-17",
    "time": "09:30:00Z",
    "duration": "P3DT4H",
    "email": "{w}@example.com",
    "idn-email": "{w}@example.com",
    "hostname": "{w}.example.com",
    "idn-hostname": "{w}.example.com",
    "uri": "https://example.com/{w}",
    "iri": "https://example.com/{w}",
    "uri-reference": "/{w}",
    "iri-reference": "/{w}",
    "ipv4": "192.0.2.17",
    "ipv6": "2001:db8::17",
    # pydantic's own (the SDK moves them into the description)
    "ipvanyaddress": "192.0.2.17",
    "ipvanyinterface": "192.0.2.17/24",
    "ipvanynetwork": "192.0.2.0/24",
    "json-pointer": "/{w}",
    "regex": "^{w}$",
}
#: the SDK's "{key: value, ...}" description suffix: the keys it moves there
_HINT_KEYS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "format",
    "const",  # SDKs before 2.17 moved it there too
)
_HINT = re.compile(r"(?:(?<=\{)|(?<=, ))(" + "|".join(_HINT_KEYS) + r"): ")


def output_schema(params: Any) -> dict[str, Any] | None:
    """The JSON schema a request asks its answer to follow (``output_config.format``,
    or the older beta ``output_format``), or None for a plain answer."""
    config = params.output_config
    fmt: object = None
    if isinstance(config, dict):
        fmt = config.get("format")
    if fmt is None and isinstance(params.output_format, dict):
        fmt = params.output_format
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = fmt.get("schema")
        if isinstance(schema, dict):
            return schema
    return None


def instance(schema: Mapping[str, Any], seed: int) -> Any:
    """A JSON value valid for ``schema``, the same for the same ``(schema, seed)``."""
    return _Generator(schema, seed).value(schema, 0)


class _Generator:
    __slots__ = ("budget", "root", "seed")

    def __init__(self, root: Mapping[str, Any], seed: int) -> None:
        self.root = root
        self.seed = seed
        self.budget = _BUDGET

    def pick(self, n: int, salt: int) -> int:
        """A deterministic index in ``range(n)`` (n > 0) for this seed and place."""
        return hash((self.seed, salt)) % n  # a tuple of ints hashes the same every run

    def word(self, salt: int) -> str:
        return _WORDS[self.pick(len(_WORDS), salt)]

    def resolve(self, ref: str) -> Any:
        """The local schema a ``$ref`` points at (``#``, ``#/$defs/X``, any pointer)."""
        if not ref.startswith("#"):
            return {}
        node: Any = self.root
        for part in ref[1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping):
                node = node.get(part, {})
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return {}
        return node

    def value(self, schema: Any, depth: int) -> Any:
        if schema is True or not isinstance(schema, Mapping):
            return self.word(depth)
        self.budget -= 1
        deep = depth >= MAX_DEPTH or self.budget <= 0
        if depth > _HARD_DEPTH:
            return None
        schema = _with_hints(schema)
        if "$ref" in schema:
            target = self.resolve(schema["$ref"])
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            merged = _merge(target, rest) if rest and isinstance(target, Mapping) else target
            return self.value(merged, depth + 1)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[0] if deep else enum[self.pick(len(enum), self.budget)]
        if isinstance(schema.get("allOf"), list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                if isinstance(part, Mapping) and "$ref" in part:
                    part = self.resolve(part["$ref"])
                merged = _merge(merged, part) if isinstance(part, Mapping) else merged
            return self.value(merged, depth)
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                rest = {k: v for k, v in schema.items() if k != key}
                chosen = self.branch(branches, deep, self.budget)
                return self.value(_merge(rest, chosen) if rest else chosen, depth)
        # the budget left numbers the values: siblings differ
        return self.typed(schema, _kind(schema, deep, self.pick(7, self.budget)), depth, deep)

    def branch(self, branches: list[Any], deep: bool, salt: int) -> Any:
        """A branch of an ``anyOf``: any at the top, the shortest way out when deep."""
        if not deep:
            return branches[self.pick(len(branches), salt)]
        return min(branches, key=_weight)

    def typed(self, schema: Mapping[str, Any], kind: str, depth: int, deep: bool) -> Any:
        if kind == "object":
            return self.object(schema, depth, deep)
        if kind == "array":
            return self.array(schema, depth, deep)
        salt = self.budget
        if kind == "string":
            return self.string(schema, salt)
        if kind == "integer":
            return _integer(schema, self.pick(97, salt))
        if kind == "number":
            return _number(schema, self.pick(97, salt))
        if kind == "boolean":
            return self.pick(2, salt) == 0
        return None

    def object(self, schema: Mapping[str, Any], depth: int, deep: bool) -> dict[str, Any]:
        props = schema.get("properties")
        props = props if isinstance(props, Mapping) else {}
        required = [r for r in schema.get("required") or () if isinstance(r, str)]
        extra = schema.get("additionalProperties", True)
        out: dict[str, Any] = {}
        for name in required:
            sub = props.get(name, extra if isinstance(extra, Mapping) else {})
            out[name] = self.value(sub, depth + 1)
        if not deep:
            for name, sub in props.items():
                if name not in out:
                    out[name] = self.value(sub, depth + 1)
        minimum = schema.get("minProperties")
        if isinstance(minimum, int) and extra is not False:
            sub = extra if isinstance(extra, Mapping) else {}
            for i in range(len(out), minimum):
                out[f"{self.word(i)}_{i}"] = self.value(sub, depth + 1)
        maximum = schema.get("maxProperties")
        if isinstance(maximum, int) and len(out) > maximum:
            keep = set(required)
            for name in [n for n in out if n not in keep][: len(out) - maximum]:
                del out[name]
        return out

    def array(self, schema: Mapping[str, Any], depth: int, deep: bool) -> list[Any]:
        low = schema.get("minItems", 0)
        high = schema.get("maxItems")
        count = low if deep else max(low, 1)
        if isinstance(high, int):
            count = min(count, high)
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items", {})
        count = max(count, len(prefix)) if prefix and not deep else count
        out = [self.value(prefix[i] if i < len(prefix) else items, depth + 1) for i in range(count)]
        if schema.get("uniqueItems") and len(out) > 1:
            out = _unique(out, schema, self, depth)
        return out

    def string(self, schema: Mapping[str, Any], salt: int) -> str:
        w = self.word(salt)
        fmt = schema.get("format")
        if fmt == "uuid":
            return str(uuid.UUID(bytes=hashlib.md5(f"{self.seed}:{salt}".encode()).digest()))
        if isinstance(fmt, str) and fmt in _FORMATS:
            return _FORMATS[fmt].format(w=w)
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            made = _from_pattern(pattern, self.seed + salt)
            if made is not None:
                fitted = _fit(made, schema, w)
                return fitted if re.search(pattern, fitted) else made
        return _fit(" ".join(self.word(salt + i) for i in range(1 + self.pick(3, salt))), schema, w)


def _with_hints(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """``schema`` with the keywords its description carries as the SDK writes them
    (``"... {minimum: 1, maximum: 10}"``), where the schema itself does not have them."""
    description = schema.get("description")
    if not isinstance(description, str) or not description.endswith("}"):
        return schema
    matches = list(_HINT.finditer(description))
    if not matches:
        return schema
    hints: dict[str, Any] = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() - 2 if i + 1 < len(matches) else len(description) - 1
        hints[match.group(1)] = _hint_value(match.group(1), description[match.end() : end])
    added = {k: v for k, v in hints.items() if k not in schema and (v is not None or k == "const")}
    return {**schema, **added} if added else schema


def _hint_value(key: str, text: str) -> Any:
    if key in ("pattern", "format"):
        return text
    if key == "const":
        python = {"True": True, "False": False, "None": None}
        if text in python:
            return python[text]
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() and "." not in text else number
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else number


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Two schemas that must both hold, as one (enough for the usual ``allOf``)."""
    out = dict(a)
    for key, value in b.items():
        if key == "properties" and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        elif key == "required" and isinstance(out.get(key), list):
            out[key] = list(dict.fromkeys([*out[key], *value]))
        else:
            out[key] = value
    return out


def _weight(schema: Any) -> int:
    """How far a branch is from ending: null first, then scalars, then references."""
    if not isinstance(schema, Mapping):
        return 3
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return 0
    if "$ref" in schema:
        return 4
    if kind in ("object", "array"):
        return 2
    return 1


def _kind(schema: Mapping[str, Any], deep: bool, salt: int) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if isinstance(k, str)]
        if not kinds:
            return "null"
        if deep and "null" in kinds:
            return "null"
        real = [k for k in kinds if k != "null"] or kinds
        return real[salt % len(real)]
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    if any(k in schema for k in ("minimum", "maximum", "multipleOf", "exclusiveMinimum")):
        return "number"
    return "string"


def _integer(schema: Mapping[str, Any], salt: int) -> int:
    low, high = _bounds(schema, integer=True)
    step = schema.get("multipleOf")
    start = low if low is not None else (high - 100 if high is not None else 0)
    stop = high if high is not None else start + 100
    if stop < start:
        stop = start
    value = start + salt % (int(stop - start) + 1)
    if isinstance(step, int | float) and step > 0:
        multiple = math.ceil(value / step) * step
        if multiple > stop:
            multiple = math.ceil(start / step) * step
        return int(multiple)
    return int(value)


def _number(schema: Mapping[str, Any], salt: int) -> int | float:
    low, high = _bounds(schema, integer=False)
    step = schema.get("multipleOf")
    if isinstance(step, int | float) and step > 0:
        value = (math.ceil(low / step) if low is not None else 1) * step
        return int(value) if float(value).is_integer() else float(value)
    if low is not None and high is not None:
        return float((low + high) / 2)
    if low is not None:
        return float(low + 1.5)
    if high is not None:
        return float(high - 1.5)
    return salt + 0.5


def _bounds(schema: Mapping[str, Any], *, integer: bool) -> tuple[Any, Any]:
    """(lowest, highest) value allowed, exclusive bounds moved inside; None if open."""
    low = schema.get("minimum")
    high = schema.get("maximum")
    ex_low = schema.get("exclusiveMinimum")
    ex_high = schema.get("exclusiveMaximum")
    if isinstance(ex_low, int | float) and not isinstance(ex_low, bool):
        inside = math.floor(ex_low) + 1 if integer else ex_low + _gap(ex_low, ex_high)
        low = inside if low is None else max(low, inside)
    if isinstance(ex_high, int | float) and not isinstance(ex_high, bool):
        inside = math.ceil(ex_high) - 1 if integer else ex_high - _gap(ex_low, ex_high)
        high = inside if high is None else min(high, inside)
    if integer:
        low = math.ceil(low) if isinstance(low, int | float) else None
        high = math.floor(high) if isinstance(high, int | float) else None
    return low, high


def _gap(low: Any, high: Any) -> float:
    if isinstance(low, int | float) and isinstance(high, int | float) and high > low:
        return (high - low) / 4
    return 0.5


def _fit(text: str, schema: Mapping[str, Any], word: str) -> str:
    """``text`` padded with words or cut to the schema's length bounds."""
    low = schema.get("minLength", 0)
    high = schema.get("maxLength")
    while isinstance(low, int) and len(text) < low:
        text += " " + word
    if isinstance(high, int) and len(text) > high:
        text = text[:high]
    return text


def _unique(values: list[Any], schema: Mapping[str, Any], gen: _Generator, depth: int) -> list[Any]:
    out: list[Any] = []
    for i, value in enumerate(values):
        tries = 0
        while value in out and tries < 8:
            tries += 1
            gen.seed += 7919
            value = gen.value(schema.get("items", {}), depth + 1 + i)
        out.append(value)
    return out


# -------------------------------------------------------------------- patterns


def _from_pattern(pattern: str, seed: int) -> str | None:
    """A string the regex ``pattern`` matches (``re.search``), or None when this
    simple generator cannot make one (backreferences, lookarounds...)."""
    try:
        from re import _parser  # type: ignore[attr-defined]

        tree = _parser.parse(pattern)
        text = _emit(tree, seed, _parser)
    except Exception:
        return None
    try:
        return text if re.search(pattern, text) else None
    except re.error:
        return None


def _emit(items: Any, seed: int, p: Any) -> str:
    out: list[str] = []
    for op, arg in items:
        if op is p.LITERAL:
            out.append(chr(arg))
        elif op is p.ANY:
            out.append("a")
        elif op is p.IN:
            out.append(_class_char(arg, p))
        elif op in (p.MAX_REPEAT, p.MIN_REPEAT, getattr(p, "POSSESSIVE_REPEAT", None)):
            low, high, sub = arg
            count = low if low > 0 else min(1, high)
            out.extend(_emit(sub, seed + i, p) for i in range(count))
        elif op is p.SUBPATTERN:
            out.append(_emit(arg[-1], seed, p))
        elif op is p.BRANCH:
            branches = arg[1]
            out.append(_emit(branches[seed % len(branches)], seed, p))
        elif op is p.AT:
            continue
        elif op is p.CATEGORY:
            out.append(_category_char(arg, p))
        else:
            raise ValueError(f"unsupported regex construct {op}")
    return "".join(out)


def _class_char(items: Any, p: Any) -> str:
    negate = any(op is p.NEGATE for op, _ in items)
    if negate:
        banned = set()
        for op, arg in items:
            if op is p.LITERAL:
                banned.add(chr(arg))
        return next(c for c in "abcxyz0" if c not in banned)
    op, arg = items[0]
    if op is p.LITERAL:
        return chr(arg)
    if op is p.RANGE:
        return chr(arg[0])
    if op is p.CATEGORY:
        return _category_char(arg, p)
    raise ValueError(f"unsupported class {op}")


def _category_char(category: Any, p: Any) -> str:
    chars = {
        p.CATEGORY_DIGIT: "7",
        p.CATEGORY_NOT_DIGIT: "a",
        p.CATEGORY_SPACE: " ",
        p.CATEGORY_NOT_SPACE: "a",
        p.CATEGORY_WORD: "a",
        p.CATEGORY_NOT_WORD: "-",
    }
    return chars[category]
