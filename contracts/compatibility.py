"""Backward-compatibility check between two JSON Schemas of one event within a major version.

Breaking: a field removed, a field's type changed or narrowed (including enum values removed), a field
made newly required. Adding an optional field, widening a type, or adding enum values is compatible.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def breaking_changes(old: Schema, new: Schema) -> list[str]:
    problems: list[str] = []
    _compare(old, new, old.get("$defs", {}), new.get("$defs", {}), "", problems)
    return problems


def _resolve(schema: Schema, defs: dict[str, Schema]) -> Schema:
    while "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _variants(schema: Schema, defs: dict[str, Schema]) -> list[Schema]:
    schema = _resolve(schema, defs)
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            return [v for option in schema[combinator] for v in _variants(option, defs)]
    return [schema]


def _kinds(schema: Schema) -> set[str]:
    if "const" in schema:
        return {f"const:{schema['const']!r}"}
    if "enum" in schema:
        return {f"const:{value!r}" for value in schema["enum"]}
    kind = schema.get("type")
    if kind is None:
        return {"any"}
    return set(kind) if isinstance(kind, list) else {kind}


def _accepts(new_kinds: set[str], old_kind: str) -> bool:
    if "any" in new_kinds or old_kind in new_kinds:
        return True
    # An integer is a valid number, so number accepts what integer did.
    if old_kind == "integer" and "number" in new_kinds:
        return True
    if old_kind.startswith("const:"):
        # A literal value stays accepted if the new schema takes the whole primitive type.
        return any(kind in {"string", "integer", "number", "boolean"} for kind in new_kinds)
    return False


def _compare(
    old: Schema,
    new: Schema,
    old_defs: dict[str, Schema],
    new_defs: dict[str, Schema],
    path: str,
    out: list[str],
) -> None:
    old_variants = _variants(old, old_defs)
    new_variants = _variants(new, new_defs)
    new_kinds = set().union(*(_kinds(v) for v in new_variants))
    where = path or "<root>"
    for old_variant in old_variants:
        for kind in _kinds(old_variant):
            if not _accepts(new_kinds, kind):
                out.append(f"{where}: type changed, {kind} no longer accepted (now {sorted(new_kinds)})")
    old_objects = [v for v in old_variants if v.get("type") == "object"]
    new_objects = [v for v in new_variants if v.get("type") == "object"]
    if old_objects and new_objects:
        _compare_objects(old_objects[0], new_objects[0], old_defs, new_defs, path, out)
    old_arrays = [v for v in old_variants if v.get("type") == "array" and "items" in v]
    new_arrays = [v for v in new_variants if v.get("type") == "array" and "items" in v]
    if old_arrays and new_arrays:
        _compare(old_arrays[0]["items"], new_arrays[0]["items"], old_defs, new_defs, f"{path}[]", out)


def _compare_objects(
    old: Schema,
    new: Schema,
    old_defs: dict[str, Schema],
    new_defs: dict[str, Schema],
    path: str,
    out: list[str],
) -> None:
    old_props: dict[str, Schema] = old.get("properties", {})
    new_props: dict[str, Schema] = new.get("properties", {})
    for name, old_prop in old_props.items():
        field = f"{path}.{name}" if path else name
        if name not in new_props:
            out.append(f"{field}: field removed")
            continue
        _compare(old_prop, new_props[name], old_defs, new_defs, field, out)
    newly_required = set(new.get("required", [])) - set(old.get("required", []))
    for name in sorted(newly_required):
        field = f"{path}.{name}" if path else name
        out.append(f"{field}: field is newly required")
    old_extra = old.get("additionalProperties", True)
    if isinstance(old_extra, dict) and isinstance(new.get("additionalProperties"), dict):
        _compare(old_extra, new["additionalProperties"], old_defs, new_defs, f"{path}{{}}", out)
