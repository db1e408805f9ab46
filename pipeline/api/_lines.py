"""Sync, I/O-free JSONL splitters for streamed bodies.

Fed the network chunks of a results download as they come, a ``LineSplitter``
returns the complete lines each chunk finishes. It is correct when a line, or the
``\\r\\n`` ending one, is split across chunks, and costs one ``bytes.split`` per chunk:
only the unfinished tail is carried over (the same idea as httpx's ``LineDecoder``,
on bytes).

A ``BlockSplitter`` cuts the same stream into blocks of whole lines left joined, for
a consumer that decodes a block in one call and writes it as it came: it never makes
a ``bytes`` object per line (on ~500-byte result lines, splitting alone costs half
as much as decoding), and it gathers network chunks (64 KiB at most from httpx, often
half that) into blocks of ``BLOCK_BYTES``, so the consumer's work per block (an
await or two, the pricing, a sink write) is spread over some 2,000 lines.
``split_block`` turns a block into the lines a ``LineSplitter`` returns; ``cut_lines``
takes a few lines out of one.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

__all__ = (
    "BLOCK_BYTES",
    "BlockSplitter",
    "LineSplitter",
    "Splitter",
    "cut_lines",
    "split_block",
)

#: Bytes a ``BlockSplitter`` gathers before it returns a block (one sink write).
BLOCK_BYTES = 1 << 20

_T_co = TypeVar("_T_co", covariant=True)


class Splitter(Protocol[_T_co]):
    """What a results body is streamed through (a falsy item is "nothing yet")."""

    def feed(self, chunk: bytes) -> _T_co:
        """What ``chunk`` completes."""
        ...

    def flush(self) -> _T_co:
        """What is held at the end of the stream, the last line too."""
        ...

    def whole(self) -> _T_co:
        """The whole lines held, when the stream broke (the unfinished one is dropped
        with the splitter)."""
        ...


class LineSplitter:
    """Split a byte stream into lines: ``feed(chunk)`` per chunk, ``flush()`` at the end.

    Lines are returned without their terminator (``\\n``, or ``\\r\\n``); blank lines
    (also ones made of a lone ``\\r``) are skipped, so every returned line is non-empty.
    A last line without a trailing newline is returned by ``flush()``.
    """

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        # Pieces of the unfinished last line; a list so that a long line arriving in
        # many small chunks is joined once (linear), not re-concatenated per chunk.
        self._tail: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines completed by ``chunk``, in order."""
        if not chunk:
            return []
        if b"\n" not in chunk:
            self._tail.append(chunk)
            return []
        if self._tail:
            self._tail.append(chunk)
            chunk = b"".join(self._tail)
        parts = chunk.split(b"\n")
        last = parts.pop()
        self._tail = [last] if last else []
        return _clean(parts, b"\r" in chunk)

    def flush(self) -> list[bytes]:
        """The last line if the stream did not end with a newline; resets the splitter."""
        tail, self._tail = b"".join(self._tail), []
        return _clean([tail], True) if tail else []

    def whole(self) -> list[bytes]:
        """Nothing: every whole line was returned by ``feed``."""
        return []

    @property
    def pending(self) -> int:
        """Bytes held of an unfinished line (for diagnostics)."""
        return sum(map(len, self._tail))


class BlockSplitter:
    """Cut a byte stream at line ends into blocks of whole lines: ``feed(chunk)`` per
    chunk, ``flush()`` at the end.

    A block is lines joined by ``\\n``, without the last one's, as they came: CRs and
    blank lines are still in it (``split_block`` gives its lines as ``LineSplitter``
    would). ``feed`` returns one once ``block_bytes`` are held, else ``b""``.
    """

    __slots__ = ("_held", "_size", "block_bytes")

    def __init__(self, block_bytes: int = BLOCK_BYTES) -> None:
        self.block_bytes = block_bytes
        # the chunks fed since the last block (a list: joined once, into the block)
        self._held: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> bytes:
        """The whole lines held, once ``block_bytes`` are (else ``b""``)."""
        if chunk:
            self._held.append(chunk)
            self._size += len(chunk)
        return self.whole() if self._size >= self.block_bytes else b""

    def whole(self) -> bytes:
        """The whole lines held as a block (``b""`` if none); the unfinished last line
        stays held."""
        held = self._held
        for k in range(len(held) - 1, -1, -1):
            end = held[k].rfind(b"\n")
            if end >= 0:
                break
        else:
            return b""
        piece = held[k]
        # one copy: the pieces go straight into the block
        block = b"".join([*held[:k], memoryview(piece)[:end]])
        self._held = [rest for rest in (piece[end + 1 :], *held[k + 1 :]) if rest]
        self._size = sum(map(len, self._held))
        return block

    def flush(self) -> bytes:
        """All that is held, the last line too; resets the splitter."""
        data, self._held, self._size = b"".join(self._held), [], 0
        return data[:-1] if data[-1:] == b"\n" else data


def split_block(block: bytes) -> list[bytes]:
    """The lines of a ``BlockSplitter`` block, as ``LineSplitter.feed`` returns them."""
    if not block:
        return []
    return _clean(block.split(b"\n"), b"\r" in block)


def cut_lines(block: bytes, indexes: list[int]) -> tuple[bytes, list[bytes]]:
    """The block without its lines at ``indexes`` (sorted), and those lines: for a
    block that is exactly its lines joined (no CR, no blank line), a few lines taken
    out cost a ``find`` per line before the last of them, not a ``bytes`` per line."""
    find = block.find
    view = memoryview(block)
    kept: list[memoryview] = []
    cut: list[bytes] = []
    line = start = done = 0  # the line at ``start``; the bytes before ``done`` are sorted
    for index in indexes:
        while line < index:
            start = find(b"\n", start) + 1
            line += 1
        end = find(b"\n", start)
        if end < 0:
            end = len(block)
        cut.append(block[start:end])
        if start > done:
            kept.append(view[done : start - 1])
        done = start = end + 1
        line += 1
    if done < len(block):
        kept.append(view[done:])
    return b"\n".join(kept), cut


def _clean(parts: list[bytes], has_cr: bool) -> list[bytes]:
    # Fast path: most chunks have neither CRLF endings nor blank lines, so the
    # common case is two C-level scans of the chunk and no per-line Python work.
    if has_cr:
        parts = [p[:-1] if p[-1:] == b"\r" else p for p in parts]
    if b"" in parts:
        parts = [p for p in parts if p]
    return parts
