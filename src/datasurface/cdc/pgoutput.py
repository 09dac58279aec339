"""A decoder of pgoutput's messages (protocol version 1), as `pg_logical_slot_peek_binary_changes` returns them.

Only what a batch needs: Relation messages (which table a relation id is, and its columns), Insert, Update,
Delete, Truncate and Commit. Values stay the server's text output (pgoutput sends the type's output
function's text), which the merge side casts back with the type's input function: the same values a
snapshot's COPY delivers. The layout of each message is PostgreSQL's "Logical Replication Message Formats".
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from datasurface.errors import DataSurfaceError


class UnchangedToast:
    """A value pgoutput leaves out of an UPDATE: a TOASTed value that the update did not change."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = UnchangedToast()
Value = bytes | None | UnchangedToast

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")


class Relation(NamedTuple):
    schema: str
    table: str
    columns: tuple[str, ...]


class Change(NamedTuple):
    """One row change: `op` I, U or D. `old`: the row before an UPDATE (only when its replica identity
    changed, or always under REPLICA IDENTITY FULL) or the deleted row: all its columns when `old_full`
    (REPLICA IDENTITY FULL), else its replica identity's columns, the others NULL."""

    relation: Relation
    op: str
    new: tuple[Value, ...] | None
    old: tuple[Value, ...] | None
    old_full: bool = False


class Truncate(NamedTuple):
    relations: tuple[Relation, ...]


class Commit(NamedTuple):
    end_lsn: int


Event = Change | Truncate | Commit


class DecodeError(DataSurfaceError):
    """A message this decoder does not understand (a server speaking a newer protocol, or a bug)."""


class Decoder:
    """Keeps the relations the stream announced; `decode` turns one message into its events."""

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}

    def decode(self, lsn: int, data: bytes) -> Iterator[Event]:
        kind = data[:1]
        if kind in (b"I", b"U", b"D"):
            yield self._change(kind.decode(), data)
        elif kind == b"R":
            self._relation(data)
        elif kind == b"C":
            yield Commit(lsn)  # the row's lsn for a commit is the end of its commit record
        elif kind == b"T":
            (count,) = _I32.unpack_from(data, 1)
            ids = struct.unpack_from(f">{count}I", data, 6)
            yield Truncate(tuple(self._known(i) for i in ids))
        elif kind in (b"B", b"O", b"Y", b"M"):
            return  # begin, origin, type, message: nothing a batch needs
        else:
            raise DecodeError(f"pgoutput message of unknown type {kind!r} at {format_lsn(lsn)}")

    def _known(self, relid: int) -> Relation:
        try:
            return self.relations[relid]
        except KeyError:
            raise DecodeError(f"pgoutput change of relation {relid} before its Relation message") from None

    def _relation(self, data: bytes) -> None:
        (relid,) = _U32.unpack_from(data, 1)
        schema, pos = _string(data, 5)
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

    def _change(self, op: str, data: bytes) -> Change:
        (relid,) = _U32.unpack_from(data, 1)
        relation = self._known(relid)
        pos = 5
        old = new = None
        old_full = data[pos:pos + 1] == b"O"
        if data[pos:pos + 1] in (b"K", b"O"):
            old, pos = _tuple(data, pos + 1)
        if op != "D":
            if data[pos:pos + 1] != b"N":
                raise DecodeError(f"pgoutput {op} message of {relation.table} without its new tuple")
            new, pos = _tuple(data, pos + 1)
        return Change(relation, op, new, old, old_full)


def _string(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode(), end + 1


def _tuple(data: bytes, pos: int) -> tuple[tuple[Value, ...], int]:
    (ncols,) = _I16.unpack_from(data, pos)
    pos += 2
    values: list[Value] = []
    for _ in range(ncols):
        kind = data[pos]
        pos += 1
        if kind == 0x74:  # 't': text
            (length,) = _I32.unpack_from(data, pos)
            values.append(data[pos + 4:pos + 4 + length])
            pos += 4 + length
        elif kind == 0x6E:  # 'n': NULL
            values.append(None)
        elif kind == 0x75:  # 'u': unchanged TOASTed value
            values.append(UNCHANGED)
        else:
            raise DecodeError(f"pgoutput tuple column of unknown kind {chr(kind)!r}")
    return tuple(values), pos


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)
