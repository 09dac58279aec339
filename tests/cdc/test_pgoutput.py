"""The pgoutput decoder, and the change rows the capture writes, on messages built by hand as the protocol
describes them (no server)."""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
import yaml

from datasurface.cdc.pgoutput import NULL_ELEMENT, UNCHANGED, DecodeError, Decoder, format_lsn, parse_lsn


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


def test_relations_tuples_and_truncates() -> None:
    d = Decoder()
    d.relation(relation(16384, "public", "t", ["id", "body"]), 0)
    rel = d.relations[16384]
    assert rel == ("public", "t", ("id", "body"))
    rid = struct.pack(">I", 16384)
    t = struct.pack(">i", 1)  # an element's length prefix
    insert = b"I" + rid + b"N" + tuple_data(b"1", "é".encode())
    assert d.elements(insert, 0) == (rel, 16384, [t + b"1", struct.pack(">i", 2) + "é".encode()], None, False, False)
    update = b"U" + rid + b"K" + tuple_data(b"1", None) + b"N" + tuple_data(b"2", UNCHANGED)
    assert d.elements(update, 0) == (rel, 16384, [t + b"2", UNCHANGED], [t + b"1", NULL_ELEMENT], False, True)
    full = b"U" + rid + b"O" + tuple_data(b"1", b"x") + b"N" + tuple_data(b"1", b"")
    assert d.elements(full, 0) == (rel, 16384, [t + b"1", struct.pack(">i", 0)], [t + b"1", t + b"x"], True, False)
    delete = b"D" + rid + b"K" + tuple_data(b"2", None)
    assert d.elements(b"xx" + delete, 2) == (rel, 16384, None, [t + b"2", NULL_ELEMENT], False, False)  # at an offset
    truncate = b"T" + struct.pack(">ib", 1, 0) + rid
    assert d.truncated(truncate, 0) == (rel,)


def test_unknown_relations_and_tuples_are_errors() -> None:
    d = Decoder()
    with pytest.raises(DecodeError, match="before its Relation message"):
        d.elements(b"I" + struct.pack(">I", 7) + b"N" + tuple_data(b"1"), 0)
    d.relation(relation(7, "public", "t", ["id"]), 0)
    with pytest.raises(DecodeError, match="without its new tuple"):
        d.elements(b"U" + struct.pack(">I", 7) + b"K" + tuple_data(b"1") + b"?", 0)
    with pytest.raises(DecodeError, match="unknown kind 'x'"):
        d.elements(b"I" + struct.pack(">I", 7) + b"N" + struct.pack(">h", 1) + b"x", 0)


def test_lsn_text() -> None:
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"
    assert parse_lsn("0/10") == 16


# ---- the change rows the capture writes (cdc/capture.py), from a source's COPY of (lsn, message) rows ----

def copy_stream(messages: list[bytes]) -> bytes:
    rows = b"".join(struct.pack(">hiqi", 2, 8, lsn, len(m)) + m for lsn, m in enumerate(messages, start=100))
    return b"PGCOPY\n\xff\r\n\0" + struct.pack(">ii", 0, 0) + rows + struct.pack(">h", -1)


def change_rows(out: bytes) -> list[tuple[int, int, str, list[int] | None, list[bytes | None]]]:
    """The encoder's binary COPY rows: (seq, dataset, op, unchanged positions, values), between the COPY's
    header and trailer (none at all without a row)."""
    header, trailer = b"PGCOPY\n\xff\r\n\0" + struct.pack(">ii", 0, 0), struct.pack(">h", -1)
    assert (out.startswith(header) and out.endswith(trailer)) or not out
    out = out[:-len(trailer)] if out else out
    rows, pos = [], len(header) if out else 0

    def field() -> bytes | None:
        nonlocal pos
        (n,) = struct.unpack_from(">i", out, pos)
        pos += 4
        if n < 0:
            return None
        pos += n
        return out[pos - n:pos]

    def array(data: bytes | None) -> list[bytes | None] | None:
        if data is None:
            return None
        ndim, _, _ = struct.unpack_from(">iiI", data)
        assert ndim == 1
        (count, _), at, items = struct.unpack_from(">ii", data, 12), 20, []
        for _ in range(count):
            (n,) = struct.unpack_from(">i", data, at)
            items.append(None if n < 0 else data[at + 4:at + 4 + n])
            at += 4 + max(n, 0)
        return items

    while pos < len(out):
        assert struct.unpack_from(">h", out, pos)[0] == 5
        pos += 2
        seq, ds, op = field(), field(), field()
        unchanged = array(field())
        values = array(field())
        assert seq and ds and op and values is not None
        rows.append((struct.unpack(">q", seq)[0], struct.unpack(">h", ds)[0], op.decode(),
                     None if unchanged is None else [struct.unpack(">h", u or b"")[0] for u in unchanged], values))
    return rows


MARKER = "ds_p_s 0123abcd"  # this run's marker (Capture.marker)


def message(prefix: str, content: str) -> bytes:
    """A logical Message (pg_logical_emit_message, transactional)."""
    body = content.encode()
    return b"M\x01" + struct.pack(">q", 7) + prefix.encode() + b"\0" + struct.pack(">i", len(body)) + body


COMMIT = b"C" + b"\0" + struct.pack(">qqq", 10, 20, 0)


def encode(messages: list[bytes], chunk: int, general: bool = False) -> tuple[list[Any], Any]:
    from datasurface.cdc import capture
    from datasurface.model import parse_model

    class General(capture._Encoder):  # every change through `_change`: the general path
        def _target(self, relid: int, relation: Any) -> Any:
            found = super()._target(relid, relation)
            self._plain.clear()
            return found

    model = parse_model(yaml.safe_dump({
        "apiVersion": "datasurface/v1", "kind": "Model", "stores": [{
            "name": "S", "source": {"host": "h", "port": 1, "database": "d", "credential": "c", "ingestion": "cdc"},
            "datasets": [{"name": "t", "primaryKey": ["id"], "columns": [{"name": "id", "type": "integer"},
                                                                          {"name": "body", "type": "text"}]}]}]}), "p")
    encoder = (General if general else capture._Encoder)("public", model.stores[0].datasets, MARKER)
    out = io.BytesIO()
    encoder.out = out
    data = copy_stream(messages)
    for i in range(0, len(data), chunk):
        encoder.write(data[i:i + chunk])
    encoder.finish()
    return change_rows(out.getvalue()), encoder


@pytest.mark.parametrize("chunk", [1, 7, 1 << 16])
def test_capture_writes_each_change_as_its_row(chunk: int) -> None:
    """Inserts, updates and deletes of a table in the model's column order take the capture's short path;
    an old key, an unchanged TOASTed value, another table and a table whose columns moved take the general
    one: both write the same rows, whatever the chunks the source's COPY arrives in."""
    rel = struct.pack(">I", 16384)
    moved = struct.pack(">I", 16385)
    messages = [
        b"B" + struct.pack(">qqi", 1, 2, 3),
        relation(16384, "public", "t", ["id", "body"]),
        b"I" + rel + b"N" + tuple_data(b"1", "é".encode()),
        b"I" + rel + b"N" + tuple_data(b"2", None),
        b"U" + rel + b"N" + tuple_data(b"1", b"x"),
        b"U" + rel + b"K" + tuple_data(b"2", None) + b"N" + tuple_data(b"3", b"y"),  # a new key
        b"U" + rel + b"N" + tuple_data(b"3", UNCHANGED),
        b"D" + rel + b"K" + tuple_data(b"1", None),
        b"D" + rel + b"O" + tuple_data(b"3", b"y"),
        relation(16385, "other", "t", ["id", "body"]),
        b"I" + moved + b"N" + tuple_data(b"9", b"z"),  # not the store's schema
        relation(16384, "public", "t", ["body", "id"]),  # the table's columns changed order
        b"I" + rel + b"N" + tuple_data(b"w", b"4"),
        COMMIT,
        b"B" + struct.pack(">qqi", 1, 2, 3),
        message("datasurface", "ds_p_s 99999999"),  # an earlier run's marker, left unread
        COMMIT,
        b"B" + struct.pack(">qqi", 1, 2, 3),
        message("datasurface", MARKER),  # this run's: its commit ends the batch
        COMMIT,
        b"B" + struct.pack(">qqi", 1, 2, 3),  # committed after the marker: the next batch's
        b"I" + rel + b"N" + tuple_data(b"v", b"5"),
        b"T" + struct.pack(">ib", 1, 0) + rel,
        COMMIT,
    ]
    rows, encoder = encode(messages, chunk)
    assert rows == [
        (1, 0, "I", None, [b"1", "é".encode()]),
        (2, 0, "I", None, [b"2", None]),
        (3, 0, "U", None, [b"1", b"x"]),
        (4, 0, "D", None, [b"2", None]),
        (5, 0, "U", None, [b"3", b"y"]),
        (6, 0, "U", [2], [b"3", None]),
        (7, 0, "D", None, [b"1", None]),
        (8, 0, "D", None, [b"3", None]),
        (9, 0, "I", None, [b"4", b"w"]),
    ]
    assert encoder.rows == {"t": 9}
    assert encoder.last_commit == 100 + messages.index(message("datasurface", MARKER)) + 1
    assert (rows, encoder.rows) == (lambda r, e: (r, e.rows))(*encode(messages, chunk, general=True))
    # a batch of no change of the store's tables (another table's, and the batch's marker): nothing is
    # written, not even the COPY's header, so the merge side makes no change table and runs no COPY
    rows, encoder = encode([*messages[:2], *messages[9:11], message("datasurface", MARKER), COMMIT], chunk)
    assert rows == [] and encoder.rows == {"t": 0} and encoder.last_commit == 105 and encoder.ended
