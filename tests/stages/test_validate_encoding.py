"""Bytes that are not UTF-8 are a reject naming the line, never a crash."""

from __future__ import annotations

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
