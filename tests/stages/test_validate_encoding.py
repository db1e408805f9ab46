"""Bytes that are not UTF-8 are a reject naming the line, never a crash; line ends,
blank lines and the error type of each kind of bad line."""

from __future__ import annotations

import pytest

from pipeline.stages._items import Entry, RawLine, Reject
from pipeline.stages.validate import Validator

GOOD = (
    b'{"custom_id":"ok-1","params":{"model":"claude-3-haiku-20240307","max_tokens":5,'
    b'"messages":[{"role":"user","content":"hi"}]}}'
)
BAD_UTF8 = GOOD.replace(b'"ok-1"', b'"bad-1"').replace(b'"hi"', b'"\xff\xfe"')


def test_invalid_utf8_is_rejected_with_its_line_and_the_rest_goes_on() -> None:
    out = Validator(max_batch_bytes=32_000_000).check(
        [
            RawLine(1, GOOD, 0),
            RawLine(2, BAD_UTF8, len(GOOD) + 1),
            RawLine(3, GOOD.replace(b"ok-1", b"ok-3"), 300),
        ]
    )
    assert [type(x) for x in out] == [Entry, Reject, Entry]
    reject = out[1]
    assert isinstance(reject, Reject)
    assert reject.line == 2
    assert reject.error.type == "invalid_json"
    assert "utf-8" in reject.error.message.lower()


@pytest.mark.parametrize("data", [b"", b" ", b"\r", b" \t\r", b"\x0b\x0c", b"\r\r"], ids=repr)
def test_blank_lines_give_nothing(data: bytes) -> None:
    validator = Validator()
    out = validator.check([RawLine(1, GOOD, 0), RawLine(2, data, len(GOOD) + 1)])
    assert [type(x) for x in out] == [Entry]
    assert validator.check([RawLine(3, data, 500)]) == []
    assert validator.position == (len(GOOD) + 1, 1)  # where the last non-blank line ends


@pytest.mark.parametrize(
    "data",
    [GOOD + b"\r", b" " + GOOD, GOOD + b" ", GOOD + b"\t\r", b"\r" + GOOD],
    ids=repr,
)
def test_a_line_with_blank_ends_is_checked_as_it_is(data: bytes) -> None:
    [item] = Validator().check([RawLine(1, data, 0)])
    assert isinstance(item, Entry)
    assert item.raw == data.removesuffix(b"\r")
    assert item.end == len(data) + 1


@pytest.mark.parametrize(
    ("data", "custom_id", "error_type"),
    [
        (
            b'{"custom_id":"c1","params":{"model":"claude-3-haiku-20240307","max_tokens":"5",'
            b'"messages":[{"role":"user","content":"hi"}]}}',
            "c1",
            "invalid_request_error",
        ),
        (GOOD.replace(b"claude-3-haiku-20240307", b"claude-9"), "ok-1", "invalid_request_error"),
        (GOOD.replace(b'"ok-1"', b'"ok 1"'), "ok 1", "invalid_custom_id"),
        (GOOD.replace(b'"ok-1"', b"1"), None, "invalid_custom_id"),
        (GOOD.replace(b'"custom_id":"ok-1",', b""), None, "invalid_custom_id"),
        (GOOD.replace(b'"hi"', b'"hi\xff"'), None, "invalid_json"),
        (GOOD[:-3], None, "invalid_json"),
        (b"[1]", None, "invalid_request_error"),
    ],
)
def test_each_kind_of_bad_line_has_its_error_type(
    data: bytes, custom_id: str | None, error_type: str
) -> None:
    [reject] = Validator().check([RawLine(1, data, 0)])
    assert isinstance(reject, Reject)
    assert (reject.custom_id, reject.error.type) == (custom_id, error_type)
