"""Write ``examples/requests.jsonl``: 50 varied, valid batch requests (plain text,
system prompts, multi-turn, forced tool use, an image URL, stop sequences...) and
three deliberately bad lines, so that a run shows results and rejects.

Run: ``python examples/make_requests.py [PATH]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgspec

#: current models (2026-11): forced tool use (kind 3) and a temperature (kind 5) fall on
#: models that take them (Sonnet 5.x refuses a non-default temperature)
MODELS = ["claude-haiku-4-5", "claude-sonnet-5-5", "claude-sonnet-4-5"]
TOPICS = ["tides", "photosynthesis", "compound interest", "the Doppler effect", "sourdough", "TCP"]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def request(i: int) -> dict[str, Any]:
    """The ``i``-th example request; the kind cycles so every kind appears."""
    model = MODELS[i % len(MODELS)]
    topic = TOPICS[i % len(TOPICS)]
    kind = i % 6
    params: dict[str, Any] = {"model": model, "max_tokens": 256}
    if kind == 0:
        params["messages"] = [{"role": "user", "content": f"Explain {topic} in two sentences."}]
    elif kind == 1:
        params["system"] = "You are a patient teacher. Answer in plain words."
        params["messages"] = [{"role": "user", "content": f"What is {topic}?"}]
    elif kind == 2:
        params["messages"] = [
            {"role": "user", "content": f"Give me one fact about {topic}."},
            {"role": "assistant", "content": f"Here is a fact about {topic}:"},
            {"role": "user", "content": "Now a second, surprising one."},
        ]
    elif kind == 3:
        params["tools"] = [WEATHER_TOOL]
        params["tool_choice"] = {"type": "tool", "name": "get_weather"}
        params["messages"] = [{"role": "user", "content": f"Weather in city number {i}?"}]
    elif kind == 4:
        params["messages"] = [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/cat.png"},
                    },
                    {"type": "text", "text": "Describe this picture in one line."},
                ],
            }
        ]
    else:
        params["temperature"] = 0.2
        params["stop_sequences"] = ["THE END"]
        params["messages"] = [{"role": "user", "content": f"List three words about {topic}."}]
    return {"custom_id": f"example-{i:03d}", "params": params}


BAD_LINES = [
    b'{"custom_id": "broken-json", "params": {"model": ',  # malformed JSON
    b'{"custom_id": "has spaces!", "params": {"model": "claude-haiku-4-5", '
    b'"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}}',  # bad custom_id
    b'{"custom_id": "no-max-tokens", "params": {"model": "claude-haiku-4-5", '
    b'"messages": [{"role": "user", "content": "hi"}]}}',  # schema: max_tokens missing
]


def main(path: str) -> None:
    lines = [msgspec.json.encode(request(i)) for i in range(50)]
    for k, bad in enumerate(BAD_LINES):
        lines.insert(10 + 15 * k, bad)
    Path(path).write_bytes(b"\n".join(lines) + b"\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).with_name("requests.jsonl")))
