"""frontend-sample/client.d.ts declares every WebSocket frame and SSE event of
realtime/schemas.py (and the objects inside them) with the same fields, the same optional
fields, the same nullability and the same types: a field added to a model and not to the
types a TypeScript app compiles against fails here."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from realtime import schemas
from realtime.asyncapi import document
from tests.harness import ROOT

CLIENT_TYPES = ROOT / "frontend-sample" / "client.d.ts"

Members = frozenset[str]


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", "", text)


def _split_top_level(text: str, separator: str) -> list[str]:
    """`text` split on `separator` outside braces, brackets, parentheses and angle brackets."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "{[(<":
            depth += 1
        elif char in "}])>":
            depth -= 1
        if char == separator and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


class Declarations:
    """The interfaces (property name -> optional, type text) and type aliases of a .d.ts."""

    def __init__(self, text: str) -> None:
        text = _strip_comments(text)
        self.aliases = {
            name: body.strip()
            for name, body in re.findall(r"export type (\w+)\s*=(.*?);", text, re.DOTALL)
        }
        self.interfaces: dict[str, dict[str, tuple[bool, str]]] = {}
        for name, body in re.findall(r"export interface (\w+) \{(.*?)\n\}", text, re.DOTALL):
            properties: dict[str, tuple[bool, str]] = {}
            for member in _split_top_level(body, ";"):
                matched = re.fullmatch(r"(\w+)(\??):\s*(.+)", member, re.DOTALL)
                assert matched, f"{name}: cannot read {member!r}"
                properties[matched[1]] = (matched[2] == "?", " ".join(matched[3].split()))
            self.interfaces[name] = properties

    def members(self, type_text: str) -> Members:
        """The union members of a type, with union aliases expanded."""
        result: set[str] = set()
        for member in _split_top_level(type_text.lstrip("| "), "|"):
            if member in self.aliases:
                result |= self.members(self.aliases[member])
            else:
                result.add(member)
        return frozenset(result)


def schema_members(schema: dict[str, Any]) -> Members:
    """The TypeScript union members a JSON schema (as pydantic writes it) stands for."""
    if "$ref" in schema:
        return frozenset({schema["$ref"].rsplit("/", 1)[1]})
    if "anyOf" in schema:
        return frozenset().union(*(schema_members(option) for option in schema["anyOf"]))
    if "const" in schema:
        return frozenset({json.dumps(schema["const"])})
    if "enum" in schema:
        return frozenset(json.dumps(value) for value in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        (item,) = schema_members(schema["items"])
        return frozenset({f"{item}[]"})
    simple = {
        "string": "string",
        "integer": "number",
        "number": "number",
        "boolean": "boolean",
        "null": "null",
        "object": "Record<string, unknown>",
        None: "unknown",
    }
    return frozenset({simple[kind]})


def _comparable(declared: Members, wanted: Members) -> Members:
    """Where the model says only `string`, a union of string literals in the types is a
    narrower documentation of the same field (`provider: "openai" | "demo"`)."""
    if "string" in wanted and not any(member.startswith('"') for member in wanted):
        return frozenset("string" if member.startswith('"') else member for member in declared)
    return declared


DECLARATIONS = Declarations(CLIENT_TYPES.read_text())
MODEL_SCHEMAS: dict[str, dict[str, Any]] = document()["components"]["schemas"]


def assert_declared_like(name: str, schema: dict[str, Any]) -> None:
    """client.d.ts's interface `name` has the fields of `schema`, each alike."""
    assert name in DECLARATIONS.interfaces, f"client.d.ts has no interface {name}"
    declared = DECLARATIONS.interfaces[name]
    required = set(schema.get("required", ()))

    assert set(declared) == set(schema["properties"]), name
    for field, field_schema in schema["properties"].items():
        optional, type_text = declared[field]
        assert optional == (field not in required), f"{name}.{field}: optional is {optional}"
        wanted = schema_members(field_schema)
        got = _comparable(DECLARATIONS.members(type_text), wanted)
        if optional and "null" not in got and field_schema.get("default", ...) is None:
            # Absent when there is none (api.schemas excludes None on output): `x?: T`.
            wanted -= {"null"}
        assert got == wanted, f"{name}.{field}: {type_text} is not {sorted(wanted)}"


@pytest.mark.parametrize("name", sorted(MODEL_SCHEMAS))
def test_client_types_declare_the_model_field_by_field(name: str) -> None:
    assert_declared_like(name, MODEL_SCHEMAS[name])


@pytest.mark.parametrize(
    ("union", "models"),
    [
        ("StreamEvent", schemas.EVENT_MODELS),
        ("ServerFrame", schemas.SERVER_FRAME_MODELS),
        ("ClientFrame", schemas.CLIENT_FRAME_MODELS),
    ],
)
def test_client_unions_list_every_frame(union: str, models: tuple[type[Any], ...]) -> None:
    assert DECLARATIONS.members(DECLARATIONS.aliases[union]) == {m.__name__ for m in models}


def _changed(name: str, field: str, field_schema: dict[str, Any] | None) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(json.dumps(MODEL_SCHEMAS[name]))
    if field_schema is None:
        del schema["properties"][field]
        schema["required"] = [other for other in schema["required"] if other != field]
    else:
        schema["properties"][field] = field_schema
        schema["required"].append(field)
    return schema


@pytest.mark.parametrize(
    ("name", "field", "field_schema"),
    [
        ("DeltaEvent", "attempt", {"type": "integer"}),  # a field the types lack
        ("DoneEvent", "usage", None),  # a field the model lost
        ("DeltaEvent", "seq", {"type": "string"}),  # another type
        ("SnapshotEvent", "status", {"enum": ["queued", "running"]}),  # other literals
        ("ErrorFrame", "id", {"type": "string"}),  # required, not optional
        ("Generation", "system", {"type": "string"}),  # no longer nullable
    ],
)
def test_a_model_that_drifts_from_the_types_is_caught(
    name: str, field: str, field_schema: dict[str, Any] | None
) -> None:
    with pytest.raises(AssertionError):
        assert_declared_like(name, _changed(name, field, field_schema))
