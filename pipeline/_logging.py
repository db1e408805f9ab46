"""Logging for people and for log collectors: the standard ``logging`` module,
structured fields, and a filter that keeps API keys out of every record.

Code in ``pipeline`` logs to loggers under ``"pipeline"`` and passes structured
fields through ``extra=`` (``batch_id``, ``request_count``, ``counts``, ...)::

    logger.info("batch ended", extra={"batch_id": batch.id, "counts": counts})

``configure_logging`` installs one handler on the ``"pipeline"`` logger, either
``text`` (one readable line, fields appended as ``key=value``) or ``json`` (one
JSON object per line, fields as keys: what a worker under a supervisor wants).
Its ``RedactingFilter`` masks anything shaped like an Anthropic key
(``sk-ant-...``) and every configured secret (the key read from the
environment), in every form it may be printed in (escaped, as bytes, JSON-escaped,
percent-encoded: ``secret_forms``), in messages, arguments, fields and tracebacks,
so no handler ever sees a key, whatever a caller or a library put into a record.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import TYPE_CHECKING, Any, Literal, TextIO
from urllib.parse import quote, quote_plus

import msgspec

from ._config import AUTH_TOKEN_ENV, DEFAULT_API_KEY_ENV

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = (
    "FIELDS_IN_MESSAGE",
    "LOG_FORMATS",
    "MIN_SECRET_LENGTH",
    "JsonFormatter",
    "LogFormat",
    "RedactingFilter",
    "TextFormatter",
    "announce",
    "configure_logging",
    "extra_fields",
    "redact",
    "secret_forms",
)

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

#: What an Anthropic API key looks like; matched anywhere in a string.
_KEY_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_\-]+")
_MASK = "[REDACTED]"
#: Secrets shorter than this are not masked by value (they would mask ordinary words).
MIN_SECRET_LENGTH = 8

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime", "taskName"}
)

_json_encoder = msgspec.json.Encoder(enc_hook=repr)


#: Runs of characters a header value may hold (printable ASCII but space): what is
#: left of a secret in any escaped form of it.
_PLAIN_RUNS = re.compile(r"[\x21-\x7e]+")


def secret_forms(secret: str) -> tuple[str, ...]:
    """Every form in which ``secret`` may be printed, longest first: as it is, escaped
    as ``repr`` escapes a str and bytes, as JSON escapes it, percent-encoded, and each
    run of 8 or more plain characters in it (what shows of a key with a stray ``\\r``
    or a non-ASCII character whatever the escaping). Empty for a secret shorter than
    ``MIN_SECRET_LENGTH`` (masking it would mask ordinary words)."""
    if len(secret) < MIN_SECRET_LENGTH:
        return ()
    forms = {
        secret,
        repr(secret)[1:-1],
        repr(secret.encode("utf-8", "surrogatepass"))[2:-1],
        _json_encoder.encode(secret).decode()[1:-1],
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
        *_PLAIN_RUNS.findall(secret),
    }
    return tuple(sorted((f for f in forms if len(f) >= MIN_SECRET_LENGTH), key=len, reverse=True))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every key-shaped substring and every given secret masked, in each
    of its printed forms (``secret_forms``)."""
    return _mask(text, tuple(f for secret in secrets for f in secret_forms(secret)))


def _mask(text: str, forms: tuple[str, ...]) -> str:
    """``text`` with each of ``forms`` (longest first) and anything key-shaped masked."""
    for form in forms:
        if form in text:
            text = text.replace(form, _MASK)
    if "sk-ant-" in text:
        text = _KEY_PATTERN.sub(_MASK, text)
    return text


def _redact_value(value: object, forms: tuple[str, ...]) -> object:
    if isinstance(value, str):
        return _mask(value, forms)
    if isinstance(value, dict):
        return {k: _redact_value(v, forms) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v, forms) for v in value]
    if isinstance(value, bool | int | float) or value is None:
        return value
    return _mask(repr(value), forms)


#: Set ``extra={"_fields_in_message": True, ...}`` when the message already says
#: everything the fields do: the text format then leaves the fields out.
FIELDS_IN_MESSAGE = "_fields_in_message"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a record was given through ``extra=`` (names that
    start with ``_`` are flags for the formatters, not fields)."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and k[:1] != "_"}


class RedactingFilter(logging.Filter):
    """Masks API keys in a record before any formatter sees it.

    It resolves ``msg % args`` into the message, formats a traceback into
    ``exc_text``, and masks both and every ``extra=`` field. Attach it to a
    handler (``configure_logging`` does) so it covers records of every logger.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        #: every printed form of every secret, longest first
        self._forms: tuple[str, ...] = ()
        for secret in secrets:
            self.add_secret(secret)

    def add_secret(self, secret: str | None) -> None:
        """Also mask this value (e.g. the configured API key), in each printed form."""
        if secret:
            forms = {*self._forms, *secret_forms(secret)}
            self._forms = tuple(sorted(forms, key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self._forms
        record.msg = _mask(record.getMessage(), secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _mask(record.exc_text, secrets)
            record.exc_info = None
        if record.stack_info:
            record.stack_info = _mask(record.stack_info, secrets)
        for key, value in extra_fields(record).items():
            setattr(record, key, _redact_value(value, secrets))
        return True


def _field_text(value: object) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    text = str(value)
    return repr(text) if " " in text else text


class _StderrProxy:
    """Writes to whatever ``sys.stderr`` is now, so a live display that redirects
    stderr (rich's ``Live``) can print log lines above itself."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class TextFormatter(logging.Formatter):
    """``2024-10-22 12:00:00 INFO pipeline.x: message key=value ...``: for people."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = extra_fields(record)
        if not fields or getattr(record, FIELDS_IN_MESSAGE, False):
            return text
        head, sep, tail = text.partition("\n")
        extras = " ".join(f"{k}={_field_text(v)}" for k, v in fields.items())
        return f"{head} {extras}{sep}{tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``,
    every ``extra=`` field as a key, and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            doc.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        return _json_encoder.encode(doc).decode()


def announce(message: str) -> None:
    """Pass as ``Pipeline(announce=...)``: notices (e.g. "running on the local
    emulator") go through the ``pipeline`` logger without their ``pipeline: ``
    prefix, so ``--quiet`` hides them and ``--log-format json`` keeps stderr all JSON."""
    logging.getLogger("pipeline").info(message.removeprefix("pipeline: "))


def env_secrets(api_key_env: str = DEFAULT_API_KEY_ENV) -> list[str]:
    """The API key (in ``api_key_env``) and bearer token (``ANTHROPIC_AUTH_TOKEN``) the
    environment holds, long enough to mask: what no log line or message may show."""
    found = (os.environ.get(api_key_env), os.environ.get(AUTH_TOKEN_ENV))
    return [s for s in found if s and len(s) >= MIN_SECRET_LENGTH]


def configure_logging(
    *,
    log_format: LogFormat = "text",
    level: int | str = logging.INFO,
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
    api_key_env: str = DEFAULT_API_KEY_ENV,
    logger_name: str = "pipeline",
) -> logging.Handler:
    """Send ``pipeline``'s log records to ``stream`` (stderr) in ``log_format``.

    The handler masks API keys: anything ``sk-ant-...``, each of ``secrets`` and
    the value of the ``api_key_env`` environment variable. A handler installed
    by an earlier call is replaced, so calling this twice does not log twice.
    Returns the handler (remove it from ``logging.getLogger(logger_name)`` to undo).
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {LOG_FORMATS}, got {log_format!r}")
    target: Any = stream if stream is not None else _StderrProxy()
    handler: logging.StreamHandler[Any] = logging.StreamHandler(target)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    redactor = RedactingFilter([*secrets, *env_secrets(api_key_env)])
    handler.addFilter(redactor)
    setattr(handler, "_pipeline_handler", True)  # noqa: B010 - marks ours for replacement
    logger = logging.getLogger(logger_name)
    for old in [h for h in logger.handlers if getattr(h, "_pipeline_handler", False)]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler
