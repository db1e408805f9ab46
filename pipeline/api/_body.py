"""A batch-create body spliced from the requests' own bytes as it is sent, never
joined whole.

``{"requests":[`` + the lines joined by ``,`` + ``]}`` is what goes over the wire
(PERFORMANCE.md: splice the validated original bytes, re-encode nothing). Joined, a
body of 100,000 requests is a second copy of about 65 MB next to the requests it
was made of, and httpx / h11 / the transport add their own copies of whatever they
are handed at once. ``SplicedBody`` knows its size up front (the ``content-length``,
what the ledger records for reconciliation) and yields it in pieces of about
``PIECE_BYTES``: each piece is joined, written and freed before the next, so
sending a body costs a MiB or two, not several times its size.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ("BODY_HEAD", "BODY_TAIL", "PIECE_BYTES", "SplicedBody")

BODY_HEAD = b'{"requests":['
BODY_TAIL = b"]}"
#: bytes of request lines joined into one piece of the stream
PIECE_BYTES = 1 << 20


class SplicedBody:
    """The create body of ``raws`` (each one request's JSON, ``{"custom_id":...}``),
    produced piece by piece each time ``pieces()`` is iterated (a retried POST sends
    it anew). ``len()`` is its size in bytes; ``bytes()`` joins it whole (for tests
    and small bodies). ``piece_bytes``: the size of a piece."""

    __slots__ = ("_raws", "_stops", "size")

    def __init__(self, raws: Sequence[bytes], piece_bytes: int = PIECE_BYTES) -> None:
        self._raws = raws
        # where each piece ends, found by bisection in the running sizes (one pass
        # over the lines, in C, not a Python step per line): a piece ends with the
        # line that takes it to ``piece_bytes`` or past
        ends = list(accumulate(map(len, raws)))
        count = len(ends)
        stops: list[int] = []
        start = 0
        while start < count:
            target = (ends[start - 1] if start else 0) + piece_bytes
            start = min(bisect_left(ends, target, start) + 1, count)
            stops.append(start)
        self._stops = stops
        #: the body's exact size: envelope, lines, and a comma between two lines
        self.size = len(BODY_HEAD) + len(BODY_TAIL) + (ends[-1] if ends else 0) + max(count - 1, 0)

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return b"".join(self.pieces())

    def __repr__(self) -> str:
        return f"SplicedBody({len(self._raws)} requests, {self.size} bytes)"

    def pieces(self) -> Iterator[bytes]:
        """The body in order: the envelope's head, pieces of about ``piece_bytes``
        of lines (``,`` between lines and before each piece after the first), the
        envelope's tail."""
        yield BODY_HEAD
        raws = self._raws
        start = 0
        for stop in self._stops:
            if start:
                yield b","
            yield b",".join(raws[start:stop])
            start = stop
        yield BODY_TAIL
