"""A sync, I/O-free JSONL line splitter for streamed bodies.

Fed the network chunks of a results download as they come, it returns the complete
lines each chunk finishes. It is correct when a line, or the ``\\r\\n`` ending one,
is split across chunks, and costs one ``bytes.split`` per chunk: only the unfinished
tail is carried over (the same idea as httpx's ``LineDecoder``, on bytes).
"""

from __future__ import annotations

__all__ = ("LineSplitter",)


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
        return self._clean(parts, b"\r" in chunk)

    def flush(self) -> list[bytes]:
        """The last line if the stream did not end with a newline; resets the splitter."""
        tail, self._tail = b"".join(self._tail), []
        return self._clean([tail], True) if tail else []

    @staticmethod
    def _clean(parts: list[bytes], has_cr: bool) -> list[bytes]:
        # Fast path: most chunks have neither CRLF endings nor blank lines, so the
        # common case is two C-level scans of the chunk and no per-line Python work.
        if has_cr:
            parts = [p[:-1] if p[-1:] == b"\r" else p for p in parts]
        if b"" in parts:
            parts = [p for p in parts if p]
        return parts

    @property
    def pending(self) -> int:
        """Bytes held of an unfinished line (for diagnostics)."""
        return sum(map(len, self._tail))
