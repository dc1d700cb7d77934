"""The fast line encoder writes exactly what json.dumps would, for any bytes, split anywhere."""

from __future__ import annotations

import codecs
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from recorders.castlines import LineEncoder, escape_utf8


def reference(chunks: list[bytes], *, onlcr: bool) -> bytes:
    """The writer as it was before the fast path: decode, translate, json.dumps, encode."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines = []
    for i, chunk in enumerate(chunks):
        if onlcr:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        text = decoder.decode(chunk)
        if text:
            lines.append(json.dumps([round(i * 0.25, 6), "o", text], ensure_ascii=False))
    tail = decoder.decode(b"", final=True)
    if tail:
        lines.append(json.dumps([round(len(chunks) * 0.25, 6), "o", tail], ensure_ascii=False))
    return "".join(line + "\n" for line in lines).encode("utf-8", "replace")


def encoded(chunks: list[bytes], *, onlcr: bool) -> bytes:
    encoder = LineEncoder(0.0)
    out = b"".join(encoder.output(chunk, i * 0.25, onlcr=onlcr) for i, chunk in enumerate(chunks))
    return out + encoder.final(len(chunks) * 0.25)


# Terminal-ish bytes: controls, quotes, backslashes, CR/LF, multi-byte and invalid UTF-8.
_ALPHABET = [bytes([c]) for c in range(0x20)] + [b'"', b"\\", b"a", b"\x7f", b"\xff", b"\xc3", b"\xa9",
                                                   "é".encode(), "€".encode(), "😀".encode(), "\ufffd".encode(),
                                                   "\u2028".encode(), b"\r\n", b"\x1b[1;31m"]
_CHUNKS = st.lists(st.lists(st.sampled_from(_ALPHABET), max_size=30).map(b"".join), max_size=12)


@settings(max_examples=400, deadline=None)
@given(_CHUNKS, st.booleans())
def test_same_lines_as_json_dumps(chunks: list[bytes], onlcr: bool) -> None:
    assert encoded(chunks, onlcr=onlcr) == reference(chunks, onlcr=onlcr)


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",))))  # lone surrogates are not UTF-8
def test_escape_matches_json_for_any_text(text: str) -> None:
    assert b'"' + escape_utf8(text.encode()) + b'"' == json.dumps(text, ensure_ascii=False).encode()


def test_a_character_split_across_chunks_is_joined() -> None:
    encoder = LineEncoder(0.0)
    euro = "€".encode()
    assert encoder.output(euro[:1], 0.1) == b""  # nothing complete yet: no line, no time used
    assert encoder.output(euro[1:] + b"\n", 0.2, onlcr=True) == '[0.2, "o", "€\\r\\n"]\n'.encode()


def test_times_never_go_backwards() -> None:
    encoder = LineEncoder(10.0)
    assert encoder.output(b"a", 11.5).startswith(b"[1.5,")
    assert encoder.output(b"b", 11.0).startswith(b"[1.5,")  # the clock stepped back
    assert encoder.text("m", "x", 12.0).startswith(b"[2.0,")
