"""A decoder of pgoutput's messages (protocol version 1), as `pg_logical_slot_peek_binary_changes` returns them.

Only what a batch needs: Relation messages (which table a relation id is, and its columns), the tuples of
Insert, Update and Delete, the relations of Truncate and the prefix and content of a logical Message
(capture.py reads the kind of each message, and a Commit's position from the row it arrives in). Values stay
the server's text output (pgoutput sends the type's output function's text), which the merge side casts back
with the type's input function: the same values a snapshot's COPY delivers. The layout of each message is
PostgreSQL's "Logical Replication Message Formats".
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from datasurface.errors import DataSurfaceError


class UnchangedToast:
    """A value pgoutput leaves out of an UPDATE: a TOASTed value that the update did not change."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = UnchangedToast()
Element = bytes | UnchangedToast  # a column as a binary array element: Int32 length + bytes (-1: NULL)
NULL_ELEMENT = b"\xff\xff\xff\xff"

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")


class Relation(NamedTuple):
    schema: str
    table: str
    columns: tuple[str, ...]


# (relation, relation id, new tuple, old tuple, whether the old tuple is the whole row (REPLICA IDENTITY
# FULL), whether the new tuple left values out)
RawChange = tuple[Relation, int, list[Element] | None, list[Element] | None, bool, bool]


class DecodeError(DataSurfaceError):
    """A message this decoder does not understand (a server speaking a newer protocol, or a bug)."""


class Decoder:
    """Keeps the relations the stream announced, and reads the messages that refer to them.

    A tuple's columns are read as binary array elements: pgoutput writes a text column as its kind byte, an
    Int32 length and the bytes, which without the kind byte is exactly an element of a binary `text[]`
    (NULL: length -1). `elements` hands them over as such, so a change row is written by slicing, without
    decoding each value (cdc/capture.py)."""

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}

    def known(self, relid: int) -> Relation:
        try:
            return self.relations[relid]
        except KeyError:
            raise DecodeError(f"pgoutput change of relation {relid} before its Relation message") from None

    def truncated(self, data: bytes, start: int) -> tuple[Relation, ...]:
        """The relations of the Truncate message at `start`."""
        (count,) = _I32.unpack_from(data, start + 1)
        return tuple(self.known(i) for i in struct.unpack_from(f">{count}I", data, start + 6))

    @staticmethod
    def message(data: bytes, start: int) -> tuple[str, bytes]:
        """The prefix and the content of the logical Message at `start` (`pg_logical_emit_message`)."""
        prefix, pos = _string(data, start + 10)  # after the flags and the message's LSN
        (length,) = _I32.unpack_from(data, pos)
        return prefix, data[pos + 4:pos + 4 + length]

    def relation(self, data: bytes, start: int) -> None:
        """Read the Relation message at `start`."""
        (relid,) = _U32.unpack_from(data, start + 1)
        schema, pos = _string(data, start + 5)
        table, pos = _string(data, pos)
        pos += 1  # replica identity setting
        (ncols,) = _I16.unpack_from(data, pos)
        pos += 2
        columns = []
        for _ in range(ncols):
            name, pos = _string(data, pos + 1)  # after the flags byte
            pos += 8  # type oid, type modifier
            columns.append(name)
        self.relations[relid] = Relation(schema, table, tuple(columns))

    def elements(self, data: bytes, start: int) -> RawChange:
        """The Insert, Update or Delete message at `start`, its tuples as binary array elements."""
        (relid,) = _U32.unpack_from(data, start + 1)
        relation = self.known(relid)
        pos = start + 5
        old = new = None
        tag = data[pos]
        old_full = tag == 0x4F  # 'O'
        if old_full or tag == 0x4B:  # 'K'
            old, pos, _ = _tuple(data, pos + 1)
        left_out = False
        if data[start] != 0x44:  # not a Delete: the new tuple follows
            if data[pos] != 0x4E:  # 'N'
                raise DecodeError(f"pgoutput {chr(data[start])} message of {relation.table} without its new tuple")
            new, pos, left_out = _tuple(data, pos + 1)
        return relation, relid, new, old, old_full, left_out


def _string(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode(), end + 1


def _tuple(data: bytes, pos: int) -> tuple[list[Element], int, bool]:
    """The TupleData at `pos` as binary array elements; where it ends; whether a value was left out. (The
    loop every changed column goes through: its names are local.)"""
    ncols = data[pos] << 8 | data[pos + 1]
    pos += 2
    out: list[Element] = []
    append, unpack = out.append, _I32.unpack_from
    left_out = False
    for _ in range(ncols):
        kind = data[pos]
        if kind == 0x74:  # 't': Int32 length + text, an array element as it stands
            end = pos + 5 + unpack(data, pos + 1)[0]
            append(data[pos + 1:end])
            pos = end
        elif kind == 0x6E:  # 'n': NULL
            append(NULL_ELEMENT)
            pos += 1
        elif kind == 0x75:  # 'u': unchanged TOASTed value
            append(UNCHANGED)
            left_out = True
            pos += 1
        else:
            raise DecodeError(f"pgoutput tuple column of unknown kind {chr(kind)!r}")
    return out, pos, left_out


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)
