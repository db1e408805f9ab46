"""Secrets and service settings that cannot work are refused before anything starts,
and a secret shows in no output in any form (issue 14, item 8, and the base URL):
the command's stderr, its log records (text and JSON) and every file it leaves."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Literal
from urllib.parse import quote, quote_plus

import httpx
import msgspec
import pytest

from pipeline import APIStatusError, Client, Pipeline, UsageError, configure_logging

if TYPE_CHECKING:
    from pathlib import Path

#: a local port nothing listens on: were a check to let a setting through, the run
#: would fail there (exit 1), never reach a service
NOWHERE = "http://127.0.0.1:9"


def printed_forms(secret: str) -> set[str]:
    """Every way ``secret`` may be printed: as it is, as ``repr`` shows a str and
    bytes, JSON-escaped (UTF-8 and ASCII), percent-encoded, and what is left of it
    without its stray characters (a CRLF key's text, the parts around a non-ASCII
    character), each of at least 8 characters."""
    forms = {
        secret,
        repr(secret)[1:-1],
        repr(secret.encode())[2:-1],
        msgspec.json.encode(secret).decode()[1:-1],
        json.dumps(secret)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret),
        secret.strip(),
    }
    parts = "".join(c if "!" <= c <= "~" else " " for c in secret).split()
    return {f for f in forms | set(parts) if len(f) >= 8}


def leaks(secret: str, texts: list[str], directory: Path) -> list[str]:
    """The printed forms of ``secret`` found in ``texts`` or any file under
    ``directory``."""
    found = []
    files = [p for p in directory.rglob("*") if p.is_file()]
    blobs = [t.encode() for t in texts] + [p.read_bytes() for p in files]
    for form in printed_forms(secret):
        found += [form for blob in blobs if form.encode() in blob]
    return found


def run_cli(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    source = tmp_path / "in.jsonl"
    entry = {
        "custom_id": "a",
        "params": {
            "model": "claude-3-haiku-20240307",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
        },
    }
    source.write_bytes(msgspec.json.encode(entry) + b"\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    command = [sys.executable, "-m", "pipeline", "run", str(source), "-o"]
    command += [str(tmp_path / "out.jsonl"), *args]
    return subprocess.run(command, capture_output=True, text=True, env={**base, **env}, timeout=60)


@pytest.mark.parametrize(
    ("variable", "secret", "log_format", "said"),
    [
        ("ANTHROPIC_API_KEY", "GATEWAYSECRET42\n", "text", "ends with a line feed"),
        ("ANTHROPIC_API_KEY", "GATEWAYSECRET42\r", "json", "Windows (CRLF) line ends"),
        ("ANTHROPIC_API_KEY", "sk-ant-api03-GATEWAYSECRET42\r\n", "text", "carriage return"),
        ("ANTHROPIC_API_KEY", "GATEWAYSECRËT42x", "json", "non-ASCII character"),
        ("ANTHROPIC_AUTH_TOKEN", "GATEWAYTOKEN4242\r", "text", "carriage return"),
        ("MY_KEY", "GATEWAY SECRET42", "json", "whitespace"),
    ],
)
def test_an_unusable_key_is_refused_before_anything_starts_and_shown_nowhere(
    tmp_path: Path, variable: str, secret: str, log_format: str, said: str
) -> None:
    args = ["--log-format", log_format]
    if variable == "MY_KEY":
        args += ["--api-key-env", "MY_KEY"]
    done = run_cli(tmp_path, {variable: secret, "ANTHROPIC_BASE_URL": NOWHERE}, *args)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert said in last
    assert variable in last  # where to fix it
    if log_format == "json":
        assert msgspec.json.decode(last)["level"] == "ERROR"
    assert not (tmp_path / "out.jsonl.state").exists()  # nothing started
    assert leaks(secret, [done.stdout, done.stderr], tmp_path) == []


def test_a_key_given_in_python_is_refused_at_construction(tmp_path: Path) -> None:
    secret = "GATEWAYSECRET42\r"
    with pytest.raises(UsageError, match="carriage return") as pipeline_error:
        Pipeline(tmp_path / "in.jsonl", tmp_path / "out.jsonl", api_key=secret)
    with pytest.raises(UsageError, match="line feed") as client_error:
        Client(api_key=None, auth_token="GATEWAYTOKEN42\n", base_url=NOWHERE)
    with pytest.raises(UsageError, match="non-ASCII") as key_error:
        Client(api_key="GATEWAYSECRËT42x", base_url=NOWHERE)
    for error, key in (
        (pipeline_error, secret),
        (client_error, "GATEWAYTOKEN42\n"),
        (key_error, "GATEWAYSECRËT42x"),
    ):
        assert leaks(key, [str(error.value), repr(error.value)], tmp_path) == []


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_logs_mask_a_secret_in_every_printed_form(log_format: Literal["text", "json"]) -> None:
    secrets = ["GATEWAYSECRET42\r", "GATEWAYSECRËT42x", "GATEWAY/SECRET+42"]
    stream = io.StringIO()
    handler = configure_logging(log_format=log_format, stream=stream, secrets=secrets)
    log = logging.getLogger("pipeline.test")
    try:
        for secret in secrets:
            for form in printed_forms(secret):
                log.error("Illegal header value %s", form, extra={"detail": f"b'{form}'"})
            log.error("header %r %r", secret, secret.encode())
    finally:
        logging.getLogger("pipeline").removeHandler(handler)
    written = stream.getvalue()
    assert written.count("Illegal header value") == sum(len(printed_forms(s)) for s in secrets)
    for secret in secrets:
        assert [f for f in printed_forms(secret) if f in written] == []


@pytest.mark.parametrize(
    ("url", "said"),
    [("not a url", "is not a URL"), (f"{NOWHERE}/v1?key=QUERYSECRET42", "query string")],
)
def test_an_unusable_base_url_exits_2_before_anything_starts(
    tmp_path: Path, url: str, said: str
) -> None:
    done = run_cli(tmp_path, {}, "--base-url", url)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert said in last
    assert "--base-url" in last
    assert "QUERYSECRET42" not in done.stderr  # a query may hold a token
    assert not (tmp_path / "out.jsonl.state").exists()


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("not a url", "is not a URL"),
        ("api.anthropic.com", "http:// or https://"),
        (f"{NOWHERE}/#frag", "fragment"),
        ("http://user:PASSWORD42@127.0.0.1:9", "credentials"),
    ],
)
async def test_an_unusable_base_url_is_refused_by_the_python_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, said: str
) -> None:
    with pytest.raises(UsageError, match=said) as given:
        Pipeline(tmp_path / "in.jsonl", tmp_path / "out.jsonl", base_url=url)
    with pytest.raises(UsageError, match=said):
        Client(api_key="test-key", base_url=url)
    # from the environment, as the SDK reads it: refused when the run starts, before
    # it opens anything
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    (tmp_path / "in.jsonl").write_bytes(b"")
    pipeline = Pipeline(tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    with pytest.raises(UsageError, match=f"ANTHROPIC_BASE_URL.*{said}"):
        await pipeline.run()
    assert not (tmp_path / "out.jsonl.state").exists()
    assert "PASSWORD42" not in str(given.value)


async def test_the_client_masks_a_key_an_answer_echoes_in_any_form(tmp_path: Path) -> None:
    # A gateway that echoes the key it was sent, escaped its own way, in an error.
    secret = "GATEWAY/SECRET+42=="
    echoed = " ".join(sorted(printed_forms(secret)))

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["x-api-key"] == secret
        body = {"type": "error", "error": {"type": "invalid_request_error", "message": echoed}}
        return httpx.Response(400, json=body)

    client = Client(api_key=secret, base_url=NOWHERE, transport=httpx.MockTransport(answer))
    async with client:
        with pytest.raises(APIStatusError) as raised:
            await client.retrieve_batch("msgbatch_1")
    assert "invalid_request_error" in str(raised.value)
    assert leaks(secret, [str(raised.value), repr(raised.value)], tmp_path) == []
