"""The JSON schemas structured outputs take, as the service documents them.

``output_config.format`` (and the older beta ``output_format``) asks for an answer in
JSON valid for a schema. The service compiles that schema into a grammar and takes
only a subset of JSON Schema (the structured-outputs page, "JSON Schema
limitations"); the SDK's ``messages.parse`` already moves what it cannot take into the
description. A schema written by hand can still carry them, and the service refuses
it; this check refuses it first, naming the keyword:

* ``type`` is one of object, array, string, integer, number, boolean, null (or a list
  of them); ``enum`` and ``const`` hold only strings, numbers, booleans or null;
* objects: ``properties``, ``required``; ``additionalProperties`` only ``false``;
  no ``minProperties``/``maxProperties``/``patternProperties``/``propertyNames``;
* arrays: ``items`` and ``minItems`` of 0 or 1 only (no ``maxItems``, ``uniqueItems``,
  ``contains``, ``prefixItems``);
* no numerical constraints (``minimum``, ``maximum``, ``exclusive*``, ``multipleOf``)
  and no string lengths (``minLength``, ``maxLength``); ``format`` one of date-time,
  time, date, duration, email, hostname, uri, ipv4, ipv6, uuid; ``pattern`` without
  backreferences or lookarounds;
* ``$ref`` only to the same document (``#/$defs/...``), and no recursive schema;
* ``anyOf``, ``oneOf``, ``allOf``, ``$defs``/``definitions``, ``description``,
  ``title``, ``default``, ``examples`` as usual; no ``not``, ``if``/``then``/``else``.

Other keywords are let through (the service's list may grow before this one does).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from msgspec import UNSET

__all__ = ("check_output_format", "check_schema")

_TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})
_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid"}
)
_NUMERIC = "numerical constraints are not supported by structured outputs"
_LENGTH = "string length constraints are not supported by structured outputs"
_ARRAY = "array constraints other than minItems 0 or 1 are not supported by structured outputs"
_OBJECT = "is not supported by structured outputs (objects take properties and required)"
_LOGIC = "is not supported by structured outputs (use anyOf / allOf)"
#: keyword -> why the service refuses it
_REFUSED: dict[str, str] = {
    **dict.fromkeys(
        ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"), _NUMERIC
    ),
    **dict.fromkeys(("minLength", "maxLength"), _LENGTH),
    **dict.fromkeys(
        ("maxItems", "uniqueItems", "contains", "minContains", "maxContains", "prefixItems"),
        _ARRAY,
    ),
    **dict.fromkeys(
        (
            "minProperties",
            "maxProperties",
            "patternProperties",
            "propertyNames",
            "dependentRequired",
            "dependentSchemas",
            "unevaluatedProperties",
        ),
        _OBJECT,
    ),
    **dict.fromkeys(("not", "if", "then", "else", "unevaluatedItems"), _LOGIC),
    "$dynamicRef": "is not supported by structured outputs (use $ref)",
}
#: regex constructs the service's grammar cannot take
_BAD_PATTERN = re.compile(r"\\[1-9]|\\k<|\(\?<?[=!]|\\[bB]")


def check_output_format(params: Any) -> str | None:
    """``field.path: rule`` for the first thing wrong with a request's structured
    output format (``output_config.format`` or ``output_format``), or None."""
    config = params.output_config
    given = None
    if config is not UNSET:
        fmt = config.get("format") if isinstance(config, Mapping) else None
        if fmt is not None:
            given = "output_config.format"
            problem = _check_format(fmt, given)
            if problem is not None:
                return problem
    legacy = params.output_format
    if legacy is not UNSET and legacy is not None:
        if given is not None:
            return "output_format: give output_config.format only (output_format is deprecated)"
        return _check_format(legacy, "output_format")
    return None


def _check_format(fmt: object, path: str) -> str | None:
    if not isinstance(fmt, Mapping):
        return f"{path}: must be an object"
    for key in fmt:
        if key not in ("type", "schema"):
            return f"{path}: unknown field `{key}`"
    if fmt.get("type") != "json_schema":
        return f'{path}.type: must be "json_schema"'
    if "schema" not in fmt:
        return f"{path}.schema: required"
    return check_schema(fmt["schema"], f"{path}.schema")


def check_schema(schema: object, path: str) -> str | None:
    """``path.keyword: rule`` for the first keyword of ``schema`` structured outputs
    refuse (the rules in the module docstring), or None."""
    if not isinstance(schema, Mapping):
        return f"{path}: must be a JSON schema object"
    problem = _walk(schema, path)
    if problem is None:
        problem = _recursion(schema, path)
    return problem


def _walk(schema: object, path: str) -> str | None:
    if isinstance(schema, bool):
        return None
    if not isinstance(schema, Mapping):
        return f"{path}: must be a JSON schema object"
    for key, value in schema.items():
        problem = _keyword(key, value, path)
        if problem is not None:
            return problem
    return None


def _keyword(key: str, value: Any, path: str) -> str | None:
    where = f"{path}.{key}"
    reason = _REFUSED.get(key)
    if reason is not None:
        return f"{where}: {key} {reason}" if reason in (_OBJECT, _LOGIC) else f"{where}: {reason}"
    if key == "type":
        kinds = value if isinstance(value, list) else [value]
        bad = [k for k in kinds if k not in _TYPES]
        return f"{where}: unsupported type {bad[0]!r}" if bad else None
    if key in ("enum", "const"):
        values = value if key == "enum" and isinstance(value, list) else [value]
        if key == "enum" and (not isinstance(value, list) or not value):
            return f"{where}: must be a non-empty list"
        if any(isinstance(v, dict | list) for v in values):
            return f"{where}: only strings, numbers, booleans and null are supported"
        return None
    if key == "additionalProperties":
        return None if value is False else f"{where}: must be false for structured outputs"
    if key == "minItems":
        return None if value in (0, 1) and not isinstance(value, bool) else f"{where}: {_ARRAY}"
    if key == "format":
        return None if value in _FORMATS else f"{where}: unsupported string format {value!r}"
    if key == "pattern":
        if not isinstance(value, str) or _BAD_PATTERN.search(value):
            return f"{where}: backreferences, lookarounds and word boundaries are not supported"
        return None
    if key == "$ref":
        if not isinstance(value, str) or not value.startswith("#"):
            return f"{where}: only references within the schema (#/$defs/...) are supported"
        return None
    if key == "required":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"{where}: must be a list of property names"
        return None
    if key in ("properties", "$defs", "definitions"):
        if not isinstance(value, Mapping):
            return f"{where}: must be an object"
        for name, sub in value.items():
            problem = _walk(sub, f"{where}.{name}")
            if problem is not None:
                return problem
        return None
    if key in ("anyOf", "oneOf", "allOf"):
        if not isinstance(value, list) or not value:
            return f"{where}: must be a non-empty list of schemas"
        for i, sub in enumerate(value):
            problem = _walk(sub, f"{where}[{i}]")
            if problem is not None:
                return problem
        return None
    if key == "items":
        return _walk(value, where)
    return None


def _refs(schema: object, found: set[str]) -> set[str]:
    """Every ``$ref`` inside ``schema``."""
    if isinstance(schema, Mapping):
        for key, value in schema.items():
            if key == "$ref" and isinstance(value, str):
                found.add(value)
            else:
                _refs(value, found)
    elif isinstance(schema, list):
        for value in schema:
            _refs(value, found)
    return found


def _recursion(root: Mapping[str, Any], path: str) -> str | None:
    """``path.$defs.X: recursive ...`` when a definition reaches itself through $refs."""
    defs: dict[str, Any] = {}
    for where in ("$defs", "definitions"):
        table = root.get(where)
        if isinstance(table, Mapping):
            defs.update({f"#/{where}/{name}": sub for name, sub in table.items()})
    edges = {ref: _refs(sub, set()) for ref, sub in defs.items()}
    edges["#"] = _refs({k: v for k, v in root.items() if k not in ("$defs", "definitions")}, set())
    for start in edges:
        seen: set[str] = set()
        stack = list(edges[start])
        while stack:
            ref = stack.pop()
            if ref == start or (start == "#" and ref == "#"):
                name = start[2:].replace("/", ".") if start != "#" else ""
                at = f"{path}.{name}" if name else path
                return f"{at}: recursive schemas are not supported by structured outputs"
            if ref not in seen:
                seen.add(ref)
                stack.extend(edges.get(ref, ()))
    return None
