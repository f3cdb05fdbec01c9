"""Pure pieces of the server: byte ranges, cursors, the blob store's atomic writes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.blobs import BlobStore
from server.errors import InvalidInputError, RangeNotSatisfiableError
from server.pagination import decode_cursor, encode_cursor, next_cursor, page_request
from server.registry.controllers import parse_range


@settings(max_examples=50, deadline=None)
@given(size=st.integers(1, 10_000), start=st.integers(0, 12_000), length=st.integers(0, 12_000))
def test_range_is_inside_the_file_or_refused(size: int, start: int, length: int) -> None:
    """``bytes=a-b`` gives offsets inside the file, or 416 when it starts beyond the end."""
    header = f"bytes={start}-{start + length}"
    if start >= size:
        with pytest.raises(RangeNotSatisfiableError):
            parse_range(header, size)
        return
    first, last = parse_range(header, size)
    assert (first, last) == (start, min(start + length, size - 1))


@settings(max_examples=50, deadline=None)
@given(size=st.integers(1, 10_000), suffix=st.integers(1, 20_000))
def test_suffix_range_is_the_tail(size: int, suffix: int) -> None:
    """``bytes=-n`` is the last n bytes (the whole file when n exceeds it)."""
    first, last = parse_range(f"bytes=-{suffix}", size)
    assert last == size - 1
    assert last - first + 1 == min(suffix, size)


@pytest.mark.parametrize("header", ["items=0-1", "bytes=0-1,3-4", "bytes=a-b", "bytes=5-2"])
def test_unsupported_ranges_are_refused(header: str) -> None:
    """Other units, several ranges, garbage and inverted ranges get 416."""
    with pytest.raises(RangeNotSatisfiableError):
        parse_range(header, 100)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.one_of(st.integers(), st.text(max_size=20)), max_size=3))
def test_cursor_round_trip(key: list[object]) -> None:
    """A cursor decodes to the sort key it was made from."""
    assert decode_cursor(encode_cursor(key)) == key


def test_page_size_is_capped_and_bad_cursors_refused() -> None:
    """limit above the cap is cut to the cap; zero and foreign cursors are refused."""
    assert page_request(10_000, None, default=100, cap=500).limit == 500
    assert page_request(None, None, default=100, cap=500).limit == 100
    with pytest.raises(InvalidInputError):
        page_request(0, None, default=100, cap=500)
    with pytest.raises(InvalidInputError):
        page_request(5, "not base64 json", default=100, cap=500)
    rows = list(range(6))
    page, cursor = next_cursor(rows, 5, lambda r: [r])
    assert page == rows[:5]
    assert cursor is not None
    assert decode_cursor(cursor) == [4]
    assert next_cursor(rows[:5], 5, lambda r: [r]) == (rows[:5], None)


def test_blobs_are_content_addressed_and_complete(tmp_path: Path) -> None:
    """A blob lands under sha256/ab/<digest> in one rename; no temp file is left behind."""
    store = BlobStore(tmp_path / "blobs", tmp_path / "tmp")
    digest, path = store.put_bytes(b"bundle bytes")
    assert digest == hashlib.sha256(b"bundle bytes").hexdigest()
    assert path == tmp_path / "blobs" / "sha256" / digest[:2] / digest
    assert path.read_bytes() == b"bundle bytes"
    assert store.put_bytes(b"bundle bytes")[1] == path
    assert list((tmp_path / "tmp").iterdir()) == []
    with pytest.raises(InvalidInputError):
        store.path_for("../../etc/passwd")
