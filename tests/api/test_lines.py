"""LineSplitter: correct at every chunk boundary, CRLF-aware, skips blank lines.
BlockSplitter: the same lines, left joined in blocks of gathered chunks."""

from __future__ import annotations

import itertools

import pytest

from pipeline.api._lines import BlockSplitter, LineSplitter, cut_lines, split_block


def split_all(chunks: list[bytes]) -> list[bytes]:
    splitter = LineSplitter()
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(splitter.feed(chunk))
    out.extend(splitter.flush())
    return out


def split_blocks(chunks: list[bytes], block_bytes: int = 0) -> list[bytes]:
    splitter = BlockSplitter(block_bytes)
    blocks = [splitter.feed(chunk) for chunk in chunks]
    blocks.append(splitter.flush())
    return [block for block in blocks if block]


def reference(data: bytes) -> list[bytes]:
    """What a line reader should give: LF-split, one trailing CR stripped, no blanks."""
    lines = [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]
    return [line for line in lines if line]


def test_whole_chunk() -> None:
    assert split_all([b'{"a":1}\n{"b":2}\n']) == [b'{"a":1}', b'{"b":2}']


def test_no_trailing_newline_returned_by_flush() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"one\ntwo") == [b"one"]
    assert splitter.pending == 3
    assert splitter.flush() == [b"two"]
    assert splitter.flush() == []
    assert splitter.pending == 0


def test_crlf_and_blank_lines() -> None:
    data = b"a\r\n\r\nb\n\n\nc\r\n\n"
    assert split_all([data]) == [b"a", b"b", b"c"]


def test_lone_cr_line_is_blank() -> None:
    assert split_all([b"\r\nx\n\r"]) == [b"x"]


def test_cr_inside_a_line_is_kept() -> None:
    assert split_all([b"a\rb\n"]) == [b"a\rb"]


def test_empty_chunks_and_empty_stream() -> None:
    assert split_all([]) == []
    assert split_all([b"", b"", b""]) == []
    assert split_all([b"x", b"", b"\n"]) == [b"x"]


@pytest.mark.parametrize(
    "data",
    [
        b'{"custom_id":"a"}\r\n{"custom_id":"b"}\r\n',
        b'{"custom_id":"a"}\n\n{"custom_id":"b"}',
        b"\r\n\r\nx\r\ny\r\n",
    ],
)
def test_every_split_position(data: bytes) -> None:
    expected = reference(data)
    for cut in range(len(data) + 1):
        assert split_all([data[:cut], data[cut:]]) == expected, cut
    for first, second in itertools.combinations(range(len(data) + 1), 2):
        chunks = [data[:first], data[first:second], data[second:]]
        assert split_all(chunks) == expected, (first, second)


def test_crlf_split_between_chunks_gives_no_blank_line() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"line\r") == []
    assert splitter.feed(b"\nnext\r") == [b"line"]
    assert splitter.feed(b"\n") == [b"next"]
    assert splitter.flush() == []


def test_one_byte_chunks() -> None:
    data = b'{"x":1}\r\n\n{"y":2}\n{"z":3}'
    assert split_all([bytes([b]) for b in data]) == [b'{"x":1}', b'{"y":2}', b'{"z":3}']


def test_exhaustive_small_inputs_every_chunking() -> None:
    # Every string of length <= 6 over {a, \r, \n}, cut into chunks in every way.
    alphabet = (b"a", b"\r", b"\n")
    checked = 0
    for length in range(7):
        for symbols in itertools.product(alphabet, repeat=length):
            data = b"".join(symbols)
            expected = reference(data)
            # Each of the length-1 gaps is a cut or not: 2**(length-1) chunkings.
            for mask in range(1 << max(length - 1, 0)):
                chunks, start = [], 0
                for gap in range(1, length):
                    if mask >> (gap - 1) & 1:
                        chunks.append(data[start:gap])
                        start = gap
                chunks.append(data[start:])
                assert split_all(chunks) == expected, (data, chunks)
                for block_bytes in (0, 2, 100):
                    blocks = split_blocks(chunks, block_bytes)
                    lines = [line for block in blocks for line in split_block(block)]
                    assert lines == expected, (data, chunks, block_bytes)
                checked += 1
    assert checked > 20_000


def test_long_line_in_many_chunks() -> None:
    line = b"x" * 100_000
    chunks = [line[i : i + 1000] for i in range(0, len(line), 1000)] + [b"\nend\n"]
    assert split_all(chunks) == [line, b"end"]


def test_returned_lines_are_bytes_and_nonempty() -> None:
    out = split_all([b"a\n\n", b"\r\nb"])
    assert out == [b"a", b"b"]
    assert all(type(line) is bytes and line for line in out)


@pytest.mark.parametrize("block_bytes", [0, 1, 40, 1 << 20])
def test_blocks_are_the_bytes_as_they_came(block_bytes: int) -> None:
    data = b"".join(b'{"n":%d}\n' % i for i in range(50))
    for size in (1, 7, 64, len(data)):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        blocks = split_blocks(chunks, block_bytes)
        assert b"\n".join(blocks) + b"\n" == data, size
        assert all(type(block) is bytes for block in blocks)


def test_block_splitter_gathers_chunks_until_block_bytes() -> None:
    splitter = BlockSplitter(10)
    assert splitter.feed(b"ab\ncd") == b""  # 5 bytes held: not yet
    assert splitter.feed(b"\nef\ngh") == b"ab\ncd\nef"
    assert splitter.feed(b"ij") == b""  # "ghij" held, no whole line
    assert splitter.flush() == b"ghij"
    assert splitter.flush() == b""


def test_block_splitter_whole_keeps_the_unfinished_line() -> None:
    splitter = BlockSplitter(1 << 20)
    for chunk in (b"a\n", b"b\nc", b"cc", b"c"):
        assert splitter.feed(chunk) == b""
    assert splitter.whole() == b"a\nb"  # what a break delivers: "cccc" is cut short
    assert splitter.whole() == b""
    assert splitter.flush() == b"cccc"
    assert LineSplitter().whole() == []  # a LineSplitter holds no whole line


def test_split_block_drops_crs_and_blank_lines() -> None:
    assert split_block(b"") == []
    assert split_block(b"a\r\n\nb\r\n\r") == [b"a", b"b"]


def test_cut_lines_every_choice() -> None:
    lines = [b"zero", b"1", b"two2", b"three", b"4"]
    block = b"\n".join(lines)
    for n in range(len(lines) + 1):
        for indexes in itertools.combinations(range(len(lines)), n):
            kept, cut = cut_lines(block, list(indexes))
            assert kept == b"\n".join(x for i, x in enumerate(lines) if i not in indexes)
            assert cut == [lines[i] for i in indexes]
