"""The pgoutput decoder on messages built by hand as the protocol describes them (no server)."""

from __future__ import annotations

import struct

import pytest

from datasurface.cdc.pgoutput import UNCHANGED, Change, Commit, DecodeError, Decoder, Truncate, format_lsn, parse_lsn


def _s(text: str) -> bytes:
    return text.encode() + b"\0"


def relation(relid: int, schema: str, table: str, columns: list[str]) -> bytes:
    body = b"R" + struct.pack(">I", relid) + _s(schema) + _s(table) + b"d" + struct.pack(">h", len(columns))
    for i, name in enumerate(columns):
        body += bytes([1 if i == 0 else 0]) + _s(name) + struct.pack(">Ii", 23, -1)
    return body


def tuple_data(*values: bytes | object | None) -> bytes:
    out = struct.pack(">h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED:
            out += b"u"
        else:
            assert isinstance(v, bytes)
            out += b"t" + struct.pack(">i", len(v)) + v
    return out


def test_changes_truncates_and_commits() -> None:
    d = Decoder()
    assert list(d.decode(1, relation(16384, "public", "t", ["id", "body"]))) == []
    rel = d.relations[16384]
    assert rel.columns == ("id", "body")
    insert = b"I" + struct.pack(">I", 16384) + b"N" + tuple_data(b"1", "é".encode())
    assert list(d.decode(2, insert)) == [Change(rel, "I", (b"1", "é".encode()), None)]
    update = b"U" + struct.pack(">I", 16384) + b"K" + tuple_data(b"1", None) + b"N" + tuple_data(b"2", UNCHANGED)
    assert list(d.decode(3, update)) == [Change(rel, "U", (b"2", UNCHANGED), (b"1", None), False)]
    full = b"U" + struct.pack(">I", 16384) + b"O" + tuple_data(b"1", b"x") + b"N" + tuple_data(b"1", b"")
    assert list(d.decode(3, full)) == [Change(rel, "U", (b"1", b""), (b"1", b"x"), True)]
    delete = b"D" + struct.pack(">I", 16384) + b"K" + tuple_data(b"2", None)
    assert list(d.decode(4, delete)) == [Change(rel, "D", None, (b"2", None))]
    truncate = b"T" + struct.pack(">ib", 1, 0) + struct.pack(">I", 16384)
    assert list(d.decode(5, truncate)) == [Truncate((rel,))]
    commit = b"C" + b"\0" + struct.pack(">qqq", 10, 20, 0)
    assert list(d.decode(0x1_0000_0020, commit)) == [Commit(0x1_0000_0020)]
    assert list(d.decode(6, b"B" + struct.pack(">qqi", 1, 2, 3))) == []


def test_unknown_messages_and_relations_are_errors() -> None:
    d = Decoder()
    with pytest.raises(DecodeError, match="before its Relation message"):
        list(d.decode(1, b"I" + struct.pack(">I", 7) + b"N" + tuple_data(b"1")))
    with pytest.raises(DecodeError, match="unknown type"):
        list(d.decode(1, b"Z"))


def test_lsn_text() -> None:
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    assert parse_lsn("0/10") == 16
