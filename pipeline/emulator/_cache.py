"""The emulator's prompt cache: which part of a request's input is read from cache,
which is written to it, and what that does to its ``usage``.

The model of the service's prompt caching (the prompt-caching page):

* A ``cache_control`` breakpoint (on a tool, a ``system`` block or a message's content
  block; a top-level ``cache_control`` marks the last block of the last message) ends
  a prefix: everything before it, read in the order tools, system, messages.
* A prefix seen before in the same workspace, for the same model, within its TTL (5
  minutes, or 1 hour with ``"ttl": "1h"``) is read from cache: the longest such
  prefix counts as ``cache_read_input_tokens``, and a read renews its TTL.
* The parts up to each later breakpoint are written: ``cache_creation_input_tokens``,
  split by TTL in ``cache_creation`` (``ephemeral_5m_input_tokens``,
  ``ephemeral_1h_input_tokens``). ``input_tokens`` is what remains after the last
  breakpoint.
* A prefix shorter than the model's minimum is neither read nor written:
  ``MIN_CACHEABLE_TOKENS`` (1024) for most models, ``MIN_CACHEABLE_TOKENS_HAIKU``
  (2048) for Haiku models (the page's figures, simplified to two).

Tokens are the fake model's (about one per four bytes of the blocks' JSON, the
``cache_control`` fields left out so that moving a breakpoint does not change a
prefix). Time is the emulator's clock; a batch's requests are seen at their
processing times (``_batch``), in the order of its results file: of N requests of a
batch that share a new prefix, one writes it and N - 1 read it. The cache holds
16-byte digests of prefixes, not prefixes, and at most ``max_entries`` of them
(least recently used go first; ``EmulatorConfig.prompt_cache_entries``), so it stays small however many requests pass.
"""

from __future__ import annotations

import collections
import hashlib
from typing import Any

import msgspec
from msgspec import UNSET

__all__ = (
    "MIN_CACHEABLE_TOKENS",
    "MIN_CACHEABLE_TOKENS_HAIKU",
    "CacheUsage",
    "PromptCache",
    "min_cacheable_tokens",
)

MIN_CACHEABLE_TOKENS = 1024
MIN_CACHEABLE_TOKENS_HAIKU = 2048
_TTL = {"5m": 300.0, "1h": 3600.0}
_encoder = msgspec.json.Encoder()


class CacheUsage(msgspec.Struct, frozen=True):
    """The cached part of one request's input, in tokens."""

    read: int = 0
    written_5m: int = 0
    written_1h: int = 0


def min_cacheable_tokens(model: str) -> int:
    """The shortest prefix, in tokens, the cache takes for ``model``."""
    return MIN_CACHEABLE_TOKENS_HAIKU if "haiku" in model else MIN_CACHEABLE_TOKENS


def _bare(block: Any) -> bytes:
    """A block's JSON without its ``cache_control``."""
    if getattr(block, "cache_control", UNSET) is not UNSET:
        block = msgspec.structs.replace(block, cache_control=UNSET)
    return _encoder.encode(block)


def _breakpoints(params: Any, workspace: str) -> list[tuple[int, str, bytes]]:
    """(prefix bytes, ttl, prefix digest) at each breakpoint, in the service's order."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{workspace}\0{params.model}\0".encode())
    size = 0
    marks: list[tuple[int, str, bytes]] = []

    def add(piece: bytes, control: Any) -> None:
        nonlocal size
        h.update(len(piece).to_bytes(8, "little"))
        h.update(piece)
        size += len(piece)
        if control:
            marks.append((size, control.ttl if control.ttl is not UNSET else "5m", h.digest()))

    for tool in params.tools or ():
        add(_bare(tool), tool.cache_control)
    if isinstance(params.system, list):
        for block in params.system:
            add(_bare(block), block.cache_control)
    elif isinstance(params.system, str):
        add(_encoder.encode(params.system), None)
    messages = params.messages
    final = params.cache_control
    for i, message in enumerate(messages):
        h.update(message.role.encode())
        content = message.content
        last = i == len(messages) - 1
        if isinstance(content, str):
            add(_encoder.encode(content), final if last else None)
            continue
        for j, block in enumerate(content):
            control = getattr(block, "cache_control", None)
            add(_bare(block), control or (final if last and j == len(content) - 1 else None))
    return marks


class PromptCache:
    """Prefix digests per workspace and model, with their expiry; a bounded LRU."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        #: digest -> when it expires
        self._entries: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def usage(self, params: Any, workspace: str, now: float) -> CacheUsage | None:
        """Look the request's prefixes up at ``now`` and record what it writes; None
        when it has no breakpoint (its usage has no cache part)."""
        marks = _breakpoints(params, workspace)
        if not marks:
            return None
        floor = min_cacheable_tokens(params.model)
        marks = [m for m in marks if m[0] // 4 >= floor]
        entries = self._entries
        hit = -1
        for k in range(len(marks) - 1, -1, -1):
            if now < entries.get(marks[k][2], now):
                hit = k
                break
        read = marks[hit][0] // 4 if hit >= 0 else 0
        if hit >= 0:  # a read renews the TTL
            self._put(marks[hit][2], now + _TTL[marks[hit][1]])
        written = {"5m": 0, "1h": 0}
        done = read
        for size, ttl, digest in marks[hit + 1 :]:
            tokens = size // 4
            written[ttl] += tokens - done
            done = tokens
            self._put(digest, now + _TTL[ttl])
        return CacheUsage(read, written["5m"], written["1h"])

    def _put(self, digest: bytes, expires: float) -> None:
        entries = self._entries
        # A batch is processed lazily, not in time order: an entry never expires sooner.
        entries[digest] = max(expires, entries.get(digest, expires))
        entries.move_to_end(digest)
        if len(entries) > self.max_entries:
            entries.popitem(last=False)
