"""Logging: structured fields in text and JSON, and never an API key."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import msgspec
import pytest

from pipeline._logging import RedactingFilter, configure_logging, redact

if TYPE_CHECKING:
    from collections.abc import Iterator

KEY = "sk-ant-api03-" + "Zx9" * 30 + "-AA"
CONFIGURED = "my-proxy-secret-1234567890"


@pytest.fixture
def capture(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """A fresh stream; the 'pipeline' logger's handlers are restored afterwards."""
    monkeypatch.setenv("PIPELINE_TEST_KEY", CONFIGURED)
    logger = logging.getLogger("pipeline")
    before = (list(logger.handlers), logger.level, logger.propagate)
    stream = io.StringIO()
    yield stream
    logger.handlers[:] = before[0]
    logger.setLevel(before[1])
    logger.propagate = before[2]


def _setup(stream: io.StringIO, log_format: str) -> logging.Logger:
    configure_logging(
        log_format=log_format,  # type: ignore[arg-type]
        stream=stream,
        api_key_env="PIPELINE_TEST_KEY",
    )
    return logging.getLogger("pipeline.test")


def _leaky_records(log: logging.Logger) -> None:
    log.info("creating with key %s", KEY, extra={"batch_id": "msgbatch_1", "counts": {"ok": 3}})
    log.warning("header was x-api-key: " + CONFIGURED, extra={"header": f"Bearer {KEY}"})
    try:
        raise ValueError(f"bad auth {KEY}")
    except ValueError:
        log.exception("call failed", extra={"nested": {"list": [KEY, 1]}})


def test_json_lines_parse_and_carry_fields_without_the_key(
    capture: io.StringIO,
) -> None:
    stream = capture
    _leaky_records(_setup(stream, "json"))
    text = stream.getvalue()
    assert KEY not in text
    assert CONFIGURED not in text
    assert "sk-ant-" not in text
    docs = [msgspec.json.decode(line) for line in text.splitlines()]
    assert len(docs) == 3
    first = docs[0]
    assert first["level"] == "INFO"
    assert first["logger"] == "pipeline.test"
    assert first["batch_id"] == "msgbatch_1"
    assert first["counts"] == {"ok": 3}
    assert first["message"] == "creating with key [REDACTED]"
    assert docs[1]["header"] == "Bearer [REDACTED]"
    assert "ValueError: bad auth [REDACTED]" in docs[2]["exception"]
    assert docs[2]["nested"] == {"list": ["[REDACTED]", 1]}


def test_text_lines_append_fields_without_the_key(
    capture: io.StringIO,
) -> None:
    stream = capture
    _leaky_records(_setup(stream, "text"))
    text = stream.getvalue()
    assert KEY not in text
    assert CONFIGURED not in text
    first = text.splitlines()[0]
    assert "INFO pipeline.test: creating with key [REDACTED]" in first
    assert "batch_id=msgbatch_1" in first
    assert "counts=ok:3" in first
    assert "Traceback" in text


def test_configuring_twice_does_not_double_lines(capture: io.StringIO) -> None:
    stream = capture
    _setup(io.StringIO(), "text")
    log = _setup(stream, "text")
    log.info("once")
    assert stream.getvalue().count("once") == 1


def test_unknown_format_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="log_format"):
        configure_logging(log_format="xml")  # type: ignore[arg-type]


def test_redact_masks_key_shapes_and_secrets_but_not_short_values() -> None:
    assert redact(f"a {KEY} b") == "a [REDACTED] b"
    assert redact("token abcdefghij!", ["abcdefghij"]) == "token [REDACTED]!"
    filt = RedactingFilter(["short"])  # too short to mask by value: would hit words
    record = logging.LogRecord("pipeline", logging.INFO, "", 0, "a short note", (), None)
    filt.filter(record)
    assert record.getMessage() == "a short note"
