"""Structured outputs and forced tool input through the official SDK, unmodified, over
a real loopback server: every answer is parsed by the SDK (``messages.parse``) and
also checked by an independent JSON Schema validator (``jsonschema``) against the
schema the user wrote, constraints included (the SDK moves those into descriptions,
and the fake model follows them there as a model would)."""

from __future__ import annotations

import datetime as dt  # noqa: TC003 - pydantic reads the annotations at run time
import enum
import uuid  # noqa: TC003 - pydantic reads the annotations at run time
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anthropic
import jsonschema
import pydantic
import pytest
from pydantic import BaseModel, Field

from pipeline.testing import EmulatorConfig, ManualClock, serve_emulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from pipeline.testing import EmulatorHandle

MODEL = "claude-sonnet-4-6"
KEY = "sk-ant-structured-key"
PROMPTS = ("Extract the record.", "Describe the second case, please.")


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[EmulatorHandle]:
    config = EmulatorConfig(batch_seconds=10.0, clock=ManualClock())
    async with serve_emulator(config, data_dir=tmp_path) as handle:
        yield handle


@pytest.fixture
async def sdk(emu: EmulatorHandle) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(api_key=KEY, base_url=emu.url, max_retries=0) as client:
        yield client


# ------------------------------------------------------------ schemas, easy to hard


class Color(enum.StrEnum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Name(BaseModel):
    name: str


class Scalars(BaseModel):
    count: int
    ratio: float
    done: bool


class WithOptional(BaseModel):
    title: str
    subtitle: str | None = None
    pages: int | None = None


class WithLiteral(BaseModel):
    mood: Literal["happy", "sad", "neutral"]
    kind: Literal["fixed"]


class WithEnum(BaseModel):
    color: Color
    colors: list[Color]


class Tags(BaseModel):
    tags: list[str]
    scores: list[float]


class Address(BaseModel):
    street: str
    city: str
    zip_code: str


class Person(BaseModel):
    name: str
    home: Address
    work: Address | None = None


class Order(BaseModel):
    id: uuid.UUID
    lines: Annotated[list[Address], Field(min_length=1)]


class Dates(BaseModel):
    created: dt.datetime
    day: dt.date
    at: dt.time


class Contact(BaseModel):
    email: Annotated[str, Field(json_schema_extra={"format": "email"})]
    site: pydantic.AnyUrl
    host: Annotated[str, Field(json_schema_extra={"format": "hostname"})]
    ip: pydantic.IPvAnyAddress


class Bounded(BaseModel):
    stars: Annotated[int, Field(ge=1, le=5)]
    chance: Annotated[float, Field(gt=0, lt=1)]
    temp: Annotated[float, Field(ge=-40.5, le=-10.25)]


class Multiples(BaseModel):
    step: Annotated[int, Field(multiple_of=7, ge=30, le=100)]
    quarter: Annotated[float, Field(multiple_of=0.25, ge=2)]
    negative: Annotated[int, Field(lt=-1000)]


class Lengths(BaseModel):
    code: Annotated[str, Field(min_length=12, max_length=14)]
    short: Annotated[str, Field(max_length=2)]


class Patterned(BaseModel):
    ticket: Annotated[str, Field(pattern=r"^[A-Z]{3}-\d{4}$")]
    slug: Annotated[str, Field(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")]


class Sized(BaseModel):
    pair: Annotated[list[int], Field(min_length=2, max_length=2)]
    some: Annotated[list[str], Field(min_length=3, max_length=5)]
    none: Annotated[list[str], Field(max_length=0)]


class Either(BaseModel):
    value: int | str
    maybe: int | Name | None


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: Annotated[int, Field(ge=1, le=9)]


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Pet(BaseModel):
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]
    others: list[Annotated[Cat | Dog, Field(discriminator="kind")]]


class Mapping_(BaseModel):
    counts: dict[str, int]
    meta: dict[str, str] | None = None


class Team(BaseModel):
    lead: Person
    members: Annotated[list[Person], Field(min_length=1, max_length=3)]
    pets: list[Pet]


class Everything(BaseModel):
    id: uuid.UUID
    when: dt.datetime
    team: Team
    color: Color
    stars: Annotated[int, Field(ge=1, le=5)]
    code: Annotated[str, Field(pattern=r"^[A-Z]{2}\d{2}$")]
    notes: list[Either] = []
    extra: Mapping_ | None = None


SCHEMAS: list[Any] = [
    Name,
    Scalars,
    WithOptional,
    WithLiteral,
    WithEnum,
    Tags,
    Address,
    Person,
    Order,
    Dates,
    Contact,
    Bounded,
    Multiples,
    Lengths,
    Patterned,
    Sized,
    Either,
    Pet,
    Mapping_,
    Team,
    Everything,
    list[Person],  # a root that is not an object
]


def schema_of(kind: Any) -> dict[str, Any]:
    """The JSON schema the user wrote (pydantic's, constraints included)."""
    return pydantic.TypeAdapter(kind).json_schema()


def valid(value: Any, schema: dict[str, Any]) -> None:
    """Raise unless ``value`` is valid for ``schema``, formats included (each draft's own
    format checks: the draft-3 ``time`` differs)."""
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    cls(schema, format_checker=cls.FORMAT_CHECKER).validate(value)


@pytest.mark.parametrize("kind", SCHEMAS, ids=lambda k: getattr(k, "__name__", str(k)))
async def test_parse_returns_a_valid_object(sdk: anthropic.AsyncAnthropic, kind: Any) -> None:
    answers = []
    for prompt in PROMPTS:
        message = await sdk.messages.parse(
            model=MODEL,
            max_tokens=4096,
            messages=[{"role": "user", "content": prompt}],
            output_format=kind,
        )
        assert message.stop_reason == "end_turn"
        parsed = message.parsed_output
        assert parsed is not None
        assert pydantic.TypeAdapter(kind).validate_python(parsed) is not None
        data = pydantic.TypeAdapter(Any).validate_json(message.content[0].text)
        valid(data, schema_of(kind))
        answers.append(message.content[0].text)
    again = await sdk.messages.parse(
        model=MODEL,
        max_tokens=4096,
        messages=[{"role": "user", "content": PROMPTS[0]}],
        output_format=kind,
    )
    assert again.content[0].text == answers[0]  # deterministic


async def test_optional_fields_are_filled_near_the_root(sdk: anthropic.AsyncAnthropic) -> None:
    message = await sdk.messages.parse(
        model=MODEL,
        max_tokens=2048,
        messages=[{"role": "user", "content": "x"}],
        output_format=Person,
    )
    assert message.parsed_output is not None
    assert message.parsed_output.work is not None or "work" in message.content[0].text


async def test_a_short_max_tokens_cuts_the_json(sdk: anthropic.AsyncAnthropic) -> None:
    message = await sdk.messages.create(
        model=MODEL,
        max_tokens=3,
        messages=[{"role": "user", "content": "x"}],
        output_config={
            "format": {"type": "json_schema", "schema": anthropic.transform_schema(Everything)}
        },
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3
    assert len(message.content[0].text) <= 12


HAND_WRITTEN: list[tuple[dict[str, Any], str]] = [
    (
        {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}},
        "output_config.format.schema.properties.n.minimum: numerical constraints",
    ),
    (
        {"type": "object", "properties": {"s": {"type": "string", "maxLength": 3}}},
        "output_config.format.schema.properties.s.maxLength: string length",
    ),
    (
        {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "output_config.format.schema.minItems: array constraints",
    ),
    (
        {"type": "object", "additionalProperties": {"type": "string"}},
        "output_config.format.schema.additionalProperties: must be false",
    ),
    (
        {"type": "string", "format": "credit-card"},
        "output_config.format.schema.format: unsupported string format",
    ),
    (
        {"type": "object", "properties": {"a": {"enum": [{"x": 1}]}}},
        "output_config.format.schema.properties.a.enum: only strings",
    ),
    (
        {"$ref": "https://example.com/schema.json"},
        "output_config.format.schema.$ref: only references within the schema",
    ),
    (
        {"type": "object", "not": {"type": "null"}},
        "output_config.format.schema.not: not is not supported",
    ),
    (
        {
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {"next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}},
                }
            },
            "$ref": "#/$defs/Node",
        },
        "output_config.format.schema.$defs.Node: recursive schemas are not supported",
    ),
    ({"type": "date"}, "output_config.format.schema.type: unsupported type 'date'"),
]


@pytest.mark.parametrize(("schema", "reason"), HAND_WRITTEN)
async def test_a_schema_the_service_refuses_is_refused(
    sdk: anthropic.AsyncAnthropic, schema: dict[str, Any], reason: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await sdk.messages.create(
            model=MODEL,
            max_tokens=64,
            messages=[{"role": "user", "content": "x"}],
            output_config={"format": {"type": "json_schema", "schema": schema}},
        )
    assert reason in str(caught.value)


async def test_a_strict_tool_takes_the_structured_outputs_schema_rules(
    sdk: anthropic.AsyncAnthropic,
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 3}}}
    tool: dict[str, Any] = {"name": "record", "input_schema": schema}
    for strict, refused in ((True, True), (False, False)):
        call = sdk.messages.create(
            model=MODEL,
            max_tokens=256,
            messages=[{"role": "user", "content": "x"}],
            tools=[{**tool, "strict": strict}],  # type: ignore[list-item]
            tool_choice={"type": "any"},
        )
        if refused:
            with pytest.raises(anthropic.BadRequestError, match=r"tools\[0\]\.input_schema\."):
                await call
        else:
            valid((await call).content[0].input, schema)  # type: ignore[union-attr]


async def test_the_beta_output_format_field_is_served(sdk: anthropic.AsyncAnthropic) -> None:
    message = await sdk.messages.create(
        model=MODEL,
        max_tokens=1024,
        messages=[{"role": "user", "content": "x"}],
        extra_body={"output_format": {"type": "json_schema", "schema": schema_of(Address)}},
    )
    Address.model_validate_json(message.content[0].text)


class Tree(BaseModel):
    label: str
    children: list[Tree] = []
    parent: Tree | None = None


#: a tool's input_schema is an object at its root: the tree is a property
TREE = {
    "type": "object",
    "properties": {"tree": {"$ref": "#/$defs/Tree"}},
    "required": ["tree"],
    "$defs": schema_of(Tree)["$defs"],
}
TOOL_SCHEMAS: list[dict[str, Any]] = [
    schema_of(Bounded),
    schema_of(Multiples),
    schema_of(Lengths),
    schema_of(Patterned),
    schema_of(Sized),
    schema_of(Pet),
    schema_of(Everything),
    TREE,  # recursive: tool input schemas may be
    {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {"type": "integer"},
                "uniqueItems": True,
                "minItems": 3,
            },
            "point": {"type": "array", "prefixItems": [{"type": "number"}, {"type": "string"}]},
            "num": {"type": "number", "exclusiveMinimum": 5, "exclusiveMaximum": 6},
            "all": {"allOf": [{"$ref": "#/$defs/A"}, {"required": ["b"]}]},
            "open": {"type": "object", "minProperties": 2},
        },
        "required": ["items", "point", "num", "all", "open"],
        "$defs": {
            "A": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
                "required": ["a"],
            }
        },
    },
]


@pytest.mark.parametrize("schema", TOOL_SCHEMAS)
@pytest.mark.parametrize("choice", [{"type": "tool", "name": "record"}, {"type": "any"}])
async def test_forced_tool_input_is_valid(
    sdk: anthropic.AsyncAnthropic, schema: dict[str, Any], choice: dict[str, Any]
) -> None:
    message = await sdk.messages.create(
        model=MODEL,
        max_tokens=4096,
        messages=[{"role": "user", "content": "fill it in"}],
        tools=[{"name": "record", "input_schema": schema}],
        tool_choice=choice,  # type: ignore[arg-type]
    )
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use"
    valid(block.input, schema)


async def test_batch_results_of_structured_requests_are_valid(
    emu: EmulatorHandle, sdk: anthropic.AsyncAnthropic
) -> None:
    kinds = {"team": Team, "pet": Pet, "bounded": Bounded, "everything": Everything}
    requests: list[Any] = [
        {
            "custom_id": name,
            "params": {
                "model": MODEL,
                "max_tokens": 4096,
                "messages": [{"role": "user", "content": f"the {name}"}],
                "output_config": {
                    "format": {"type": "json_schema", "schema": anthropic.transform_schema(kind)}
                },
            },
        }
        for name, kind in kinds.items()
    ]
    requests.append(
        {
            "custom_id": "tool",
            "params": {
                "model": MODEL,
                "max_tokens": 4096,
                "messages": [{"role": "user", "content": "tool"}],
                "tools": [{"name": "record", "input_schema": TREE}],
                "tool_choice": {"type": "tool", "name": "record"},
            },
        }
    )
    requests.append(
        {
            "custom_id": "refused",
            "params": {
                **requests[0]["params"],
                "output_config": {"format": {"type": "json_schema", "schema": schema_of(Bounded)}},
            },
        }
    )
    batch = await sdk.messages.batches.create(requests=requests)
    emu.advance(11)
    assert (await sdk.messages.batches.retrieve(batch.id)).processing_status == "ended"
    seen = set()
    async for line in await sdk.messages.batches.results(batch.id):
        seen.add(line.custom_id)
        if line.custom_id == "refused":
            assert line.result.type == "errored"
            assert "numerical constraints" in line.result.error.error.message
            continue
        assert line.result.type == "succeeded"
        block = line.result.message.content[0]
        if line.custom_id == "tool":
            assert block.type == "tool_use"
            valid(block.input, TREE)
            continue
        assert block.type == "text"
        kind = kinds[line.custom_id]
        valid(pydantic.TypeAdapter(Any).validate_json(block.text), schema_of(kind))
        kind.model_validate_json(block.text)
    assert seen == {*kinds, "tool", "refused"}
