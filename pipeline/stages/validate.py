"""Validate (the local part): each input line decoded once, checked against the wire
schema, and passed on as its exact original bytes, or turned into a reject.

Rejected here: malformed JSON and a line nested deeper than
``pipeline.api._schema.MAX_JSON_DEPTH`` levels (``invalid_json``), a missing or malformed custom_id
(``invalid_custom_id``), a line that is not a JSON object, params that fail the schema
(``pipeline.api._schema.check_entry``) and an entry an iterable source could not
encode (``invalid_request_error``), an entry too large for any batch
(``request_too_large``). Duplicate custom_ids are found by the ledger when a batch is
claimed (on disk, so no set grows with the job). Blank lines are skipped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec

from .._config import DEFAULT_MAX_BATCH_BYTES
from .._pricing import DEFAULT_PRICES, PriceTable, cache_write_factor
from ..api._schema import (
    DEFAULT_MODELS,
    TOO_DEEP,
    Checked,
    SchemaError,
    check_entry,
    reshaped,
    without_fields,
)
from ._items import Entry, Flush, RawLine, Reject, RejectError
from ._protocol import ENVELOPE_BYTES
from .source import oversize_reason, unencodable_reason

if TYPE_CHECKING:
    from anyio.abc import ObjectReceiveStream, ObjectSendStream

    from .._config import PipelineConfig
    from ._protocol import JobCounters

__all__ = ("REJECT_TYPES", "Validator", "validate")

#: The error types a reject from this stage can have.
REJECT_TYPES = ("invalid_json", "invalid_custom_id", "invalid_request_error", "request_too_large")

logger = logging.getLogger("pipeline.validate")
_any_decoder = msgspec.json.Decoder()
_MILLION = 1_000_000


class Validator:
    """Sync and I/O-free: ``check(lines)`` turns raw lines into entries and rejects,
    in input order."""

    __slots__ = (
        "_prices",
        "_rates",
        "allow_fields",
        "max_entry_bytes",
        "models",
        "position",
        "unpriced",
    )

    def __init__(
        self,
        *,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        models: frozenset[str] | None = DEFAULT_MODELS,
        prices: PriceTable = DEFAULT_PRICES,
        allow_fields: frozenset[str] = frozenset(),
    ) -> None:
        self.max_entry_bytes = max_batch_bytes - ENVELOPE_BYTES
        self.models = models
        #: top-level params let through unchecked (``PipelineConfig.allow_fields``)
        self.allow_fields = allow_fields
        self._prices = prices
        # (input, output) USD per million tokens of each model the table prices: one
        # dict lookup per entry instead of a call to estimate_cost_usd
        self._rates = prices.rates()
        #: (end, line) of the last non-blank line checked
        self.position = (-1, 0)
        #: models of entries the price table cannot price (their estimate is 0)
        self.unpriced: set[str] = set()

    @property
    def prices(self) -> PriceTable:
        """Prices each entry's estimated cost (``Entry.cost_usd``); fixed at creation."""
        return self._prices

    def check(self, lines: list[RawLine]) -> list[Entry | Reject | Flush]:
        """Entries and rejects for ``lines`` (blank lines give nothing)."""
        out: list[Entry | Reject | Flush] = []
        append, models, limit, rates = out.append, self.models, self.max_entry_bytes, self._rates
        # the loop of check_one, inlined: it runs once per request
        last: RawLine | None = None
        for raw in lines:
            data = raw.data
            # only a line ending in a blank byte (a CR of a CRLF file, mostly) may be blank
            if not data or data[-1] in _BLANK:
                if data.endswith(b"\r"):
                    data = data[:-1]
                if not data.strip():
                    continue
            last = raw
            checked = check_entry(data, models=models)
            # a type test: isinstance against a Struct class is several times slower
            if type(checked) is not Checked or len(data) > limit:
                if self.allow_fields and type(checked) is SchemaError:
                    checked = self._allowed(data, checked)
                if type(checked) is not Checked or len(data) > limit:
                    append(self._reject(raw, data, checked))
                    continue
            model = checked.model
            tokens = checked.approx_input_tokens
            max_tokens = checked.max_tokens
            # estimate_cost_usd, inlined (both counts are >= 1 here, so not clamped)
            # its input may be written to the cache (priced higher) only if it asks to
            factor = cache_write_factor(data) if checked.cache_control else 1.0
            rate = rates.get(model)
            if rate is None:
                self.unpriced.add(model)
                cost = 0.0
            else:
                cost = (tokens * rate[0] + max_tokens * rate[1]) / _MILLION
                if factor != 1.0:
                    cost += tokens * rate[0] * (factor - 1) / _MILLION
            offset = raw.offset
            append(
                Entry(
                    raw.line,
                    checked.custom_id,
                    data,
                    offset,
                    offset + len(raw.data) + 1 if offset >= 0 else -1,
                    1,
                    checked.signature,
                    model,
                    max_tokens,
                    tokens,
                    cost,
                    factor,
                )
            )
        if last is not None:
            self.position = (_end(last), last.line)
        return out

    def _allowed(self, data: bytes, error: SchemaError) -> Checked | SchemaError:
        """The check of ``data`` without the allowed top-level params it carries (the
        entry still sends them); ``error`` when it carries none. The shape key names
        them, so the dry run samples requests with them apart."""
        if "unknown field" not in error.message:
            return error
        stripped, present = without_fields(data, self.allow_fields, inside="params")
        if not present:
            return error
        checked = check_entry(stripped, models=self.models)
        if type(checked) is not Checked:
            return checked
        shape = reshaped(checked.signature, fields=present)
        return Checked(
            checked.custom_id, checked.model, checked.max_tokens, shape, len(data) // 3 + 1
        )

    def _reject(self, raw: RawLine, data: bytes, checked: Checked | SchemaError) -> Reject:
        if isinstance(checked, SchemaError):
            oversize = oversize_reason(data)
            if oversize is not None:
                message = (
                    f"line is {oversize[1]:,} bytes; a batch body holds at most "
                    f"{self.max_entry_bytes:,} bytes of requests (max_batch_bytes), so it was "
                    "skipped unread (is the input one JSON document rather than JSONL?)"
                )
                error = RejectError("request_too_large", message)
                return Reject(raw.line, oversize[0], error, _end(raw))
            unencodable = unencodable_reason(data)
            if unencodable is not None:
                error = RejectError("invalid_request_error", unencodable[1])
                return Reject(raw.line, unencodable[0], error, _end(raw))
            return Reject(raw.line, checked.custom_id, _classify(data, checked), _end(raw))
        message = (
            f"entry is {len(data)} bytes; a batch body holds at most "
            f"{self.max_entry_bytes} bytes of requests (max_batch_bytes)"
        )
        error = RejectError("request_too_large", message)
        return Reject(raw.line, checked.custom_id, error, _end(raw))

    def check_one(self, raw: RawLine) -> Entry | Reject | None:
        """One line's entry or reject (None for a blank line)."""
        items = self.check([raw])
        item = items[0] if items else None
        assert not isinstance(item, Flush)
        return item


#: bytes ``bytes.strip()`` removes: a line starting or ending with one may be blank
_BLANK = frozenset(b" \t\n\r\x0b\x0c")


def _end(raw: RawLine) -> int:
    """The resume position after ``raw``: the byte after its ``\n`` (-1: no file)."""
    if raw.offset < 0:
        return -1
    return raw.offset + (raw.size if raw.size >= 0 else len(raw.data)) + 1


def _classify(data: bytes, error: SchemaError) -> RejectError:
    """The reject's error type: not JSON at all, not an entry object, a bad custom_id,
    or a schema failure."""
    if error.message.startswith(TOO_DEEP):  # no decoder may read the line
        return RejectError("invalid_json", error.message)
    # A custom_id was read only from a JSON object (the strict decode or the salvage
    # decode of the whole line): no need to decode the line again to know it is one.
    if error.custom_id is None:
        try:
            value = _any_decoder.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            return RejectError("invalid_json", f"malformed JSON: {exc}")
        if not isinstance(value, dict):
            return RejectError(
                "invalid_request_error",
                f"the line is {_json_kind(value)}; each line must be a JSON object "
                '{"custom_id": ..., "params": {...}}',
            )
        return RejectError("invalid_custom_id", error.message)
    if error.message.startswith("custom_id"):
        return RejectError("invalid_custom_id", error.message)
    if error.message.startswith("params: unknown field `"):
        name = error.message.split("`")[1]
        hint = (
            f" (a misspelt param? If the API added it after this version of pipeline, "
            f"--allow-field {name} or PipelineConfig(allow_fields=...) lets it through)"
        )
        return RejectError("invalid_request_error", error.message + hint)
    return RejectError("invalid_request_error", error.message)


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str):
        return "a JSON string"
    if isinstance(value, bool):
        return "a JSON boolean"
    if value is None:
        return "JSON null"
    return "a JSON number"


async def validate(
    receive: ObjectReceiveStream[list[RawLine]],
    send: ObjectSendStream[list[Entry | Reject | Flush]],
    /,
    *,
    config: PipelineConfig,
    models: frozenset[str] | None = DEFAULT_MODELS,
    progress: JobCounters | None = None,
    prices: PriceTable = DEFAULT_PRICES,
) -> None:
    """Check every line; send entries and rejects in input order, then a final
    ``Flush`` standing at the position after the last line."""
    validator = Validator(
        max_batch_bytes=config.max_batch_bytes,
        models=models,
        prices=prices,
        allow_fields=config.allow_fields,
    )
    first = _FirstLines()
    async with receive, send:
        async for lines in receive:
            if progress is not None and lines and lines[-1].line > progress.read:
                progress.read = lines[-1].line  # a user stage before may reorder
            items = validator.check(lines)
            if not first.done:
                first.look(items)
            if progress is not None and validator.unpriced:
                progress.unpriced |= validator.unpriced
            if items:
                await send.send(items)
        await send.send([Flush(validator.position[0], final=True)])


#: Rejects in a row, from the first line read on, after which the stage warns (once)
#: that the input may not be a file of requests at all.
ALL_REJECTED_WARNING = 1000


class _FirstLines:
    """Watches the first lines checked: a wrong file (results, CSV, another JSON
    format) makes every line a reject. The job goes on (bad input never stops it),
    but a run that only fills the rejects file says so early, once."""

    __slots__ = ("done", "first", "rejected")

    def __init__(self) -> None:
        self.done = False
        self.first: Reject | None = None
        self.rejected = 0

    def look(self, items: list[Entry | Reject | Flush]) -> None:
        for item in items:
            if type(item) is Entry:
                self.done = True
                return
            if type(item) is Reject:
                self.first = self.first or item
                self.rejected += 1
        if self.rejected >= ALL_REJECTED_WARNING and self.first is not None:
            self.done = True
            first = self.first
            logger.warning(
                "the first %d lines read were all rejected (line %d, custom_id %r: %s): is "
                'the input a file of batch requests, one {"custom_id": ..., "params": '
                "{...}} per line? The job goes on; each reject is in the rejects file.",
                self.rejected,
                first.line,
                first.custom_id,
                first.error.message,
            )
