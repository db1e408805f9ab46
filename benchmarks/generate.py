"""Deterministic benchmark input: a JSONL file of batch entries, with a few bad lines.

``python benchmarks/generate.py --requests 100000 [--seed 7] [--data-dir DIR]`` writes
``DIR/requests-N-sSEED.jsonl`` and a ``.meta.json`` beside it (written last, so a file
cut short by a crash is never reused). The same N and seed always give the same bytes.
``--ids random`` writes ``requests-N-sSEED-random.jsonl``: the same requests with 32
random hex digits as custom_ids (what ``uuid4().hex`` gives) instead of ordered ones.

Every line is ``{"custom_id": "req-00000001", "params": {...}}``. The mix is what a
real job looks like: mostly short single-turn prompts, some long ones, system
prompts, multi-turn conversations and a tool, over a handful of request shapes (so
a count-tokens dry run makes only a few calls). About 3% of the lines are bad, one
third of each kind:

* ``malformed``: cut-off JSON, which every contender must skip;
* ``bad_type``: valid JSON with ``max_tokens`` as a string (a typed decode catches it);
* ``bad_model``: a model the service does not know (only a schema check that knows
  the models catches it; otherwise the request comes back ``errored``).

The meta file records how many lines of each kind there are, so the runner can
check every contender's output line count.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path
from typing import Any

import msgspec

__all__ = (
    "DEFAULT_DATA_DIR",
    "DEFAULT_SEED",
    "ID_KINDS",
    "Meta",
    "data_paths",
    "ensure",
    "generate",
    "load_meta",
)

DEFAULT_SEED = 7
DEFAULT_DATA_DIR = Path(__file__).resolve().parent / ".data"

_MODELS = ("claude-3-haiku-20240307", "claude-3-5-haiku-20241022", "claude-3-5-sonnet-20241022")
_SYSTEM = "You are a careful assistant. Answer briefly and cite the passage you rely on."
_TOOL = {
    "name": "lookup",
    "description": "Look a term up in the glossary.",
    "input_schema": {
        "type": "object",
        "properties": {"term": {"type": "string"}},
        "required": ["term"],
    },
}
_WORDS = (
    "the of and a to in is you that it he was for on are as with his they at be this have "
    "from or one had by word but not what all were we when your can said there use an each "
    "which she do how their if will up other about out many then them these so some her would "
    "make like him into time has look two more write go see number no way could people my than "
    "first water been call who oil its now find long down day did get come made may part "
    "batch request latency throughput résumé naïve café über smörgåsbord 東京 数据 "
    'quote" back\\slash tab\tnewline\n'
).split(" ")


class Meta(msgspec.Struct):
    """What a generated file holds (``.meta.json``)."""

    requests: int
    seed: int
    bytes: int
    valid: int
    malformed: int
    bad_type: int
    bad_model: int

    @property
    def invalid(self) -> int:
        return self.malformed + self.bad_type + self.bad_model


_meta_decoder = msgspec.json.Decoder(Meta)
_encode = msgspec.json.Encoder().encode


#: custom_id kinds: ``ordered`` (``req-00000001``, ...) or ``random`` (32 hex digits,
#: as ``uuid4().hex``, from their own generator: the rest of the file is the same bytes)
ID_KINDS = ("ordered", "random")


def data_paths(requests: int, seed: int, data_dir: Path, ids: str = "ordered") -> tuple[Path, Path]:
    """The request file and its meta file for ``requests`` lines, ``seed`` and ``ids``."""
    stem = f"requests-{requests}-s{seed}" + ("" if ids == "ordered" else f"-{ids}")
    return data_dir / f"{stem}.jsonl", data_dir / f"{stem}.meta.json"


def _corpus(rng: random.Random, size: int = 1 << 17) -> str:
    words = [rng.choice(_WORDS) for _ in range(size // 5)]
    return " ".join(words)[:size]


def _prompt_length(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.75:
        return rng.randint(40, 300)
    if roll < 0.97:
        return rng.randint(300, 1500)
    return rng.randint(1500, 6000)


def _params(rng: random.Random, corpus: str) -> dict[str, Any]:
    length = _prompt_length(rng)
    start = rng.randrange(0, len(corpus) - length)
    text = corpus[start : start + length]
    shape = rng.random()
    params: dict[str, Any] = {"model": _MODELS[0], "max_tokens": rng.choice((64, 256, 1024))}
    if shape < 0.55:
        params["messages"] = [{"role": "user", "content": text}]
    elif shape < 0.75:
        params["model"] = _MODELS[2]
        params["system"] = _SYSTEM
        params["temperature"] = 0.2
        params["messages"] = [{"role": "user", "content": text}]
    elif shape < 0.90:
        params["model"] = _MODELS[1]
        params["messages"] = [
            {"role": "user", "content": [{"type": "text", "text": text[: length // 2]}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Noted."}]},
            {"role": "user", "content": [{"type": "text", "text": text[length // 2 :]}]},
        ]
    else:
        params["tools"] = [_TOOL]
        params["messages"] = [{"role": "user", "content": text}]
    return params


def generate(requests: int, seed: int, path: Path, ids: str = "ordered") -> Meta:
    """Write ``requests`` lines to ``path`` (via a temporary file) and return the counts."""
    rng = random.Random(seed)
    id_rng = random.Random(seed * 1_000_003 + 17) if ids == "random" else None
    corpus = _corpus(rng)
    counts = {"valid": 0, "malformed": 0, "bad_type": 0, "bad_model": 0}
    tmp = path.with_suffix(".tmp")
    size = 0
    with tmp.open("wb", buffering=1 << 20) as out:
        pending: list[bytes] = []
        for i in range(1, requests + 1):
            cid = f"req-{i:08d}" if id_rng is None else f"{id_rng.getrandbits(128):032x}"
            line = _line(rng, corpus, cid, counts)
            pending.append(line)
            if len(pending) >= 4096:
                chunk = b"".join(pending)
                size += len(chunk)
                out.write(chunk)
                pending.clear()
        chunk = b"".join(pending)
        size += len(chunk)
        out.write(chunk)
    os.replace(tmp, path)
    return Meta(requests=requests, seed=seed, bytes=size, **counts)


def _line(rng: random.Random, corpus: str, cid: str, counts: dict[str, int]) -> bytes:
    params = _params(rng, corpus)
    roll = rng.random()
    if roll < 0.01:
        kind = "malformed"
    elif roll < 0.02:
        kind = "bad_type"
        params["max_tokens"] = "plenty"
    elif roll < 0.03:
        kind = "bad_model"
        params["model"] = "claude-imaginary-20991231"
    else:
        kind = "valid"
    counts[kind] += 1
    line = _encode({"custom_id": cid, "params": params})
    if kind == "malformed":
        # cut at a character boundary: the file stays valid UTF-8
        line = line[: len(line) // 2].decode("utf-8", "ignore").encode()
    return line + b"\n"


def ensure(
    requests: int, seed: int = DEFAULT_SEED, data_dir: Path = DEFAULT_DATA_DIR, ids: str = "ordered"
) -> Path:
    """The request file for ``requests``, ``seed`` and ``ids``, generated unless it exists."""
    path, meta_path = data_paths(requests, seed, data_dir, ids)
    if path.exists() and meta_path.exists():
        meta = _meta_decoder.decode(meta_path.read_bytes())
        if meta.bytes == path.stat().st_size:
            return path
    data_dir.mkdir(parents=True, exist_ok=True)
    meta = generate(requests, seed, path, ids)
    meta_path.write_bytes(_encode(meta))
    return path


def load_meta(path: Path) -> Meta:
    """The meta record of a request file written by ``ensure``."""
    return _meta_decoder.decode(path.with_suffix(".meta.json").read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--ids", choices=ID_KINDS, default="ordered", help="custom_id kind")
    args = parser.parse_args(argv)
    path = ensure(args.requests, args.seed, args.data_dir, args.ids)
    meta = load_meta(path)
    print(f"{path}: {meta.requests} lines, {meta.bytes / 1e6:.1f} MB, {meta.invalid} invalid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
